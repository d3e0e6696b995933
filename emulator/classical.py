"""A job's three stages, as pure module-level functions for worker processes.

The scheduler runs, each in a worker process:

1. :func:`preprocess` (a classical lane): decode the ``params`` of ``POST /jobs``, validate them
   against the device, build the circuits the QPU samples and model the job's QPU time;
2. :func:`sample` (the QPU, one job at a time per backend): run them on Aer;
3. :func:`postprocess` (a classical lane): build the RuntimeEncoder JSON of the
   ``PrimitiveResult`` IBM would return (spec 4.3).

Every argument and result pickles. Bad input raises :class:`JobInputError` (which pickles too);
any other exception is a bug. The checks :func:`preprocess` runs on its input (decoding the
params, options, PUBs, the ISA check) live in :mod:`emulator.validation`, which also defines
:class:`JobInputError`; it is re-exported here.

Idle qubits are never simulated: ISA circuits are device-wide (156 qubits on ``ibm_fez``), so
:func:`preprocess` compacts the executed circuits onto the qubits they use, and :func:`sample`
restricts the noise model to those same qubits. How they are simulated (noise level, Stim or
Aer, the predicted cost and the budget) is :mod:`emulator.simulation`'s business: pre-processing
plans it, the QPU runs the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aioruntime.protocol import PROGRAMS, ErrorCode, dumps

from . import estimation, simulation
from .backends import device_limits, served_name, split_source
from .compaction import compact, live_qubits
from .derived import derived
from .simulation import SimulationPlan, SimulationSettings
from .targets import device_target, restrict_noise_model
from .timing import TimingParams, circuit_duration_s, quantum_seconds, subjob_count
from .validation import (
    DEFAULT_PRECISION,
    DEFAULT_SHOTS,
    JobInputError,
    _check_circuit,
    _decode,
    _estimator_pub,
    _parse_options,
    _sampler_pub,
    mitigation_note,
)

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.primitives.containers import DataBin
    from qiskit.primitives.containers.bindings_array import BindingsArray
    from qiskit.primitives.containers.sampler_pub import SamplerPub
    from qiskit.transpiler import Target

__all__ = [
    "DEFAULT_PRECISION",
    "DEFAULT_SHOTS",
    "JobInputError",
    "PreparedJob",
    "Sampled",
    "SamplerPubPlan",
    "postprocess",
    "preprocess",
    "sample",
]


@dataclass(frozen=True, slots=True)
class SamplerPubPlan:
    """What post-processing needs to rebuild one Sampler PUB result."""

    shape: tuple[int, ...]
    shots: int
    circuit_metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PreparedJob:
    """The output of :func:`preprocess`: everything the QPU and post-processing need."""

    program_id: str
    """``"sampler"``, ``"estimator"``, ``"executor"`` or ``"noise-learner"``."""
    device_source: str
    """The device's snapshot name (without the ``dry-run:`` mark)."""
    sampler_pubs: list[SamplerPub]
    """What the QPU samples, each circuit compacted onto the qubits it needs simulated,
    ``metadata["pub_qubits"][k]``: its qubit ``i`` is physical qubit ``pub_qubits[k][i]``, and
    it may have one more qubit, kept in |0>, standing in for the qubits it only measures or
    resets. Sampler: the user's circuits. Estimator: one measurement circuit per commuting
    group, with the PUB's parameter values and shots."""
    seed: int | None
    """``options.simulator.seed_simulator``."""
    quantum_seconds: float
    """Modelled QPU time (``emulator.timing``)."""
    num_circuits: int
    """Executed circuits, after broadcasting (x parameter sets, x groups for the Estimator)."""
    executions: int
    """Total shots over all executed circuits."""
    post: list[Any]
    """One plan per user PUB: :class:`SamplerPubPlan` or :class:`estimation.EstimatorPubPlan`."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """``pub_qubits`` (per ``sampler_pubs`` entry, the physical qubits simulated),
    ``physical_qubits`` (their union), ``rep_delay_s``, ``subjobs``, ``noise_models`` (the
    user's ``simulator.noise_model`` restricted to each distinct ``pub_qubits`` entry, or
    ``None``), ``ignored_options`` (option names the emulator accepts but does not apply) and, for
    a dry run, ``mock_seed``."""
    dry_run: bool = False
    """A job on a mock device: it never reaches the QPU and is billed nothing; post-processing
    fills the result with mock data (:mod:`emulator.dry_run`)."""
    notes: tuple[str, ...] = ()
    """Warnings for the job's log (options accepted but not applied, and why)."""
    simulation: SimulationPlan | None = None
    """Noise level and method per ``sampler_pubs`` entry (``None``: decided when sampling,
    with the default settings and no budget)."""


