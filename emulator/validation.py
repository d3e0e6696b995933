"""Job input validation for :func:`emulator.classical.preprocess`: every way a job can be refused.

It decodes ``params`` (naming the part that fails to decode), validates the options the
emulator honours, coerces each PUB with clear messages for bad shots, precision or parameter
values, and checks that circuits are ISA circuits of the device. Every refusal raises
:class:`JobInputError` with IBM's error code, which pickles, so it crosses worker processes.
"""

from __future__ import annotations

import json
import math
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

from aioruntime.protocol import CircuitMemo, DecodeLimitError, DecodeLimits, ErrorCode, loads

from . import estimation
from .backends import DeviceLimits
from .derived import derived

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.primitives.containers.sampler_pub import SamplerPub
    from qiskit.transpiler import Target

__all__ = ["DEFAULT_PRECISION", "DEFAULT_SHOTS", "JOB_DECODE_LIMITS", "JobInputError"]

#: What IBM uses when neither the PUB nor the options give shots / precision (spec 4.1).
DEFAULT_SHOTS = 4096
DEFAULT_PRECISION = 0.015625
#: What decoding one job's ``params`` may take: all its compressed values (arrays, QPY circuits)
#: together inflate to at most 256 MiB, and it nests at most as deep as a request body may.
JOB_DECODE_LIMITS = DecodeLimits(max_inflated_bytes=256 * 2**20, max_depth=64)
#: This process's recently decoded circuits (a worker decodes the jobs of one emulator): an
#: optimizer's or a repeated job's circuit is decoded once, not per job. Nothing downstream
#: changes a decoded circuit: compaction and the estimator's basis changes build new ones
#: (``tests/test_classical.py`` checks that a job leaves its decoded circuit as it was).
CIRCUITS = CircuitMemo()
#: Options the emulator accepts but does not act on (reported in ``PreparedJob.metadata``).
_IGNORED_OPTIONS = (
    "dynamical_decoupling",
    "twirling",
    "resilience",
    "seed_estimator",
    "experimental",
)


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


# ---------------------------------------------------------------------------------------------
# Params, options and PUBs
# ---------------------------------------------------------------------------------------------


def _decode(params_json: str | bytes) -> dict[str, Any]:
    """``params`` decoded with the official RuntimeDecoder, or a clear ``JobInputError``."""
    try:
        params = loads(params_json, limits=JOB_DECODE_LIMITS, memo=CIRCUITS)
    except DecodeLimitError as exc:
        raise JobInputError(
            ErrorCode.VALIDATION, f"Cannot decode the job parameters: {exc}."
        ) from None
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
    options = _object(params.get("options"), "params.options")
    simulator = _object(options.get("simulator"), "options.simulator")
    execution = _object(options.get("execution"), "options.execution")

    default_shots = options.get("default_shots")
    if default_shots is not None:
        default_shots = _check_shots("options.default_shots", default_shots, shots_cap)
    default_precision = options.get("default_precision")
    if default_precision is not None:
        default_precision = _check_precision("options.default_precision", default_precision)

    seed = simulator.get("seed_simulator")
    if seed is not None and (
        not isinstance(seed, Integral)
        or isinstance(seed, bool)
        or not -(2**63) <= int(seed) < 2**63  # what Aer takes (a 64-bit integer)
    ):
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"options.simulator.seed_simulator must be a 64-bit integer, not {_short(seed)}.",
        )

    rep_delay_s = check_rep_delay("options.execution.rep_delay", execution.get("rep_delay"), limits)
    meas_type = execution.get("meas_type")
    if meas_type is not None and not (isinstance(meas_type, str) and meas_type == "classified"):
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"options.execution.meas_type {_short(meas_type)} is not supported by the emulator "
            "(only 'classified').",
        )

    noise_model = simulator.get("noise_model")
    if noise_model is not None:
        from qiskit_aer.noise import NoiseModel

        if not isinstance(noise_model, NoiseModel):
            raise JobInputError(
                ErrorCode.VALIDATION,
                "options.simulator.noise_model is not a decodable Aer NoiseModel.",
            )

    ignored = [k for k in _IGNORED_OPTIONS if _given(options.get(k))]
    ignored += [
        f"simulator.{k}" for k in ("coupling_map", "basis_gates") if _given(simulator.get(k))
    ]
    level = params.get("resilience_level")
    if program_id == "estimator" and _given(level) and not (_is_number(level) and level == 0):
        ignored.append("resilience_level")
    return {
        "default_shots": default_shots,
        "default_precision": default_precision,
        "seed": int(seed) if seed is not None else None,
        "rep_delay_s": rep_delay_s,
        "noise_model": noise_model,
        "ignored": ignored,
        "mitigation": _mitigation_asked(params, options, program_id),
    }


