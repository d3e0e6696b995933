"""A job's three stages, as pure module-level functions for worker processes.

The scheduler runs, each in a worker process:

1. :func:`preprocess` (a classical lane): decode the ``params`` of ``POST /jobs``, validate them
   against the device, build the circuits the QPU samples and model the job's QPU time;
2. :func:`sample` (the QPU, one job at a time per backend): run them on Aer;
3. :func:`postprocess` (a classical lane): build the RuntimeEncoder JSON of the
   ``PrimitiveResult`` IBM would return (spec 4.3).

Every argument and result pickles. Bad input raises :class:`JobInputError` (which pickles too);
any other exception is a bug. Idle qubits are never simulated: ISA circuits are device-wide
(156 qubits on ``ibm_fez``), so :func:`preprocess` compacts the executed circuits onto the qubits
they use, and :func:`sample` restricts the noise model to those same qubits.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

from aioruntime.protocol import ErrorCode, dumps, loads

from . import estimation
from .backends import (
    DeviceLimits,
    device_limits,
    device_noise_model_for,
    device_target,
    restrict_noise_model,
    served_name,
)
from .timing import TimingParams, circuit_duration_s, quantum_seconds, subjob_count

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

#: What IBM uses when neither the PUB nor the options give shots / precision (spec 4.1).
DEFAULT_SHOTS = 4096
DEFAULT_PRECISION = 0.015625
PROGRAMS = ("sampler", "estimator")
#: Options the emulator accepts but does not act on (reported in ``PreparedJob.metadata``).
_IGNORED_OPTIONS = ("dynamical_decoupling", "twirling", "resilience", "seed_estimator",
                    "experimental")


class JobInputError(Exception):
    """The job's input is invalid: the job fails with IBM error ``code`` and ``message``.

    Pickles round-trip (``args`` is ``(code, message)``), so it crosses worker processes.
    """

    def __init__(self, code: int, message: str):
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} (code {int(self.code)})"


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
    """``"sampler"`` or ``"estimator"``."""
    device_source: str
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
    ``None``) and ``ignored_options`` (option names the emulator accepts but does not apply)."""


@dataclass(frozen=True, slots=True)
class Sampled:
    """The output of :func:`sample`."""

    data: list[Any]
    """Per ``sampler_pubs`` entry: the ``DataBin`` of ``BitArray``s Aer returned."""
    aer_seconds: float
    """Wall time Aer took."""


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
) -> PreparedJob:
    """Decode, validate and plan one job for the device ``device_source``.

    Args:
        program_id: ``"sampler"`` or ``"estimator"``.
        params_json: the JSON text of ``params`` of ``POST /jobs``, as the official client sends
            it (spec 4.1).
        device_source: the device's snapshot name (``Device.source``).
        timing: constants of the QPU time model.
        max_shots: shots per PUB allowed, at most (default: the configuration's ``max_shots``).
        max_executions: total executions allowed, at most (``None``: no limit).

    Raises:
        JobInputError: ``VALIDATION`` for anything malformed or out of range (undecodable
            payload, unknown program, bad shots / precision / ``rep_delay``, circuit wider than the
            device, too many executions), ``TRANSPILATION`` for a circuit that is not ISA.
    """
    if program_id not in PROGRAMS:
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"Unknown program {program_id!r}: the emulator runs 'sampler' and 'estimator'.",
        )
    params = _decode(params_json)
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
            _check_circuit(f"pubs[{i}]", pub.circuit, target, device_name)
            executed.append((pub.circuit, pub.parameter_values, int(pub.shots)))
            post.append(SamplerPubPlan(tuple(pub.shape), int(pub.shots),
                                       dict(pub.circuit.metadata or {})))
    else:
        basis = estimation.basis_change_gates(target)
        for i, raw in enumerate(raw_pubs):
            epub, shots, precision = _estimator_pub(i, raw, opts, shots_cap)
            _check_circuit(f"pubs[{i}]", epub.circuit, target, device_name)
            circuits, plan = estimation.plan_estimator_pub(
                epub, shots=shots, precision=precision, basis_gates=basis,
                first_index=len(executed),
            )
            executed.extend((c, epub.parameter_values, shots) for c in circuits)
            post.append(plan)

    # The time model, on the device-wide ISA circuits.
    items = [
        (circuit_duration_s(circ, target), shots * values.size)
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
    qpu_s = quantum_seconds(items, rep_delay_s=opts["rep_delay_s"], params=timing,
                            subjobs=subjobs)

    # Compact each circuit onto the qubits it uses, so Aer never sees the idle rest of the
    # device (nor, for a job spread over the chip, the qubits of its other circuits).
    pub_qubits = [_live_qubits(circ) for circ, _, _ in executed]
    sampler_pubs = [
        _make_sampler_pub(_compact(circ, live), values, shots)
        for (circ, values, shots), live in zip(executed, pub_qubits, strict=True)
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
            "ignored_options": opts["ignored"],
        },
    )


