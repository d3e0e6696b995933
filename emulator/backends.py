"""The device catalogue: which IBM QPUs the emulator serves, and their transpiler/noise views.

Every device comes from a snapshot shipped with qiskit-ibm-runtime,
``qiskit_ibm_runtime/fake_provider/backends/<source>/{conf,props}_<source>.json``. Those files are
the exact server format (spec 2.3 E/F), so the emulator serves them as they are, with only
``backend_name`` renamed to the served name and, on devices whose properties calibrate them,
IBM's fractional gates (``rx``, ``rzz``) listed in the configuration (:func:`device_configuration`).

Names. Every snapshot directory ``<source>`` is served by default as ``ibm_<source>``. Input
spellings ``ibm_<source>``, ``ibmq_<source>``, ``fake_<source>``, ``alt_<source>`` and the bare
``<source>`` are all accepted, so ``ibmq_manila`` (the name in ``conf_manila.json``),
``ibm_manila`` and ``fake_manila`` all mean the Manila snapshot. The names are derived from the
directory names, so listing the catalogue reads no file; only the requested devices' files are
ever opened.

The devices' targets and Aer noise models (what only the worker processes need) live in
:mod:`emulator.targets`; their names are re-exported here for existing imports.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_BACKENDS",
    "DRY_RUN_PREFIX",
    "Device",
    "DeviceLimits",
    "available_devices",
    "device_calibration_id",
    "device_configuration",
    "device_for_name",
    "device_limits",
    "device_noise_model",
    "device_noise_model_for",
    "device_properties",
    "device_target",
    "mock_name",
    "mock_twin",
    "mock_twins",
    "resolve_devices",
    "restrict_noise_model",
    "served_name",
    "source_for_name",
    "split_source",
]

#: A small 5-qubit Falcon next to two large Herons.
DEFAULT_BACKENDS: str = "ibm_fez,ibm_torino,ibm_manila"

#: Prefixes accepted in front of a snapshot directory name.
_PREFIXES = ("ibm_", "ibmq_", "fake_", "alt_")
#: Served names must be plain identifiers (they appear in URL paths).
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Device:
    """One served QPU.

    ``configuration`` and ``properties`` are the JSON-ready payloads of
    ``GET /backends/{name}/configuration`` and ``…/properties``; treat them as read-only (they are
    fresh copies per :class:`Device`, but shared by everyone holding this object).
    """

    name: str
    """Served name, e.g. ``ibm_fez``, or an alias like ``my_qpu``."""
    source: str
    """Snapshot directory name, e.g. ``fez``: the key of every per-device cache. For a mock
    twin, ``dry-run:<snapshot>`` (see :func:`split_source`)."""
    num_qubits: int
    configuration: dict[str, Any]
    """``conf_<source>.json`` with ``backend_name`` = ``name``, ``simulator`` false and an
    ``online_date``."""
    properties: dict[str, Any]
    """``props_<source>.json`` with ``backend_name`` = ``name``."""
    calibration_id: str
    """The device's current (and only) calibration: :func:`device_calibration_id`."""
    mock: bool = False
    """A mock twin (``mock_fez`` of ``ibm_fez``): IBM's target of dry runs, listed only with
    ``include_mocks`` and marked ``"class": "mock"``. Its jobs never reach a QPU."""