def _mitigation_asked(
    params: dict[str, Any], options: dict[str, Any], program_id: str
) -> list[str]:
    """The error-suppression and mitigation the job asked for, which the legacy programs of the
    emulator do not apply (each entry names the option and what it asked for)."""
    asked = []
    # The official client sends resilience_level only when the user set it; IBM's server then
    # applies its default, 1.
    level = params.get("resilience_level", 1)
    if (
        program_id == "estimator"
        and isinstance(level, Integral)
        and not isinstance(level, bool)
        and int(level) >= 1
    ):
        what = {1: "TREX measurement mitigation", 2: "TREX and ZNE"}.get(int(level), "mitigation")
        default = "" if "resilience_level" in params else ", IBM's default"
        asked.append(f"resilience_level={int(level)} ({what}{default})")
    # (nothing here is tested for truth but dicts: a decoded option can be an ndarray)
    resilience = options.get("resilience")
    if isinstance(resilience, dict):
        asked += [
            f"resilience.{k}"
            for k in ("measure_mitigation", "zne_mitigation", "pec_mitigation")
            if resilience.get(k) is True
        ]
    twirling = options.get("twirling")
    if isinstance(twirling, dict):
        asked += [
            f"twirling.{k}" for k in ("enable_gates", "enable_measure") if twirling.get(k) is True
        ]
    dd = options.get("dynamical_decoupling")
    if isinstance(dd, dict) and dd.get("enable") is True:
        asked.append("dynamical_decoupling.enable")
    return asked


def mitigation_note(program_id: str, asked: list[str]) -> str:
    """The warning a job gets when it asked for mitigation the legacy program does not apply."""
    return (
        f"Options not applied by the emulator's legacy '{program_id}' program (accepted and "
        f"ignored; results are unmitigated): {', '.join(asked)}. The executor-based primitives "
        "(qiskit_ibm_runtime.executor_estimator.Estimator, executor_sampler.SamplerV2) apply "
        "twirling, dynamical decoupling and error mitigation on the client, and run on the "
        "emulator."
    )


def check_rep_delay(where: str, rep_delay: Any, limits: DeviceLimits) -> float:
    """``rep_delay`` (seconds, ``None`` for the device's default) checked against the device's
    range; raises :class:`JobInputError` when it is not a number or out of range."""
    if rep_delay is None:
        return limits.default_rep_delay_s
    if (
        not isinstance(rep_delay, Real)
        or isinstance(rep_delay, bool)
        or not math.isfinite(rep_delay)
    ):
        raise JobInputError(ErrorCode.VALIDATION, f"{where} must be a number, not {rep_delay!r}.")
    rep_delay_s = float(rep_delay)
    rng = limits.rep_delay_range_s
    lo, hi = rng if rng is not None else (0.0, math.inf)
    if not lo - 1e-12 <= rep_delay_s <= hi + 1e-12:
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"{where} {rep_delay_s:g} s is outside the device's range "
            f"[{lo:g}, {hi:g}] s ({lo * 1e6:g}-{hi * 1e6:g} µs).",
        )
    return rep_delay_s


