"""How the QPU simulates a job: noise level, method, predicted cost, and the sampling itself.

Two entry points, for any program whose executed circuits are ``SamplerPub``s compacted onto
their active qubits (the Sampler's, the Estimator's measurement circuits, executor items):

- :func:`plan` (pre-processing, a classical lane): choose each circuit's method and predict the
  job's simulation time from its shape alone (width, instructions, shots, parameter sets, noise
  level). A job predicted over the emulator's budget fails here, at once, naming what would fit
  (the ``pauli`` level, fewer shots, fewer qubits), instead of holding the one QPU for an hour.
- :func:`run` (the QPU worker): sample the circuits by the plan and return one ``DataBin`` each.

Methods. ``stim``: Clifford circuits (angles multiples of π/2 after binding) at the ``none`` or
``pauli`` level, any width (:mod:`emulator.stim_sampler`). Everything else runs on Aer:
``density_matrix`` for noisy circuits with more shots than amplitudes (Aer's own rule),
``statevector`` while ``16 · 2^n`` bytes fit in ``max_memory_mb``, else
``matrix_product_state``. Noisy Aer runs are one trajectory per shot (with Aer's shot branching,
which shares the trajectory until the first error), which is why the ``full`` level costs what
it does and why the budget exists.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aioruntime.protocol import ErrorCode

from .noise import NoiseLevel
from .validation import JobInputError

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.primitives.containers import DataBin
    from qiskit.primitives.containers.sampler_pub import SamplerPub
    from qiskit_aer.noise import NoiseModel

__all__ = [
    "DEFAULT_BUDGET_S",
    "DEFAULT_MAX_MEMORY_MB",
    "CostModel",
    "NoiseLevel",
    "SimulationPlan",
    "SimulationSettings",
    "plan",
    "requested_level",
    "run",
]

#: Predicted wall-clock seconds of simulation a job may take (``--sim-budget``).
DEFAULT_BUDGET_S = 60.0
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
# Cost prediction
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CostModel:
    """Seconds per unit of work, measured on the development machine (2 cores, see
    ``benchmarks/README.md``). Good to a factor of about two: enough to tell a 1 s job from an
    hour-long one, which is all the budget needs."""

    run_s: float = 0.02
    """Fixed cost of one Aer run (building the simulator, transpiling to its basis)."""
    stim_binding_s: float = 2e-3
    stim_instruction_s: float = 12e-6
    """Converting one instruction (and its noise channel) to Stim text, per parameter set."""
    stim_sample_s: float = 3e-9
    """Per instruction and shot."""
    sv_amplitude_s: float = 3.5e-9
    """Per instruction and state-vector amplitude, for one ideal run."""
    trajectory_instruction_s: float = 5e-6
    trajectory_amplitude_s: float = 2.5e-9
    """Per shot of a noisy (or mid-circuit-measured) state vector: per instruction, and per
    instruction and amplitude."""
    dm_instruction_s: float = 5e-3
    dm_element_s: float = 7e-9
    """Density matrix (one run for all shots): per instruction (Aer turns each noisy
    instruction's error into a superoperator), and per instruction and matrix element."""
    mps_instruction_s: float = 5e-4
    mps_chi3_s: float = 1e-8
    """Matrix product state: per instruction, and per two-qubit gate and bond dimension cubed."""


COSTS = CostModel()


@dataclass(frozen=True, slots=True)
class _Shape:
    width: int
    instructions: int
    two_qubit: int
    bond: int
    """An upper bound of the MPS bond dimension (2^ gates crossing the worst cut)."""
    terminal: bool
    """Measurements only at the end: an ideal run can sample every shot from one state."""


def _shape(circuit: QuantumCircuit) -> _Shape:
    index = {q: i for i, q in enumerate(circuit.qubits)}
    n = circuit.num_qubits
    crossing = [0] * (n + 1)
    instructions = two = 0
    measured: set[int] = set()
    terminal = True
    for inst in circuit.data:
        name = inst.operation.name
        if name == "barrier":
            continue
        instructions += 1
        qubits = [index[q] for q in inst.qubits]
        if name == "measure":
            measured.update(qubits)
            continue
        if measured.intersection(qubits) or getattr(inst.operation, "blocks", None):
            terminal = False
        if len(qubits) >= 2:
            two += 1
            lo, hi = min(qubits), max(qubits)
            for k in range(lo + 1, hi + 1):
                crossing[k] += 1
    exponent = max((min(crossing[k], k, n - k) for k in range(1, n)), default=0)
    return _Shape(n, instructions, two, 2 ** min(exponent, 62), terminal)


def _predict(method: str, shape: _Shape, shots: int, bindings: int, noisy: bool) -> float:
    c = COSTS
    if method == "stim":
        convert = c.stim_binding_s + c.stim_instruction_s * shape.instructions
        return bindings * (convert + c.stim_sample_s * shape.instructions * shots)
    if method == "density_matrix":
        per = shape.instructions * (c.dm_instruction_s + 4.0**shape.width * c.dm_element_s)
        return c.run_s + bindings * per
    runs = bindings * (shots if noisy or not shape.terminal else 1)
    if method == "statevector":
        amplitudes = 2.0**shape.width
        if noisy or not shape.terminal:
            per_instruction = c.trajectory_instruction_s + amplitudes * c.trajectory_amplitude_s
            per = shape.instructions * per_instruction
        else:
            per = shape.instructions * amplitudes * c.sv_amplitude_s
        return c.run_s + runs * per
    per = shape.instructions * c.mps_instruction_s + shape.two_qubit * shape.bond**3 * c.mps_chi3_s
    return c.run_s + runs * per


def _aer_method(shape: _Shape, shots: int, noisy: bool, max_memory_mb: int) -> str:
    """Aer's own rule for its ``automatic`` method, made explicit so it can be predicted: a
    noisy circuit measured at the end whose shots outnumber its amplitudes is cheaper as one
    density matrix than as a trajectory per shot."""
    memory = max_memory_mb * 2**20
    if noisy and shape.terminal and shots > 2**shape.width and 16 * 4.0**shape.width <= memory:
        return "density_matrix"
    return "statevector" if 16 * 2.0**shape.width <= memory else "matrix_product_state"


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
    from .stim_sampler import pub_is_clifford

    methods: list[str] = []
    total = 0.0
    shapes = []
    for pub in pubs:
        shape = _shape(pub.circuit)
        stim_ok = level is not NoiseLevel.FULL and not user_noise_model and pub_is_clifford(pub)
        noisy = user_noise_model or level is not NoiseLevel.NONE
        shots = int(pub.shots)
        method = "stim" if stim_ok else _aer_method(shape, shots, noisy, settings.max_memory_mb)
        total += _predict(method, shape, shots, pub.parameter_values.size, noisy)
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
    shapes: list[tuple[SamplerPub, _Shape, str]],
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
            _predict(
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


def _clifford(pub: SamplerPub) -> bool:
    from .stim_sampler import pub_is_clifford

    return pub_is_clifford(pub)


def _seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 120:
        return f"{value / 60:.0f} min"
    return f"{value:.3g} s"


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
    from .stim_sampler import sample_pub

    data: list[Any] = [None] * len(pubs)
    groups: dict[tuple[tuple[int, ...], str], list[int]] = {}
    for k, (live, method) in enumerate(zip(pub_qubits, simulation.methods, strict=True)):
        groups.setdefault((tuple(live), method), []).append(k)
    start = time.perf_counter()
    for (live, method), indices in groups.items():
        if method == "stim":
            noise = _pauli_noise(source, live, simulation)
            for k in indices:
                data[k] = sample_pub(pubs[k], noise, None if seed is None else seed + k)
            continue
        options: dict[str, Any] = {
            "method": method,
            "max_parallel_threads": max_threads,
            "max_memory_mb": simulation.max_memory_mb,
        }
        model = _aer_noise(source, live, simulation, user_models)
        if model is not None:
            options["noise_model"] = model
            options["shot_branching_enable"] = method == "statevector"
        results = _aer(options, [pubs[k] for k in indices], seed)
        for k, pub_data in zip(indices, results, strict=True):
            data[k] = pub_data
    return data, time.perf_counter() - start


def _pauli_noise(source: str, live: tuple[int, ...], simulation: SimulationPlan) -> Any:
    if simulation.level is not NoiseLevel.PAULI or not live:
        return None
    from .noise import pauli_noise_for

    return pauli_noise_for(source, live, simulation.cache_dir)


def _aer_noise(
    source: str,
    live: tuple[int, ...],
    simulation: SimulationPlan,
    user_models: Mapping[tuple[int, ...], NoiseModel] | None,
) -> NoiseModel | None:
    if user_models is not None:
        return user_models[live]
    if not live or simulation.level is NoiseLevel.NONE:
        return None
    if simulation.level is NoiseLevel.PAULI:
        return _pauli_noise(source, live, simulation).to_aer()
    from .backends import device_noise_model_for

    return device_noise_model_for(source, live)


def _aer(options: dict[str, Any], pubs: list[SamplerPub], seed: int | None) -> list[DataBin]:
    from qiskit_aer.aererror import AerError
    from qiskit_aer.primitives import SamplerV2

    sampler = SamplerV2(seed=seed, options={"backend_options": options})
    try:
        with warnings.catch_warnings():
            # e.g. "no output classical registers": IBM returns an empty DataBin, so do we.
            warnings.simplefilter("ignore")
            result = sampler.run(pubs).result()
    except AerError as exc:
        raise JobInputError(
            ErrorCode.EXECUTION_FAILED,
            f"The simulation failed: {exc}" + _memory_hint(str(exc), options["max_memory_mb"]),
        ) from None
    return [pub_result.data for pub_result in result]


def _memory_hint(message: str, max_memory_mb: int) -> str:
    if "memory" not in message.lower():
        return ""
    return (
        f" The emulator lets Aer use {max_memory_mb} MB (--sim-memory); use fewer qubits, or a "
        f"Clifford circuit with the 'pauli' or 'none' noise level."
    )
