"""How the QPU simulates a job: noise level, method, predicted cost, and the sampling itself.

Entry points, for any program whose executed circuits are ``SamplerPub``s compacted onto
their active qubits (the Sampler's, the Estimator's measurement circuits, executor items):

- :func:`requested_level` (pre-processing): the level the job's options ask for.
- :func:`plan` (pre-processing, a classical lane): choose each circuit's method and predict the
  job's simulation time from its shape alone (width, instructions, shots, parameter sets, noise
  level). A job predicted over the emulator's budget fails here, at once, naming what would fit
  (the ``pauli`` level, fewer shots, fewer qubits), instead of holding the one QPU for an hour.
- :func:`prepare` (pre-processing): build the noise tables the QPU will read, in the lane.
- :func:`run` (the QPU worker): sample the circuits by the plan and return one ``DataBin`` each.

Methods. ``stim``: Clifford circuits (angles multiples of π/2 after binding) at the ``none`` or
``pauli`` level, any width (:mod:`emulator.stim_sampler`). Everything else runs on Aer:
``density_matrix`` for noisy circuits with more shots than amplitudes (Aer's own rule),
``statevector`` while ``16 · 2^n`` bytes fit in ``max_memory_mb``, else
``matrix_product_state``. Noiseless ``statevector`` circuits measured only at their end are
sampled from their exact probabilities (:mod:`emulator.ideal`), not by Aer's sampler. Noisy Aer
runs are one trajectory per shot (with Aer's shot branching, which shares the trajectory until
the first error), which is why the ``full`` level costs what it does and why the budget exists.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aioruntime.protocol import ErrorCode

from . import costs
from .derived import derived
from .noise import NoiseLevel
from .validation import JobInputError

if TYPE_CHECKING:
    from qiskit.circuit import QuantumCircuit
    from qiskit.primitives.containers import DataBin
    from qiskit.primitives.containers.sampler_pub import SamplerPub
    from qiskit_aer.noise import NoiseModel

__all__ = [
    "DEFAULT_BUDGET_S",
    "DEFAULT_MAX_MEMORY_MB",
    "NoiseLevel",
    "SimulationPlan",
    "SimulationSettings",
    "plan",
    "prepare",
    "requested_level",
    "run",
]

#: Wall-clock seconds of simulation a job may take (``--sim-budget``): refused when predicted
#: over it, stopped by the scheduler when it runs over it anyway.
DEFAULT_BUDGET_S = 600.0
#: Memory Aer may use for one circuit (``--sim-memory``); a state vector of 28 qubits is 4 GiB.
DEFAULT_MAX_MEMORY_MB = 4096

#: The job options that choose a level: ``options.simulator.noise_level`` (the official client
#: sends it for ``options.experimental = {"simulator": {"noise_level": ...}}``) or
#: ``options.experimental.noise_level``.
OPTION = "noise_level"


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationSettings:
    """The emulator's simulation configuration (from ``emulator.config.Config``)."""

    noise: NoiseLevel = NoiseLevel.NONE
    """The level of jobs that do not choose one."""
    budget_s: float = DEFAULT_BUDGET_S
    max_memory_mb: int = DEFAULT_MAX_MEMORY_MB
    cache_dir: Path | None = None
    """Where devices' twirled noise tables are kept across starts (``None``: not kept)."""


@dataclass(frozen=True, slots=True)
class SimulationPlan:
    """What :func:`plan` decided for one job; reported in the result metadata."""

    level: NoiseLevel
    methods: tuple[str, ...]
    """Per executed circuit: ``stim``, ``density_matrix``, ``statevector`` or
    ``matrix_product_state``."""
    predicted_s: float
    max_memory_mb: int = DEFAULT_MAX_MEMORY_MB
    cache_dir: Path | None = None
    user_noise_model: bool = False
    """The job's own ``simulator.noise_model`` is applied instead of the device's."""

    def metadata(self, seconds: float | None = None) -> dict[str, Any]:
        methods: dict[str, int] = {}
        for m in self.methods:
            methods[m] = methods.get(m, 0) + 1
        out: dict[str, Any] = {
            "noise_level": "custom" if self.user_noise_model else str(self.level),
            "methods": methods,
            "predicted_seconds": round(self.predicted_s, 6),
        }
        if seconds is not None:
            out["seconds"] = round(seconds, 6)
        return out


