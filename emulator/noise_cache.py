"""The on-disk cache of devices' twirled noise tables (:class:`emulator.noise.DeviceTable`).

Why: the table comes from Aer's device noise model (its depolarizing and relaxation errors, see
:func:`emulator.targets.device_error_parts`), which takes 9-10 s to build and twirl for all of
``ibm_fez`` on the 2-core machine (4 s for a GHZ job's instructions). Its result is a few
hundred kilobytes of numbers that only change with the device snapshot or the libraries that
compute them, so it is computed once and read back in milliseconds.

One JSON file per device: ``<cache dir>/pauli-<source>-<key>.json``, where ``key`` hashes the
snapshot's ``conf``/``props`` files, the versions of qiskit, qiskit-aer and qiskit-ibm-runtime,
and :data:`FORMAT`. A stale file is simply never read again. JSON rather than pickle, so a
shared cache directory cannot run code. Writes go to a temporary file renamed into place, so a
reader never sees half a file; two writers (two aliases of one device) at worst lose an update
that is recomputed later.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "default_cache_dir", "load", "locked", "save", "table_path"]

log = logging.getLogger("emulator.noise")

#: Bump when the file layout or the twirl changes (2: coverage per instruction and qubits, not
#: per qubits).
FORMAT = 2

#: A table's unit of coverage: an instruction's name and the qubits it acts on.
Key = tuple[str, tuple[int, ...]]
Table = tuple[dict[str, dict[tuple[int, ...], np.ndarray]], dict[int, float], set[Key]]


def default_cache_dir(environ: dict[str, str]) -> Path:
    """``$XDG_CACHE_HOME/aioruntime-emulator`` (``~/.cache/aioruntime-emulator`` without it).
    ``environ`` is passed in: only :mod:`emulator.config` reads the environment."""
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aioruntime-emulator"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "-"


@cache
def _key(source: str) -> str:
    from .backends import _conf_path, _props_path

    digest = hashlib.sha256(f"format {FORMAT}\n".encode())
    for package in ("qiskit", "qiskit-aer", "qiskit-ibm-runtime"):
        digest.update(f"{package} {_version(package)}\n".encode())
    for path in (_conf_path(source), _props_path(source)):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def table_path(source: str, cache_dir: Path) -> Path:
    """Where ``source``'s table lives in ``cache_dir``."""
    return Path(cache_dir) / f"pauli-{source}-{_key(source)}.json"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (POSIX ``flock``), so that the lanes and the
    QPU worker do not compute the same table at once. Without ``fcntl``, or when the lock file
    cannot be made, no lock: duplicated work at worst."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_suffix(".lock"), "a+b")  # closed below, which unlocks
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()


def load(path: Path) -> Table | None:
    """The table stored at ``path``, or ``None`` (missing, unreadable or another format)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            return None
        gates: dict[str, dict[tuple[int, ...], np.ndarray]] = {}
        for name, qargs, probs in data["gates"]:
            gates.setdefault(name, {})[tuple(qargs)] = np.asarray(probs, dtype=float)
        readout = {int(q): float(p) for q, p in data["readout"]}
        covered = {(str(name), tuple(qargs)) for name, qargs in data["covered"]}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the unreadable noise cache %s: %s", path, exc)
        return None
    return gates, readout, covered


def save(
    path: Path,
    gates: dict[str, dict[tuple[int, ...], np.ndarray]],
    readout: dict[int, float],
    covered: set[Key],
) -> None:
    """Write the table atomically; a failure to write is logged, never raised (the cache is an
    optimisation)."""
    data: dict[str, Any] = {
        "format": FORMAT,
        "gates": [
            [name, list(qargs), probs.tolist()]
            for name, per_qubits in sorted(gates.items())
            for qargs, probs in sorted(per_qubits.items())
        ],
        "readout": sorted(readout.items()),
        "covered": sorted([name, list(qargs)] for name, qargs in covered),
    }
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        log.warning("cannot write the noise cache %s: %s", path, exc)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