def _decode(params_json: str | bytes) -> dict[str, Any]:
    """``params`` decoded with the official RuntimeDecoder, or a clear ``JobInputError``."""
    try:
        params = loads(params_json)
    except Exception as exc:  # any decoder failure is the input's fault
        try:
            raw = json.loads(params_json)
        except (ValueError, TypeError) as json_exc:
            raise JobInputError(
                ErrorCode.VALIDATION, f"The job parameters are not valid JSON: {json_exc}"
            ) from None
        where = _undecodable_part(raw, "params") or "the job parameters"
        raise JobInputError(
            ErrorCode.VALIDATION, f"Cannot decode {where}: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(params, dict):
        raise JobInputError(ErrorCode.VALIDATION, "The job parameters must be a JSON object.")
    return params


def _undecodable_part(node: Any, path: str) -> str | None:
    """The path of the first RuntimeEncoder value in ``node`` that fails to decode."""
    if isinstance(node, dict):
        if "__type__" in node:
            try:
                loads(json.dumps(node))
            except Exception:
                kind = node.get("__type__")
                what = "circuit (QPY)" if kind == "QuantumCircuit" else f"{kind} value"
                inner = _undecodable_part(node.get("__value__"), path)
                return inner or f"the {what} at {path}"
            return None
        for key, value in node.items():
            if found := _undecodable_part(value, f"{path}.{key}"):
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if found := _undecodable_part(value, f"{path}[{i}]"):
                return found
    return None


def _parse_options(
    params: dict[str, Any], program_id: str, limits: DeviceLimits, shots_cap: int
) -> dict[str, Any]:
    """The options the emulator honours, validated; see ``PreparedJob.metadata``."""
    options = params.get("options") or {}
    if not isinstance(options, dict):
        raise JobInputError(ErrorCode.VALIDATION, "params.options must be an object.")
    simulator = options.get("simulator") or {}
    execution = options.get("execution") or {}
    if not isinstance(simulator, dict) or not isinstance(execution, dict):
        raise JobInputError(ErrorCode.VALIDATION,
                            "options.simulator and options.execution must be objects.")

    default_shots = options.get("default_shots")
    if default_shots is not None:
        default_shots = _check_shots("options.default_shots", default_shots, shots_cap)
    default_precision = options.get("default_precision")
    if default_precision is not None:
        default_precision = _check_precision("options.default_precision", default_precision)

    seed = simulator.get("seed_simulator")
    if seed is not None and (not isinstance(seed, Integral) or isinstance(seed, bool)):
        raise JobInputError(ErrorCode.VALIDATION,
                            f"options.simulator.seed_simulator must be an integer, not {seed!r}.")

    rep_delay = execution.get("rep_delay")
    if rep_delay is None:
        rep_delay_s = limits.default_rep_delay_s
    else:
        if not isinstance(rep_delay, Real) or isinstance(rep_delay, bool) or not math.isfinite(
            rep_delay
        ):
            raise JobInputError(ErrorCode.VALIDATION,
                                f"options.execution.rep_delay must be a number, not {rep_delay!r}.")
        rep_delay_s = float(rep_delay)
        rng = limits.rep_delay_range_s
        lo, hi = rng if rng is not None else (0.0, math.inf)
        if not lo - 1e-12 <= rep_delay_s <= hi + 1e-12:
            raise JobInputError(
                ErrorCode.VALIDATION,
                f"options.execution.rep_delay {rep_delay_s:g} s is outside the device's range "
                f"[{lo:g}, {hi:g}] s ({lo * 1e6:g}-{hi * 1e6:g} µs).",
            )
    meas_type = execution.get("meas_type")
    if meas_type not in (None, "classified"):
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"options.execution.meas_type {meas_type!r} is not supported by the emulator "
            "(only 'classified').",
        )

    noise_model = simulator.get("noise_model")
    if noise_model is not None:
        from qiskit_aer.noise import NoiseModel

        if not isinstance(noise_model, NoiseModel):
            raise JobInputError(ErrorCode.VALIDATION,
                                "options.simulator.noise_model is not a decodable Aer NoiseModel.")

    ignored = [k for k in _IGNORED_OPTIONS if options.get(k) not in (None, {}, [])]
    ignored += [f"simulator.{k}" for k in ("coupling_map", "basis_gates") if simulator.get(k)]
    if program_id == "estimator" and params.get("resilience_level") not in (None, 0):
        ignored.append("resilience_level")
    return {
        "default_shots": default_shots,
        "default_precision": default_precision,
        "seed": int(seed) if seed is not None else None,
        "rep_delay_s": rep_delay_s,
        "noise_model": noise_model,
        "ignored": ignored,
    }