@dataclass(frozen=True, slots=True)
class Sampled:
    """The output of :func:`sample`."""

    data: list[Any]
    """Per ``sampler_pubs`` entry: the ``DataBin`` of ``BitArray``s Aer returned."""
    aer_seconds: float
    """Wall time the simulators (Aer, Stim) took."""


# ---------------------------------------------------------------------------------------------
# Stage 1: pre-processing
# ---------------------------------------------------------------------------------------------


def preprocess(
    program_id: str,
    params_json: str,
    device_source: str,
    *,
    timing: TimingParams = TimingParams(),  # noqa: B008 - frozen, safe as a default
    max_shots: int | None = None,
    max_executions: int | None = None,
    settings: SimulationSettings = SimulationSettings(),  # noqa: B008 - frozen
) -> PreparedJob:
    """Decode, validate and plan one job for the device ``device_source``.

    Args:
        program_id: ``"sampler"``, ``"estimator"`` (the legacy primitives, here),
            ``"executor"`` (:mod:`emulator.executor`) or ``"noise-learner"``
            (:mod:`emulator.noise_learner`).
        params_json: the JSON text of ``params`` of ``POST /jobs``, as the official client sends
            it (spec 4.1).
        device_source: the device's ``Device.source``: its snapshot name, or
            ``dry-run:<snapshot>`` for a mock twin (the job is then a dry run).
        timing: constants of the QPU time model.
        max_shots: shots per PUB allowed, at most (default: the configuration's ``max_shots``).
        max_executions: total executions allowed, at most (``None``: no limit).
        settings: the emulator's noise level (for jobs that choose none) and simulation budget.

    Raises:
        JobInputError: ``VALIDATION`` for anything malformed or out of range (undecodable
            payload, unknown program, bad shots / precision / ``rep_delay``, circuit wider than the
            device, too many executions, an unknown noise level), ``TRANSPILATION`` for a circuit
            that is not ISA, ``JOB_TOO_LARGE`` for a simulation predicted over the budget.
    """
    if program_id not in PROGRAMS:
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"Unknown program {program_id!r}: the emulator runs {', '.join(PROGRAMS)}.",
        )
    source, dry_run = split_source(device_source)
    params = _decode(params_json)
    if program_id == "executor":
        from . import executor

        # Clifford parts go to Stim (one wide pack) unless the level needs Aer's full model.
        level = simulation.requested_level(params) or settings.noise
        prepared = executor.prepare(
            params,
            source,
            timing=timing,
            max_executions=max_executions,
            stim=level is not simulation.NoiseLevel.FULL,
        )
    elif program_id == "noise-learner":
        from . import noise_learner

        prepared = noise_learner.prepare(params, source, timing=timing)
    else:
        prepared = _prepare_primitive(program_id, params, source, timing, max_shots, max_executions)
    if dry_run:
        from .dry_run import mock_seed

        metadata = {**prepared.metadata, "mock_seed": mock_seed(params_json)}
        return replace(prepared, dry_run=True, metadata=metadata)
    # Every program's executed circuits are simulated the same way: the noise level the job
    # asks for (or the emulator's), Stim or Aer per circuit, refused here if over the budget.
    sim_plan = simulation.plan(
        prepared.sampler_pubs,
        level=simulation.requested_level(params) or settings.noise,
        settings=settings,
        user_noise_model=prepared.metadata.get("noise_models") is not None,
    )
    simulation.prepare(source, prepared.sampler_pubs, prepared.metadata["pub_qubits"], sim_plan)
    return replace(prepared, simulation=sim_plan)