# ---------------------------------------------------------------------------------------------
# The job's choice
# ---------------------------------------------------------------------------------------------


def requested_level(params: Mapping[str, Any]) -> NoiseLevel | None:
    """The level the job's options ask for, or ``None``.

    Raises:
        JobInputError: ``VALIDATION`` for an unknown level, or two different ones.
    """
    options = params.get("options") or {}
    found: dict[str, Any] = {}
    for section in ("simulator", "experimental"):
        part = options.get(section) if isinstance(options, dict) else None
        if isinstance(part, dict) and part.get(OPTION) is not None:
            found[f"options.{section}.{OPTION}"] = part[OPTION]
    levels = set()
    for where, value in found.items():
        try:
            levels.add(NoiseLevel(str(value).lower()))
        except ValueError:
            raise JobInputError(
                ErrorCode.VALIDATION,
                f"{where} must be one of {', '.join(repr(str(v)) for v in NoiseLevel)}, "
                f"not {value!r}.",
            ) from None
    if len(levels) > 1:
        raise JobInputError(
            ErrorCode.VALIDATION, f"Conflicting noise levels in {' and '.join(found)}."
        )
    return levels.pop() if levels else None


def without_own_options(ignored: list[str], params: Mapping[str, Any]) -> list[str]:
    """``ignored`` option names, less ``experimental`` when it only holds the noise level."""
    experimental = (params.get("options") or {}).get("experimental")
    if isinstance(experimental, dict) and set(experimental) <= {OPTION}:
        return [name for name in ignored if name != "experimental"]
    return ignored


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


def plan(
    pubs: Sequence[SamplerPub],
    *,
    level: NoiseLevel,
    settings: SimulationSettings,
    user_noise_model: bool = False,
) -> SimulationPlan:
    """Choose each circuit's method and predict the job's simulation time.

    Raises:
        JobInputError: ``JOB_TOO_LARGE`` when the prediction is over ``settings.budget_s``; the
            message gives the prediction and what would fit.
    """
    methods: list[str] = []
    total = 0.0
    shapes = []
    for pub in pubs:
        shape = _shape(pub.circuit)
        stim_ok = level is not NoiseLevel.FULL and not user_noise_model and _clifford(pub)
        noisy = user_noise_model or level is not NoiseLevel.NONE
        shots = int(pub.shots)
        method = (
            "stim" if stim_ok else costs.aer_method(shape, shots, noisy, settings.max_memory_mb)
        )
        total += costs.predict(method, shape, shots, pub.parameter_values.size, noisy)
        methods.append(method)
        shapes.append((pub, shape, method))
    if total > settings.budget_s:
        raise JobInputError(
            ErrorCode.JOB_TOO_LARGE, _over_budget(shapes, level, total, settings, user_noise_model)
        )
    return SimulationPlan(
        level=level,
        methods=tuple(methods),
        predicted_s=total,
        max_memory_mb=settings.max_memory_mb,
        cache_dir=settings.cache_dir,
        user_noise_model=user_noise_model,
    )


def _over_budget(
    shapes: list[tuple[SamplerPub, costs.Shape, str]],
    level: NoiseLevel,
    total: float,
    settings: SimulationSettings,
    user_noise_model: bool,
) -> str:
    widest = max(shapes, key=lambda item: item[1].width)
    shots = sum(int(pub.shots) * pub.parameter_values.size for pub, _, _ in shapes)
    what = (
        f"The job's simulation is predicted to take about {_seconds(total)} (noise level "
        f"'{'custom' if user_noise_model else level}', {len(shapes)} circuit(s), up to "
        f"{widest[1].width} qubits and {widest[1].instructions} instructions, method "
        f"{widest[2]}, {shots} shots in all), more than the emulator's budget of "
        f"{_seconds(settings.budget_s)} per job (--sim-budget)."
    )
    hints = []
    if level is NoiseLevel.FULL and not user_noise_model:
        pauli = sum(
            costs.predict(
                "stim" if _clifford(pub) else method,
                shape,
                int(pub.shots),
                pub.parameter_values.size,
                True,
            )
            for pub, shape, method in shapes
        )
        if pauli <= settings.budget_s:
            hints.append(
                f"the 'pauli' noise level (predicted {_seconds(pauli)}): "
                f"options.experimental = {{'{OPTION}': 'pauli'}}"
            )
    per_shot = total / max(1, shots)
    fitting = int(settings.budget_s / per_shot) if per_shot > 0 else shots
    if 0 < fitting < shots:
        hints.append(f"fewer shots (about {fitting} in all would fit)")
    hints.append("fewer qubits")
    return what + " Use " + ", or ".join(hints) + "."