def _check_shots(where: str, shots: Any, cap: int) -> int:
    if not isinstance(shots, Integral) or isinstance(shots, bool):
        raise JobInputError(ErrorCode.VALIDATION, f"{where}: shots must be an integer, "
                                                  f"not {shots!r}.")
    if not 1 <= int(shots) <= cap:
        raise JobInputError(ErrorCode.VALIDATION,
                            f"{where}: shots must be between 1 and {cap}, not {shots}.")
    return int(shots)


def _check_precision(where: str, precision: Any) -> float:
    if (not isinstance(precision, Real) or isinstance(precision, bool)
            or not math.isfinite(precision) or precision <= 0):
        raise JobInputError(ErrorCode.VALIDATION,
                            f"{where}: precision must be a number > 0, not {precision!r}.")
    return float(precision)


def _pub_items(i: int, raw: Any, sizes: tuple[int, int], form: str) -> list[Any]:
    from qiskit import QuantumCircuit

    if not isinstance(raw, (list, tuple)) or not sizes[0] <= len(raw) <= sizes[1]:
        raise JobInputError(ErrorCode.VALIDATION, f"pubs[{i}] must be a list {form}.")
    if not isinstance(raw[0], QuantumCircuit):
        raise JobInputError(ErrorCode.VALIDATION,
                            f"pubs[{i}][0] must be a QPY-encoded QuantumCircuit.")
    return list(raw) + [None] * (sizes[1] - len(raw))


def _check_values(i: int, circuit: QuantumCircuit, values: Any) -> None:
    """A clearer message than qiskit's for parameter values that do not fit the circuit."""
    import numpy as np

    if values is None or isinstance(values, dict):
        return  # no values, or a BindingsArray-like mapping that qiskit checks itself
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise JobInputError(ErrorCode.VALIDATION,
                            f"pubs[{i}]: parameter_values must be an array of numbers.") from None
    num = circuit.num_parameters
    if num == 0 and array.size == 0:
        return
    if array.ndim == 0 or array.shape[-1] != num:
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"pubs[{i}]: the circuit has {num} parameters but parameter_values has shape "
            f"{array.shape}; expected shape (*pub_shape, {num}).",
        )


def _sampler_pub(i: int, raw: Any, default_shots: int | None, cap: int) -> SamplerPub:
    from qiskit.primitives.containers.sampler_pub import SamplerPub

    circuit, values, shots = _pub_items(i, raw, (1, 3), "[circuit, parameter_values, shots]")
    _check_values(i, circuit, values)
    if shots is None:
        shots = default_shots or DEFAULT_SHOTS
    shots = _check_shots(f"pubs[{i}]", shots, cap)
    try:
        return SamplerPub.coerce((circuit, values, shots))
    except (ValueError, TypeError) as exc:
        raise JobInputError(ErrorCode.VALIDATION, f"pubs[{i}]: {exc}") from None