def _prepare_primitive(
    program_id: str,
    params: dict[str, Any],
    device_source: str,
    timing: TimingParams,
    max_shots: int | None,
    max_executions: int | None,
) -> PreparedJob:
    """:func:`preprocess` for the legacy ``sampler`` and ``estimator`` programs."""
    limits = device_limits(device_source)
    target = device_target(device_source)
    device_name = served_name(device_source)
    shots_cap = max_shots if max_shots is not None else limits.max_shots
    opts = _parse_options(params, program_id, limits, shots_cap)

    raw_pubs = params.get("pubs")
    if not isinstance(raw_pubs, list) or not raw_pubs:
        raise JobInputError(ErrorCode.VALIDATION, "params.pubs must be a non-empty list of PUBs.")

    # (device-wide measured circuit, parameter values, shots) per QPU circuit.
    executed: list[tuple[QuantumCircuit, BindingsArray, int]] = []
    post: list[Any] = []
    if program_id == "sampler":
        for i, raw in enumerate(raw_pubs):
            pub = _sampler_pub(i, raw, opts["default_shots"], shots_cap)
            _check_isa(f"pubs[{i}]", pub.circuit, target, device_source, device_name)
            executed.append((pub.circuit, pub.parameter_values, int(pub.shots)))
            post.append(
                SamplerPubPlan(tuple(pub.shape), int(pub.shots), dict(pub.circuit.metadata or {}))
            )
    else:
        basis = estimation.basis_change_gates(target)
        for i, raw in enumerate(raw_pubs):
            epub, shots, precision = _estimator_pub(i, raw, opts, shots_cap)
            _check_isa(f"pubs[{i}]", epub.circuit, target, device_source, device_name)
            circuits, plan = estimation.plan_estimator_pub(
                epub,
                shots=shots,
                precision=precision,
                basis_gates=basis,
                first_index=len(executed),
            )
            executed.extend((c, epub.parameter_values, shots) for c in circuits)
            post.append(plan)

    # The time model, on the device-wide ISA circuits.
    items = [
        (_duration_s(circ, target, device_source), shots * values.size)
        for circ, values, shots in executed
    ]
    num_circuits = sum(values.size for _, values, _ in executed)
    executions = sum(n for _, n in items)
    if max_executions is not None and executions > max_executions:
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"The job has {executions} executions (circuits x parameter sets x shots), more than "
            f"the limit of {max_executions} per job.",
        )
    subjobs = subjob_count(num_circuits, limits.max_experiments or timing.max_circuits_per_subjob)
    qpu_s = quantum_seconds(items, rep_delay_s=opts["rep_delay_s"], params=timing, subjobs=subjobs)

    # Compact each circuit onto the qubits it uses, so Aer never sees the idle rest of the
    # device (nor, for a job spread over the chip, the qubits of its other circuits).
    compacted = [_compacted(circ) for circ, _, _ in executed]
    pub_qubits = [live for live, _ in compacted]
    sampler_pubs = [
        _make_sampler_pub(circ, values, shots)
        for (_, circ), (_, values, shots) in zip(compacted, executed, strict=True)
    ]
    user_noise = opts["noise_model"]
    noise_models = None
    if user_noise is not None:
        noise_models = {live: restrict_noise_model(user_noise, live) for live in set(pub_qubits)}
    return PreparedJob(
        program_id=program_id,
        device_source=device_source,
        sampler_pubs=sampler_pubs,
        seed=opts["seed"],
        quantum_seconds=qpu_s,
        num_circuits=num_circuits,
        executions=executions,
        post=post,
        metadata={
            "pub_qubits": pub_qubits,
            "physical_qubits": tuple(sorted(set().union(*pub_qubits))),
            "rep_delay_s": opts["rep_delay_s"],
            "subjobs": subjobs,
            "noise_models": noise_models,
            "ignored_options": simulation.without_own_options(opts["ignored"], params),
            "ignored_mitigation": opts["mitigation"],
        },
        notes=(mitigation_note(program_id, opts["mitigation"]),) if opts["mitigation"] else (),
    )


def _duration_s(circuit: QuantumCircuit, target: Target, source: str) -> float:
    """:func:`emulator.timing.circuit_duration_s` on the device, once per circuit."""
    return derived(circuit, ("duration", source), lambda: circuit_duration_s(circuit, target))


def _compacted(circuit: QuantumCircuit) -> tuple[tuple[int, ...], QuantumCircuit]:
    """The qubits ``circuit`` acts on and the circuit compacted onto them
    (:mod:`emulator.compaction`), once per circuit."""

    def compute() -> tuple[tuple[int, ...], QuantumCircuit]:
        live = live_qubits(circuit)
        return live, compact(circuit, live)

    return derived(circuit, "compacted", compute)


def _check_isa(
    where: str, circuit: QuantumCircuit, target: Target, source: str, device: str
) -> None:
    """:func:`emulator.validation._check_circuit`, once per circuit and device (a pass is
    remembered; a failure raises every time, naming ``where``)."""
    derived(circuit, ("isa", source), lambda: _check_circuit(where, circuit, target, device))


def _make_sampler_pub(circuit: QuantumCircuit, values: BindingsArray, shots: int) -> SamplerPub:
    from qiskit.primitives.containers.sampler_pub import SamplerPub

    return SamplerPub(circuit=circuit, parameter_values=values, shots=shots, validate=False)