def _shape(circuit: QuantumCircuit) -> costs.Shape:
    """:func:`emulator.costs.shape_of`, once per circuit (a job's circuits are only read)."""
    return derived(circuit, "shape", lambda: costs.shape_of(circuit))


def _clifford(pub: SamplerPub) -> bool:
    """:func:`emulator.stim_sampler.pub_is_clifford`, the circuit compiled once per circuit
    (its parameter values are checked for every PUB)."""
    from .stim_sampler import binds_to_clifford, noiseless_program

    return binds_to_clifford(noiseless_program(pub.circuit), pub)


def _seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 120:
        return f"{value / 60:.0f} min"
    if value < 1:
        return f"{value * 1e3:.2g} ms"
    return f"{value:.3g} s"


def prepare(
    source: str,
    pubs: Sequence[SamplerPub],
    pub_qubits: Sequence[tuple[int, ...]],
    simulation: SimulationPlan,
) -> None:
    """Build, in the calling classical lane, the twirled noise tables the QPU will read: for
    each PUB's qubits (``pub_qubits``), the errors of the instructions its circuit runs.

    Only with a cache directory (the lanes and the QPU worker are different processes; the file
    is how the table reaches the QPU): the first ``pauli`` job on a new part of a device then
    costs a lane its seconds, not the one QPU. Without one, the QPU builds what it needs.
    """
    if simulation.level is not NoiseLevel.PAULI or simulation.cache_dir is None:
        return
    if simulation.user_noise_model:
        return
    from .noise import table_for

    table = table_for(source, simulation.cache_dir)
    for (live, _), indices in _groups(pub_qubits, simulation.methods).items():
        if live:
            table.ensure(live, _instructions(pubs, indices))


def _groups(
    pub_qubits: Sequence[tuple[int, ...]], methods: Sequence[str]
) -> dict[tuple[tuple[int, ...], str], list[int]]:
    """The PUBs (by index) per (qubits, method): each group shares one simulator run or noise
    model. :func:`prepare` and :func:`run` group alike, so the tables the lanes build are the
    ones the QPU reads."""
    groups: dict[tuple[tuple[int, ...], str], list[int]] = {}
    for k, (live, method) in enumerate(zip(pub_qubits, methods, strict=True)):
        groups.setdefault((tuple(live), method), []).append(k)
    return groups