def _estimator_pub(
    i: int, raw: Any, opts: dict[str, Any], cap: int
) -> tuple[Any, int, float]:
    """The coerced EstimatorPub, its shots and its reported target precision."""
    from qiskit.primitives.containers.estimator_pub import EstimatorPub

    circuit, observables, values, precision = _pub_items(
        i, raw, (2, 4), "[circuit, observables, parameter_values, precision]"
    )
    _check_values(i, circuit, values)
    if precision is not None:
        precision = _check_precision(f"pubs[{i}]", precision)
        shots = estimation.shots_for_precision(precision)
    elif opts["default_shots"] is not None:
        # IBM: options.default_shots, when set, overrides default_precision.
        shots = opts["default_shots"]
        precision = 1.0 / math.sqrt(shots)
    else:
        precision = opts["default_precision"] or DEFAULT_PRECISION
        shots = estimation.shots_for_precision(precision)
    if shots > cap:
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"pubs[{i}]: precision {precision:g} needs {shots} shots, more than the maximum of "
            f"{cap}.",
        )
    try:
        pub = EstimatorPub.coerce((circuit, observables, values, precision))
    except (ValueError, TypeError, KeyError) as exc:
        raise JobInputError(ErrorCode.VALIDATION, f"pubs[{i}]: {exc}") from None
    return pub, shots, precision


# ---------------------------------------------------------------------------------------------
# Circuits: ISA check, compaction, noise restriction
# ---------------------------------------------------------------------------------------------


def _check_circuit(where: str, circuit: QuantumCircuit, target: Target, device: str) -> None:
    """Raise unless ``circuit`` fits the device and uses only instructions the target supports
    on the qubits they act on (an ISA circuit). Barriers and delays are always allowed."""
    if circuit.num_qubits > target.num_qubits:
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"{where}: the circuit has {circuit.num_qubits} qubits, more than the "
            f"{target.num_qubits} qubits of {device}.",
        )
    _check_block(where, circuit, list(range(circuit.num_qubits)), target, device)


def _check_block(
    where: str, circuit: QuantumCircuit, physical: list[int], target: Target, device: str
) -> None:
    qindex = {q: physical[k] for k, q in enumerate(circuit.qubits)}
    for inst in circuit.data:
        op = inst.operation
        if op.name in ("barrier", "delay"):
            continue
        qargs = tuple(qindex[q] for q in inst.qubits)
        if not target.instruction_supported(op.name, qargs):
            raise JobInputError(
                ErrorCode.TRANSPILATION,
                f"{where}: the circuit is not ISA: instruction '{op.name}' on qubits {qargs} is "
                f"not supported by {device}. Transpile it for the device first (e.g. with "
                "qiskit's generate_preset_pass_manager(backend=...)).",
            )
        for block in getattr(op, "blocks", ()):
            _check_block(where, block, list(qargs), target, device)


#: Instructions that leave a qubit in |0> if it starts there (or do nothing to it).
_GROUND_OPS = frozenset({"barrier", "delay", "measure", "reset"})


def _live_qubits(circuit: QuantumCircuit) -> tuple[int, ...]:
    """Physical qubits ``circuit`` acts on with anything but a barrier, delay, measurement or
    reset, sorted. Every other qubit stays in |0> throughout: it needs no simulation."""
    index = {q: k for k, q in enumerate(circuit.qubits)}
    live: set[int] = set()
    for inst in circuit.data:
        if inst.operation.name not in _GROUND_OPS:
            live.update(index[q] for q in inst.qubits)
    return tuple(sorted(live))


def _compact(circuit: QuantumCircuit, live: tuple[int, ...]) -> QuantumCircuit:
    """``circuit`` on the qubits that need simulating: its qubit ``live[i]`` becomes qubit ``i``,
    and every other qubit that is measured or reset shares one extra "ground" qubit
    ``len(live)``, which stays in |0> (so those measurements read 0, as they would on an ideal
    device; no readout error is modelled for them). Barriers and delays are cut to the kept
    qubits. Classical bits, registers, parameters and metadata are unchanged.
    """
    from qiskit import QuantumCircuit
    from qiskit.circuit import Barrier

    new_index = {p: i for i, p in enumerate(live)}
    ground = len(live)
    old_index = {q: k for k, q in enumerate(circuit.qubits)}
    needs_ground = any(
        inst.operation.name in ("measure", "reset")
        and any(old_index[q] not in new_index for q in inst.qubits)
        for inst in circuit.data
    )
    out = QuantumCircuit(ground + (1 if needs_ground or not live else 0), name=circuit.name,
                         global_phase=circuit.global_phase,
                         metadata=dict(circuit.metadata or {}))
    out.add_bits(list(circuit.clbits))
    for creg in circuit.cregs:
        out.add_register(creg)
    for inst in circuit.data:
        op = inst.operation
        if op.name in ("measure", "reset"):
            qubits = [out.qubits[new_index.get(old_index[q], ground)] for q in inst.qubits]
        else:
            qubits = [out.qubits[new_index[old_index[q]]] for q in inst.qubits
                      if old_index[q] in new_index]
            if not qubits and inst.qubits:  # a barrier or delay on ground qubits only
                continue
            if op.name == "barrier" and len(qubits) != len(inst.qubits):
                op = Barrier(len(qubits))
        out.append(op, qubits, inst.clbits, copy=False)
    return out