# ---------------------------------------------------------------------------------------------
# Stage 2: the QPU
# ---------------------------------------------------------------------------------------------


def sample(prepared: PreparedJob, *, max_threads: int = 0) -> Sampled:
    """Sample ``prepared.sampler_pubs`` by ``prepared.simulation`` (:func:`simulation.run`).

    A user's ``simulator.noise_model`` is applied whatever the level. ``max_threads`` caps
    Aer's threads (0: Aer's default, all cores).

    Raises:
        JobInputError: ``EXECUTION_FAILED`` when Aer cannot simulate the job (e.g. too many
            entangled qubits for the memory).
    """
    if not prepared.sampler_pubs:
        return Sampled(data=[], aer_seconds=0.0)
    plan = prepared.simulation or simulation.plan(
        prepared.sampler_pubs,
        level=simulation.NoiseLevel.NONE,
        settings=SimulationSettings(budget_s=float("inf")),
        user_noise_model=prepared.metadata.get("noise_models") is not None,
    )
    data, seconds = simulation.run(
        prepared.sampler_pubs,
        prepared.metadata["pub_qubits"],
        prepared.device_source,
        plan,
        seed=prepared.seed,
        user_models=prepared.metadata.get("noise_models"),
        max_threads=max_threads,
    )
    return Sampled(data=data, aer_seconds=seconds)


# ---------------------------------------------------------------------------------------------
# Stage 3: post-processing
# ---------------------------------------------------------------------------------------------


def postprocess(
    prepared: PreparedJob, sampled: Sampled | None, span_start: datetime, span_stop: datetime
) -> str:
    """The result text of the job (spec 4.3); ``sampled`` is ``None`` for a dry run, whose
    result holds mock data (:mod:`emulator.dry_run`) and no execution span.

    Sampler: the RuntimeEncoder JSON of a ``PrimitiveResult`` with one ``SamplerPubResult`` per
    PUB (a ``BitArray`` per classical register, shaped like the PUB) and one ``DoubleSliceSpan``
    from ``span_start`` to ``span_stop`` covering all PUBs. Estimator: one ``PubResult`` per PUB
    with ``evs``, ``stds`` and ``ensemble_standard_error``. Executor and noise learner: their
    schema's result model (:mod:`emulator.executor`, :mod:`emulator.noise_learner`). A legacy
    job that asked for mitigation the emulator does not apply says so in the result metadata
    (``metadata["emulator"]``).
    """
    from qiskit.primitives.containers import PrimitiveResult, SamplerPubResult

    if prepared.program_id == "executor":
        from . import executor

        return executor.finish(prepared, sampled, span_start, span_stop)
    if prepared.program_id == "noise-learner":
        from . import noise_learner

        return noise_learner.finish(prepared, sampled)
    dry_run = sampled is None
    if sampled is None:
        from .dry_run import mock_sampled

        sampled = mock_sampled(prepared)
    extra: dict[str, Any] = {}
    if prepared.simulation is not None:
        extra["simulation"] = prepared.simulation.metadata(sampled.aer_seconds)
    if asked := prepared.metadata.get("ignored_mitigation"):
        extra["emulator"] = {
            "ignored_options": list(asked),
            "note": mitigation_note(prepared.program_id, list(asked)),
        }
    if prepared.program_id == "sampler":
        from qiskit_ibm_runtime.execution_span import DoubleSliceSpan, ExecutionSpans

        pub_results = []
        slices: dict[int, tuple[tuple[int, ...], slice, slice]] = {}
        for i, (plan, data) in enumerate(zip(prepared.post, sampled.data, strict=True)):
            pub_results.append(
                SamplerPubResult(data, metadata={"circuit_metadata": plan.circuit_metadata})
            )
            size = math.prod(plan.shape) or 1
            slices[i] = ((*plan.shape, plan.shots), slice(0, size), slice(0, plan.shots))
        spans = ExecutionSpans([] if dry_run else [DoubleSliceSpan(span_start, span_stop, slices)])
        result = PrimitiveResult(
            pub_results,
            metadata={"execution": {"execution_spans": spans}, "version": 2, **extra},
        )
    else:
        datas: list[DataBin] = sampled.data
        result = PrimitiveResult(
            [estimation.estimator_pub_result(plan, datas) for plan in prepared.post],
            metadata={**estimation.estimator_result_metadata(), **extra},
        )
    return dumps(result)