# ---------------------------------------------------------------------------------------------
# The catalogue
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _snapshot_dir() -> Path:
    # Locate the package without importing it: importing qiskit_ibm_runtime.fake_provider pulls in
    # every fake backend class.
    spec = importlib.util.find_spec("qiskit_ibm_runtime")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("qiskit-ibm-runtime is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "fake_provider" / "backends"


def _conf_path(source: str) -> Path:
    return _snapshot_dir() / source / f"conf_{source}.json"


def _props_path(source: str) -> Path:
    return _snapshot_dir() / source / f"props_{source}.json"


@lru_cache(maxsize=1)
def _sources() -> tuple[str, ...]:
    """Snapshot directories that have both a configuration and a properties file."""
    out = []
    for entry in sorted(_snapshot_dir().iterdir()):
        source = entry.name
        if entry.is_dir() and _conf_path(source).is_file() and _props_path(source).is_file():
            out.append(source)
    return tuple(out)


def served_name(source: str) -> str:
    """The default served name of a snapshot: ``ibm_<source>``."""
    return f"ibm_{source}"


def available_devices() -> dict[str, str]:
    """Served IBM name → snapshot source, for every snapshot with conf and props files.

    The keys are the default served names (``ibm_<source>``); :func:`source_for_name` accepts the
    other spellings too. Reads directory listings only.
    """
    return {served_name(s): s for s in _sources()}


def source_for_name(name: str) -> str | None:
    """The snapshot source a device name refers to, or ``None``.

    Accepts ``ibm_manila``, ``ibmq_manila``, ``fake_manila``, ``alt_manila`` and ``manila``
    (case-insensitive).
    """
    key = name.strip().lower()
    sources = set(_sources())
    if key in sources:
        return key
    for prefix in _PREFIXES:
        if key.startswith(prefix) and key[len(prefix) :] in sources:
            return key[len(prefix) :]
    return None


def _unknown(name: str) -> ValueError:
    known = ", ".join(available_devices())
    return ValueError(f"unknown device {name!r}; known devices: {known}")


@cache
def _raw_json(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def device_configuration(source: str) -> dict[str, Any]:
    """A fresh copy of ``conf_<source>.json`` as served (``backend_name`` not renamed): as
    shipped, plus the fractional gates of a device whose properties calibrate them."""
    conf: dict[str, Any] = json.loads(_raw_json(str(_conf_path(source))))
    fractional = _fractional_gates(source)
    if fractional:
        # IBM's Heron configurations list rx and rzz among the basis gates and supported
        # instructions (as qiskit-ibm-runtime's conf_fractional.json does, with no gates[]
        # entry: their qubits come from the properties). The snapshots shipped for fez, torino
        # and the other Herons keep the rx/rzz calibrations in props_*.json but dropped them
        # from conf_*.json, which made service.backend(..., use_fractional_gates=True) refuse
        # them. The official client filters both lists (and the properties) when
        # use_fractional_gates is False, so the default view is unchanged.
        for key in ("basis_gates", "supported_instructions"):
            names = conf.get(key)
            if isinstance(names, list):
                conf[key] = names + [g for g in fractional if g not in names]
        conf["basis_gates"] = sorted(conf["basis_gates"])  # IBM lists them sorted
    return conf


#: IBM's fractional gates: rotations with a continuous angle and a non-zero duration.
_FRACTIONAL_GATES = ("rx", "rzz")


@cache
def _fractional_gates(source: str) -> tuple[str, ...]:
    """The fractional gates ``props_<source>.json`` calibrates, in ``_FRACTIONAL_GATES`` order."""
    props = json.loads(_raw_json(str(_props_path(source))))
    calibrated = {g.get("gate") for g in props.get("gates") or ()}
    return tuple(g for g in _FRACTIONAL_GATES if g in calibrated)


def device_properties(source: str) -> dict[str, Any]:
    """A fresh copy of ``props_<source>.json`` as shipped."""
    return json.loads(_raw_json(str(_props_path(source))))  # type: ignore[no-any-return]


def device_calibration_id(source: str) -> str:
    """The calibration id of the snapshot ``source``: a digest of its properties file, so it is
    the same at every start (and for every alias of the snapshot) and changes only with the
    calibration data. What ``service.backend(name, calibration_id=...)`` and a job's
    ``calibration_id`` refer to; each served device has this one calibration."""
    digest = hashlib.sha256(_raw_json(str(_props_path(source))).encode()).hexdigest()
    return digest[:24]


@dataclass(frozen=True, slots=True)
class DeviceLimits:
    """The configuration fields the classical stage validates jobs against."""

    num_qubits: int
    max_shots: int
    """Shots per PUB, at most."""
    max_experiments: int | None
    """Circuits per sub-job (``None`` when the snapshot does not say)."""
    rep_delay_range_s: tuple[float, float] | None
    """Allowed ``execution.rep_delay``, seconds (the configuration gives µs)."""
    default_rep_delay_s: float
    """Used when the job does not set ``rep_delay`` (250 µs when the snapshot does not say)."""


@cache
def device_limits(source: str) -> DeviceLimits:
    """The device's :class:`DeviceLimits`, cached per worker process."""
    conf = device_configuration(source)
    rng = conf.get("rep_delay_range")
    default = conf.get("default_rep_delay")
    return DeviceLimits(
        num_qubits=int(conf["n_qubits"]),
        max_shots=int(conf.get("max_shots") or 100_000),
        max_experiments=int(conf["max_experiments"]) if conf.get("max_experiments") else None,
        rep_delay_range_s=(float(rng[0]) * 1e-6, float(rng[1]) * 1e-6) if rng else None,
        default_rep_delay_s=float(default) * 1e-6 if default is not None else 250e-6,
    )


def device_for_name(name: str, source_name: str | None = None) -> Device:
    """Build the :class:`Device` served as ``name`` from the snapshot ``source_name`` refers to
    (``name`` itself when omitted). Raises ``ValueError`` for unknown names."""
    source = source_for_name(source_name if source_name is not None else name)
    if source is None:
        raise _unknown(source_name if source_name is not None else name)
    conf = device_configuration(source)
    conf["backend_name"] = name
    # The official client skips sessions for simulators and drops configurations without an
    # online_date (spec pitfalls 8 and 9).
    conf["simulator"] = False
    conf.setdefault("online_date", "2020-01-01T00:00:00+00:00")
    props = device_properties(source)
    props["backend_name"] = name
    return Device(
        name=name,
        source=source,
        num_qubits=int(conf["n_qubits"]),
        configuration=conf,
        properties=props,
        calibration_id=device_calibration_id(source),
    )


def resolve_devices(spec: str) -> list[Device]:
    """Parse a comma-separated device list: items ``ibm_fez`` or ``alias=ibm_fez``.

    A bare item is served under its default name ``ibm_<source>`` whatever spelling was used
    (``fake_manila`` → ``ibm_manila``); ``alias=…`` serves the snapshot under ``alias``.

    Raises:
        ValueError: for an empty list, an unknown device (the message lists the known names), an
            invalid alias, or two items served under the same name.
    """
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if not items:
        raise ValueError(
            f"no devices given in {spec!r}; known devices: " + ", ".join(available_devices())
        )
    devices: list[Device] = []
    seen: set[str] = set()
    for item in items:
        if "=" in item:
            alias, _, target = (part.strip() for part in item.partition("="))
            if not _NAME_RE.match(alias):
                raise ValueError(
                    f"invalid served name {alias!r} in {item!r}: use letters, digits, '_' or '-'"
                )
        else:
            alias, target = "", item
        source = source_for_name(target)
        if source is None:
            raise _unknown(target)
        name = alias or served_name(source)
        if name in seen:
            raise ValueError(f"device name {name!r} is served twice in {spec!r}")
        seen.add(name)
        devices.append(device_for_name(name, source))
    return devices


# ---------------------------------------------------------------------------------------------
# Mock twins (dry runs)
# ---------------------------------------------------------------------------------------------

#: Marks the ``Device.source`` of a mock twin; the pre-processing stage reads it as "dry run".
DRY_RUN_PREFIX = "dry-run:"


def split_source(source: str) -> tuple[str, bool]:
    """``(snapshot name, whether the job is a dry run)`` of a ``Device.source``."""
    if source.startswith(DRY_RUN_PREFIX):
        return source[len(DRY_RUN_PREFIX) :], True
    return source, False


def mock_name(name: str) -> str:
    """IBM's name of a device's mock twin, as the official client derives it for ``dry_run``
    (``re.sub(r"^[^_]+", "mock", name)``: ``ibm_fez`` → ``mock_fez``)."""
    return re.sub(r"^[^_]+", "mock", name)


def mock_twin(device: Device) -> Device:
    """The mock twin of ``device``: same configuration and properties, served as
    :func:`mock_name`, whose jobs are dry runs."""
    name = mock_name(device.name)
    conf = dict(device.configuration, backend_name=name)
    props = dict(device.properties, backend_name=name)
    return Device(
        name=name,
        source=DRY_RUN_PREFIX + device.source,
        num_qubits=device.num_qubits,
        configuration=conf,
        properties=props,
        calibration_id=device.calibration_id,
        mock=True,
    )


def mock_twins(devices: list[Device]) -> list[Device]:
    """The mock twins of ``devices`` whose names are free (two aliases like ``a_x`` and ``b_x``
    would share the twin ``mock_x``: the first keeps it)."""
    taken = {d.name for d in devices}
    twins = []
    for device in devices:
        twin = mock_twin(device)
        if twin.name not in taken:
            taken.add(twin.name)
            twins.append(twin)
    return twins


def served_sources(spec: str) -> tuple[str, ...]:
    """The ``Device.source`` of every device served for ``spec`` (:func:`resolve_devices`),
    with their mock twins: what the workers load. Raises as :func:`resolve_devices` does."""
    devices = resolve_devices(spec)
    return tuple(sorted({d.source for d in devices + mock_twins(devices)}))


# The worker-side views moved to emulator.targets; these names stay importable from here for the
# code that imported them before the split. New code imports them from emulator.targets.
from .targets import (  # noqa: E402
    device_noise_model,
    device_noise_model_for,
    device_target,
    restrict_noise_model,
)