def _make_sampler_pub(circuit: QuantumCircuit, values: BindingsArray, shots: int) -> SamplerPub:
    from qiskit.primitives.containers.sampler_pub import SamplerPub

    return SamplerPub(circuit=circuit, parameter_values=values, shots=shots, validate=False)


# ---------------------------------------------------------------------------------------------
# Stage 2: the QPU
# ---------------------------------------------------------------------------------------------


def sample(prepared: PreparedJob, *, noise: bool, max_threads: int = 0) -> Sampled:
    """Sample ``prepared.sampler_pubs`` with Aer's ``SamplerV2``.

    With ``noise`` the device noise model (restricted to each circuit's qubits) is applied; a user's
    ``simulator.noise_model`` is applied whatever ``noise`` says. ``max_threads`` caps Aer's
    threads (0: Aer's default, all cores).

    Raises:
        JobInputError: ``EXECUTION_FAILED`` when Aer cannot simulate the job (e.g. too many
            entangled qubits for the memory).
    """
    from qiskit_aer.aererror import AerError
    from qiskit_aer.primitives import SamplerV2

    if not prepared.sampler_pubs:
        return Sampled(data=[], aer_seconds=0.0)
    # One Aer run per distinct qubit set, each with the noise model of exactly those qubits.
    batches: dict[tuple[int, ...], list[int]] = {}
    for k, live in enumerate(prepared.metadata["pub_qubits"]):
        batches.setdefault(tuple(live), []).append(k)
    user_models = prepared.metadata.get("noise_models")
    data: list[Any] = [None] * len(prepared.sampler_pubs)
    start = time.perf_counter()
    for live, indices in batches.items():
        backend_options: dict[str, Any] = {"max_parallel_threads": max_threads}
        if user_models is not None:
            backend_options["noise_model"] = user_models[live]
        elif noise and live:
            backend_options["noise_model"] = device_noise_model_for(prepared.device_source, live)
        sampler = SamplerV2(seed=prepared.seed, options={"backend_options": backend_options})
        try:
            with warnings.catch_warnings():
                # e.g. "no output classical registers": IBM returns an empty DataBin, so do we.
                warnings.simplefilter("ignore")
                result = sampler.run([prepared.sampler_pubs[k] for k in indices]).result()
        except AerError as exc:
            raise JobInputError(ErrorCode.EXECUTION_FAILED,
                                f"The simulation failed: {exc}") from None
        for k, pub_result in zip(indices, result, strict=True):
            data[k] = pub_result.data
    return Sampled(data=data, aer_seconds=time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# Stage 3: post-processing
# ---------------------------------------------------------------------------------------------


def postprocess(
    prepared: PreparedJob, sampled: Sampled, span_start: datetime, span_stop: datetime
) -> str:
    """The RuntimeEncoder JSON text of the job's ``PrimitiveResult`` (spec 4.3).

    Sampler: one ``SamplerPubResult`` per PUB (a ``BitArray`` per classical register, shaped
    like the PUB) and one ``DoubleSliceSpan`` from ``span_start`` to ``span_stop`` covering all
    PUBs. Estimator: one ``PubResult`` per PUB with ``evs``, ``stds`` and
    ``ensemble_standard_error``.
    """
    from qiskit.primitives.containers import PrimitiveResult, SamplerPubResult

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
        spans = ExecutionSpans([DoubleSliceSpan(span_start, span_stop, slices)])
        result = PrimitiveResult(
            pub_results, metadata={"execution": {"execution_spans": spans}, "version": 2}
        )
    else:
        datas: list[DataBin] = sampled.data
        result = PrimitiveResult(
            [estimation.estimator_pub_result(plan, datas) for plan in prepared.post],
            metadata=estimation.estimator_result_metadata(),
        )
    return dumps(result)