def _object(value: Any, where: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, ``{}`` if absent. (A decoded ``params`` can hold any
    type here, ndarrays included, whose truth value raises: nothing is tested for truth.)"""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JobInputError(
            ErrorCode.VALIDATION, f"{where} must be an object, not {type(value).__name__}."
        )
    return value


def _given(value: Any) -> bool:
    """Whether an option was set: anything but None, ``{}`` and ``[]``."""
    return value is not None and not (isinstance(value, (dict, list)) and not value)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_shots(where: str, shots: Any, cap: int) -> int:
    if not isinstance(shots, Integral) or isinstance(shots, bool):
        raise JobInputError(
            ErrorCode.VALIDATION, f"{where}: shots must be an integer, not {shots!r}."
        )
    if not 1 <= int(shots) <= cap:
        raise JobInputError(
            ErrorCode.VALIDATION, f"{where}: shots must be between 1 and {cap}, not {shots}."
        )
    return int(shots)


def _check_precision(where: str, precision: Any) -> float:
    if (
        not isinstance(precision, Real)
        or isinstance(precision, bool)
        or not math.isfinite(precision)
        or precision <= 0
    ):
        raise JobInputError(
            ErrorCode.VALIDATION, f"{where}: precision must be a number > 0, not {precision!r}."
        )
    return float(precision)


def _pub_items(i: int, raw: Any, sizes: tuple[int, int], form: str) -> list[Any]:
    from qiskit import QuantumCircuit

    if not isinstance(raw, (list, tuple)) or not sizes[0] <= len(raw) <= sizes[1]:
        raise JobInputError(ErrorCode.VALIDATION, f"pubs[{i}] must be a list {form}.")
    if not isinstance(raw[0], QuantumCircuit):
        raise JobInputError(
            ErrorCode.VALIDATION, f"pubs[{i}][0] must be a QPY-encoded QuantumCircuit."
        )
    return list(raw) + [None] * (sizes[1] - len(raw))


def _finite_array(i: int, values: Any) -> Any:
    """``values`` as a float ndarray of finite numbers (Aer cannot bind NaN or infinity)."""
    import numpy as np

    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError, OverflowError):
        raise JobInputError(
            ErrorCode.VALIDATION, f"pubs[{i}]: parameter_values must be an array of numbers."
        ) from None
    if not np.isfinite(array).all():
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"pubs[{i}]: parameter_values must be finite numbers; found NaN or infinity.",
        )
    return array


def _check_values(i: int, circuit: QuantumCircuit, values: Any) -> None:
    """A clearer message than qiskit's for parameter values that do not fit the circuit."""
    from qiskit.primitives.containers.bindings_array import BindingsArray

    if values is None:
        return
    if isinstance(values, (dict, BindingsArray)):
        # a mapping (qiskit checks its keys and shapes): only the numbers are checked here
        mapping = values.data if isinstance(values, BindingsArray) else values
        for value in mapping.values():
            _finite_array(i, value)
        try:
            shape = BindingsArray.coerce(values).shape
        except (TypeError, ValueError):
            return  # qiskit says what is wrong when the PUB is built
        _no_parameter_sets(i, shape)
        return
    array = _finite_array(i, values)
    num = circuit.num_parameters
    if num == 0 and array.ndim <= 1 and array.size == 0:
        return
    if array.ndim >= 1:
        _no_parameter_sets(i, array.shape[:-1])
    if array.ndim == 0 or array.shape[-1] != num:
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"pubs[{i}]: the circuit has {num} parameters but parameter_values has shape "
            f"{array.shape}; expected shape (*pub_shape, {num}).",
        )


def _no_parameter_sets(i: int, pub_shape: tuple[int, ...]) -> None:
    """Refuse parameter values that bind no parameter set (a PUB shape with a zero in it, such
    as values of shape ``(0, 1)``): there is nothing to run, and the stages after this one
    would each have to make sense of an empty PUB (they failed as the emulator's fault)."""
    if 0 in pub_shape:
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"pubs[{i}]: the parameter values bind no parameter set (PUB shape {pub_shape}); "
            "a PUB must bind at least one.",
        )