def _instructions(pubs: Sequence[SamplerPub], indices: Sequence[int]) -> frozenset[str]:
    """The instructions the circuits of ``pubs[indices]`` run: what their noise must cover."""
    from .noise import instruction_names

    return instruction_names(pubs[k].circuit for k in indices)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def run(
    pubs: Sequence[SamplerPub],
    pub_qubits: Sequence[tuple[int, ...]],
    source: str,
    simulation: SimulationPlan,
    *,
    seed: int | None = None,
    user_models: Mapping[tuple[int, ...], NoiseModel] | None = None,
    max_threads: int = 0,
) -> tuple[list[DataBin], float]:
    """Sample ``pubs`` (pub ``k`` on physical qubits ``pub_qubits[k]``) of device ``source`` by
    ``simulation``; the ``DataBin`` per PUB and the seconds the simulators took.

    Circuits on the same qubits with the same Aer method share one Aer run (and one noise
    model); Stim circuits run one by one (each costs milliseconds).

    Raises:
        JobInputError: ``EXECUTION_FAILED`` when Aer cannot simulate a circuit (e.g. it needs
            more than ``max_memory_mb``).
    """
    from .ideal import sample_pubs as sample_ideal
    from .stim_sampler import sample_pub

    data: list[Any] = [None] * len(pubs)
    start = time.perf_counter()
    for (live, method), indices in _groups(pub_qubits, simulation.methods).items():
        if method == "stim":
            noise = _pauli_noise(source, live, simulation, pubs, indices)
            for k in indices:
                data[k] = sample_pub(pubs[k], noise, None if seed is None else seed + k)
            continue
        options: dict[str, Any] = {
            "method": method,
            "max_parallel_threads": max_threads,
            "max_memory_mb": simulation.max_memory_mb,
        }
        model = _aer_noise(source, live, simulation, user_models, pubs, indices)
        if model is None and method == "statevector":
            with _aer_errors(simulation.max_memory_mb):
                ideal = sample_ideal(
                    [pubs[k] for k in indices],
                    seed,
                    max_threads=max_threads,
                    max_memory_mb=simulation.max_memory_mb,
                )
            if ideal is not None:
                for k, pub_data in zip(indices, ideal, strict=True):
                    data[k] = pub_data
                continue
        if model is not None:
            options["noise_model"] = model
            options["shot_branching_enable"] = method == "statevector"
        results = _aer(options, [pubs[k] for k in indices], seed)
        for k, pub_data in zip(indices, results, strict=True):
            data[k] = pub_data
    return data, time.perf_counter() - start


def _pauli_noise(
    source: str,
    live: tuple[int, ...],
    simulation: SimulationPlan,
    pubs: Sequence[SamplerPub],
    indices: Sequence[int],
) -> Any:
    """The twirled noise of ``pubs[indices]``'s instructions on ``live`` (``None`` unless the
    level is ``pauli``)."""
    if simulation.level is not NoiseLevel.PAULI or not live:
        return None
    from .noise import pauli_noise_for

    return pauli_noise_for(source, live, simulation.cache_dir, _instructions(pubs, indices))


def _aer_noise(
    source: str,
    live: tuple[int, ...],
    simulation: SimulationPlan,
    user_models: Mapping[tuple[int, ...], NoiseModel] | None,
    pubs: Sequence[SamplerPub],
    indices: Sequence[int],
) -> NoiseModel | None:
    if user_models is not None:
        return user_models[live]
    if not live or simulation.level is NoiseLevel.NONE:
        return None
    if simulation.level is NoiseLevel.PAULI:
        return _pauli_noise(source, live, simulation, pubs, indices).to_aer()
    from .targets import device_noise_model_for

    # The model of the instructions these circuits run: the same errors on them (Aer builds
    # each instruction's alone), without building the device's others on the QPU (rzz, id...).
    return device_noise_model_for(source, live, _instructions(pubs, indices))


def _aer(options: dict[str, Any], pubs: list[SamplerPub], seed: int | None) -> list[DataBin]:
    from qiskit_aer.primitives import SamplerV2

    sampler = SamplerV2(seed=seed, options={"backend_options": options})
    with _aer_errors(options["max_memory_mb"]), warnings.catch_warnings():
        # e.g. "no output classical registers": IBM returns an empty DataBin, so do we.
        warnings.simplefilter("ignore")
        result = sampler.run(pubs).result()
    return [pub_result.data for pub_result in result]


@contextmanager
def _aer_errors(max_memory_mb: int) -> Iterator[None]:
    """Aer's failures as the job's: ``EXECUTION_FAILED``, with a hint when memory ran out."""
    from qiskit_aer.aererror import AerError

    try:
        yield
    except AerError as exc:
        raise JobInputError(
            ErrorCode.EXECUTION_FAILED,
            f"The simulation failed: {exc}" + _memory_hint(str(exc), max_memory_mb),
        ) from None


def _memory_hint(message: str, max_memory_mb: int) -> str:
    if "memory" not in message.lower():
        return ""
    return (
        f" The emulator lets Aer use {max_memory_mb} MB (--sim-memory); use fewer qubits, or a "
        f"Clifford circuit with the 'pauli' or 'none' noise level."
    )
