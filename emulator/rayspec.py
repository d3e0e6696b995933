"""What the Ray worker plane is asked for, parsed and checked at the edge, without Ray.

``--ray-lane-resources`` and ``--ray-qpu-resources`` take Ray actor resources as
``KEY:VALUE[,KEY:VALUE...]``; a QPU spec may start with ``BACKEND=`` to apply to one backend
only (``ibm_fez=num_cpus:4,memory:8GiB``). ``num_cpus``, ``num_gpus`` and ``memory`` (bytes, or
with a unit: ``512MiB``, ``8GiB``, ``2GB``) are Ray's own; any other key is a custom resource
(``big:1`` needs a node started with ``--resources '{"big": 1}'``), which is how a heavy noisy
backend is placed on a big node. This module never imports Ray, so a bad spec, or ``--workers
ray`` without Ray installed, is a clear error when the flags are read.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "INSTALL_HINT",
    "Resources",
    "check_config",
    "check_ray_installed",
    "code_runtime_env",
    "parse_qpu_resources",
    "parse_runtime_env",
]

INSTALL_HINT = "--workers ray needs Ray, an optional extra: pip install 'aioruntime[ray]'"

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_MEMORY = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def _memory_bytes(text: str) -> int:
    match = _MEMORY.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(f"memory must be bytes or a size such as 512MiB or 8GiB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True, slots=True)
class Resources:
    """Ray resources of one actor (None: Ray's default)."""

    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: int | None = None
    custom: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Resources:
        values: dict[str, Any] = {}
        custom: dict[str, float] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            key, sep, value = item.partition(":")
            key = key.strip()
            if not sep or not key or not value.strip():
                raise ValueError(f"a resource is KEY:VALUE, got {item!r}")
            if key == "memory":
                values["memory"] = _memory_bytes(value)
                continue
            try:
                amount = float(value)
            except ValueError:
                raise ValueError(f"resource {key} needs a number, got {value!r}") from None
            if not (math.isfinite(amount) and amount >= 0):
                raise ValueError(f"resource {key} must be a non-negative number, got {value!r}")
            if key in ("num_cpus", "num_gpus"):
                values[key] = amount
            else:
                custom[key] = amount
        return cls(**values, custom=tuple(sorted(custom.items())))

    def options(self) -> dict[str, Any]:
        """Keyword arguments of Ray's ``ActorClass.options``."""
        out: dict[str, Any] = {}
        if self.num_cpus is not None:
            out["num_cpus"] = self.num_cpus
        if self.num_gpus is not None:
            out["num_gpus"] = self.num_gpus
        if self.memory is not None:
            out["memory"] = self.memory
        if self.custom:
            out["resources"] = dict(self.custom)
        return out

    def __str__(self) -> str:
        items = [(k, v) for k, v in self.options().items() if k != "resources"]
        return ",".join(f"{k}:{v:g}" for k, v in [*items, *self.custom]) or "Ray's defaults"


def parse_qpu_resources(specs: Iterable[str]) -> dict[str, Resources]:
    """``[BACKEND=]KEY:VALUE,...`` specs → {backend: resources}; ``""`` is every other backend."""
    out: dict[str, Resources] = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if not sep:
            name, rest = "", spec
        name = name.strip()
        if name in out:
            which = f"backend {name}" if name else "every backend"
            raise ValueError(f"--ray-qpu-resources is given twice for {which}")
        out[name] = Resources.parse(rest)
    return out


def parse_runtime_env(text: str) -> dict[str, Any]:
    """``--ray-runtime-env``: a JSON object merged over :func:`code_runtime_env`."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--ray-runtime-env must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("--ray-runtime-env must be a JSON object")
    return value


def code_runtime_env(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``runtime_env`` of every actor: the ``emulator`` and ``aioruntime`` packages this
    process runs, shipped as ``py_modules``, so that actors run exactly this code whether it is
    a source checkout or an installed package, and whatever the cluster's image holds (it still
    needs Ray, Python and the dependencies: see the README). ``extra`` overrides keys."""
    import aioruntime

    from . import __file__ as emulator_init

    modules = [str(Path(emulator_init).parent), str(Path(aioruntime.__file__).parent)]
    env: dict[str, Any] = {"py_modules": modules}
    env.update(extra or {})
    return env


def check_ray_installed() -> None:
    """Raise ValueError (the CLI shows it as a usage error) when Ray is not importable."""
    if importlib.util.find_spec("ray") is None:
        raise ValueError(INSTALL_HINT)


def check_config(lane_resources: str, qpu_resources: Iterable[str], runtime_env: str) -> None:
    """Check the Ray plane's flags (ValueError names the flag), and that Ray is installed."""
    check_ray_installed()
    try:
        Resources.parse(lane_resources)
    except ValueError as exc:
        raise ValueError(f"--ray-lane-resources: {exc}") from None
    try:
        parse_qpu_resources(qpu_resources)
    except ValueError as exc:
        raise ValueError(f"--ray-qpu-resources: {exc}") from None
    parse_runtime_env(runtime_env)