def _shots_for_precision(i: int, precision: float, cap: int) -> int:
    """IBM's shots for ``precision``, refused beyond ``cap``; safe for any positive float (a
    precision of 1e308 overflows ``precision**2``, one of 1e-200 underflows it to zero)."""
    if precision >= 1.0:
        return 1
    try:
        shots = estimation.shots_for_precision(precision)
    except (OverflowError, ZeroDivisionError):
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"pubs[{i}]: precision {precision:g} needs more shots than the maximum of {cap}.",
        ) from None
    if shots > cap:
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"pubs[{i}]: precision {precision:g} needs {shots} shots, more than the maximum of "
            f"{cap}.",
        )
    return shots


def _sampler_pub(i: int, raw: Any, default_shots: int | None, cap: int) -> SamplerPub:
    from qiskit.primitives.containers.sampler_pub import SamplerPub

    circuit, values, shots = _pub_items(i, raw, (1, 3), "[circuit, parameter_values, shots]")
    _check_values(i, circuit, values)
    if shots is None:
        shots = default_shots or DEFAULT_SHOTS
    shots = _check_shots(f"pubs[{i}]", shots, cap)
    try:
        pub = SamplerPub.coerce((circuit, values, shots))
    except (ValueError, TypeError) as exc:
        raise JobInputError(ErrorCode.VALIDATION, f"pubs[{i}]: {exc}") from None
    _check_rzz_angles(i, pub)
    return pub


def _estimator_pub(i: int, raw: Any, opts: dict[str, Any], cap: int) -> tuple[Any, int, float]:
    """The coerced EstimatorPub, its shots and its reported target precision."""
    from qiskit.primitives.containers.estimator_pub import EstimatorPub

    circuit, observables, values, precision = _pub_items(
        i, raw, (2, 4), "[circuit, observables, parameter_values, precision]"
    )
    _check_values(i, circuit, values)
    if precision is not None:
        precision = _check_precision(f"pubs[{i}]", precision)
        shots = _shots_for_precision(i, precision, cap)
    elif opts["default_shots"] is not None:
        # IBM: options.default_shots, when set, overrides default_precision.
        shots = opts["default_shots"]
        precision = 1.0 / math.sqrt(shots)
    else:
        precision = opts["default_precision"] or DEFAULT_PRECISION
        shots = _shots_for_precision(i, precision, cap)
    try:
        pub = EstimatorPub.coerce((circuit, observables, values, precision))
    except (ValueError, TypeError, KeyError) as exc:
        raise JobInputError(ErrorCode.VALIDATION, f"pubs[{i}]: {exc}") from None
    _check_rzz_angles(i, pub)
    return pub, shots, precision


def _check_rzz_angles(i: int, pub: Any) -> None:
    """IBM calibrates the fractional ``rzz`` gate for angles in [0, π/2] only, bound parameter
    values included; the official client checks this before sending, so the same check (its
    own function) refuses what other clients send. A circuit without ``rzz`` passes it
    whatever its values: that is known once per circuit, and its jobs skip the official walk
    over the instructions (which builds each one's Python operation)."""
    from qiskit_ibm_runtime.utils.utils import is_valid_rzz_pub

    circuit = pub.circuit
    if not derived(circuit, "has rzz", lambda: _has_rzz(circuit)):
        return
    if message := is_valid_rzz_pub(pub):
        raise JobInputError(ErrorCode.VALIDATION, f"pubs[{i}]: {message}")


def _has_rzz(circuit: QuantumCircuit) -> bool:
    """Whether ``circuit`` has an ``rzz`` gate, control-flow blocks included (where the
    official check looks too)."""
    from qiskit.circuit import CONTROL_FLOW_OP_NAMES, ControlFlowOp

    ops = circuit.count_ops()
    if "rzz" in ops:
        return True
    if CONTROL_FLOW_OP_NAMES.isdisjoint(ops):
        return False
    return any(
        _has_rzz(block)
        for inst in circuit.data
        if isinstance(inst.operation, ControlFlowOp)
        for block in inst.operation.blocks
    )


# ---------------------------------------------------------------------------------------------
# The ISA check
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
