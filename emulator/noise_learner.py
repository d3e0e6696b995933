"""The ``noise-learner`` program (``NoiseLearnerV3``, params schema v0.1-v0.3).

IBM's noise learner runs learning circuits on the QPU and fits, per twirled boxed layer, a sparse
Pauli-Lindblad model ``E = exp(Σ_k λ_k D[P_k])``. The emulator knows its devices' noise models,
so it answers from them instead, deterministically (no fit, no random numbers):

1. The layer's channel is what the device's Aer noise model (``NoiseModel.from_backend``: a
   depolarizing error plus thermal relaxation per gate, a readout error per qubit) applies when
   the twirled box runs: each qubit's dressing, two ``sx`` gates (the ``rzsx`` decomposition:
   ``rz`` is virtual and noiseless), then each gate of the undressed box.
2. Pauli twirling turns each of those gate errors into a Pauli channel: its Pauli fidelities
   ``f_Q`` are the diagonal of its Pauli transfer matrix.
3. A Pauli channel on ``n`` qubits is exactly a Pauli-Lindblad map with one generator per
   non-identity Pauli ``P`` of its support: ``-½ ln f_Q = Σ_{P anticommuting with Q} λ_P``
   (arXiv:2201.09866, eq. 4), a square invertible system for ``n`` = 1 or 2. Channels on
   different gates compose by adding the rates of equal generators. Rates that come out
   negative (a twirled channel that is not a Pauli-Lindblad map with positive rates) are set to
   0, as IBM's non-negative fit would.
4. The result: weight-1 generators on every qubit of the box and weight-2 generators on each
   two-qubit gate's pair, indexed in the box's physical-qubit order (ascending: the convention of
   ``InsertNoisePass`` and ``qiskit_mitigation``), with ``rates_std`` 0.

Measurement boxes (the TREX protocol) get one ``X`` generator per qubit with
``λ = -½ ln(1 - 2p)``, ``p`` the qubit's symmetrized readout flip probability
``(P(1|0) + P(0|1)) / 2`` (what measurement twirling makes of a readout error).

The model is the device's whether or not the emulator simulates noise (``--noise``): with noise
off, PEC and PEA correct for noise that is not there, by a factor close to 1.

The job holds the QPU for the time IBM's learning circuits would take (:func:`_learning_time`);
a dry run gets random (seeded) rates on the same generators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from aioruntime.protocol import ErrorCode

from .backends import device_limits, device_noise_model_for, device_target
from .timing import TimingParams, quantum_seconds, subjob_count
from .validation import JobInputError, check_rep_delay

if TYPE_CHECKING:
    from qiskit.circuit import CircuitInstruction
    from qiskit.transpiler import Target
    from qiskit_aer.noise import NoiseModel

    from .classical import PreparedJob, Sampled

__all__ = [
    "LayerModel",
    "NoiseLearnerPlan",
    "check_request",
    "finish",
    "layer_model",
    "prepare",
    "schema_versions",
]

#: Measurement bases of the Pauli-Lindblad learning circuits per layer-pair depth (IBM's
#: protocol measures in the 9 two-qubit bases).
LEARNING_BASES = 9


@dataclass(frozen=True, slots=True)
class LayerModel:
    """The Pauli-Lindblad model of one layer."""

    protocol: str
    """``"lindblad"`` or ``"trex"``."""
    num_qubits: int
    generators: tuple[tuple[str, tuple[int, ...]], ...]
    """One sparse Pauli per generator: ``(label, indices)``, ``label[i]`` on ``indices[i]``."""
    rates: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class NoiseLearnerPlan:
    """``PreparedJob.post == [NoiseLearnerPlan]``."""

    schema_version: str
    layers: tuple[LayerModel, ...]
    layer_pair_depths: tuple[int, ...]


def _converters() -> dict[str, Any]:
    from qiskit_ibm_runtime.noise_learner_v3.params_converters import (
        NOISE_LEARNER_V3_PARAMS_CONVERTERS,
    )

    return dict(NOISE_LEARNER_V3_PARAMS_CONVERTERS)


def schema_versions() -> tuple[str, ...]:
    """The params schema versions the installed client's converters know, sorted (workers only:
    see :func:`emulator.executor.schema_versions`)."""
    return tuple(sorted(_converters()))


def check_request(params: dict[str, Any], known: Sequence[str]) -> None:
    """Refuse a noise-learner request whose ``schema_version`` is not in ``known``
    (:func:`schema_versions`; answered 400)."""
    version = params.get("schema_version")
    if version not in known:
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"Unknown noise-learner params schema_version {version!r}; the emulator accepts "
            f"{', '.join(known)} (NoiseLearnerV3; the NoiseLearner of version 2 is not served).",
        )


# ---------------------------------------------------------------------------------------------
# Pre-processing
# ---------------------------------------------------------------------------------------------


def prepare(params: dict[str, Any], device_source: str, *, timing: TimingParams) -> PreparedJob:
    """Decode the instructions with the client's converter for the schema version, validate each
    with the client's own ``validate_instruction``, and derive each layer's model.

    Raises:
        JobInputError: ``VALIDATION`` for params that do not decode and for instructions the
            noise learner cannot learn (no twirled box, non-ISA content, qubits off the device).
    """
    from pydantic import ValidationError
    from qiskit_ibm_runtime.noise_learner_v3.validation import validate_instruction

    from .classical import PreparedJob

    check_request(params, schema_versions())
    version = params["schema_version"]
    converter = _converters()[version]
    try:
        instructions, options = converter.decoder(converter.model.model_validate(params))
    except (ValidationError, ValueError, TypeError, KeyError) as exc:
        raise JobInputError(
            ErrorCode.VALIDATION, f"Cannot decode the noise-learner params: {exc}"
        ) from None
    except Exception as exc:  # QPY and friends: any failure is the input's fault
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"Cannot decode the noise-learner params: {type(exc).__name__}: {exc}",
        ) from None
    if not instructions:
        raise JobInputError(ErrorCode.VALIDATION, "The noise learner needs at least one layer.")
    target = device_target(device_source)
    limits = device_limits(device_source)
    layers = []
    for i, instruction in enumerate(instructions):
        try:
            validate_instruction(instruction, target)
        except Exception as exc:  # IBMInputValueError: the client's own checks
            raise JobInputError(ErrorCode.VALIDATION, f"instructions[{i}]: {exc}") from None
        layers.append(layer_model(device_source, instruction))
    rep_delay_s = check_rep_delay("options.rep_delay", options.execution.rep_delay, limits)
    depths = tuple(int(d) for d in options.layer_pair_depths)
    items, circuits = _learning_time(
        target,
        instructions,
        layers,
        depths,
        num_randomizations=int(options.num_randomizations),
        shots=int(options.shots_per_randomization),
    )
    subjobs = subjob_count(circuits, limits.max_experiments or timing.max_circuits_per_subjob)
    return PreparedJob(
        program_id="noise-learner",
        device_source=device_source,
        sampler_pubs=[],
        seed=None,
        quantum_seconds=quantum_seconds(
            items, rep_delay_s=rep_delay_s, params=timing, subjobs=subjobs
        ),
        num_circuits=circuits,
        executions=sum(n for _, n in items),
        post=[NoiseLearnerPlan(version, tuple(layers), depths)],
        metadata={"pub_qubits": [], "physical_qubits": (), "rep_delay_s": rep_delay_s},
    )


def _physical(instruction: CircuitInstruction, num_qubits: int) -> list[int]:
    """Physical index of each qubit of ``instruction`` (qubits of the register ``q`` of the
    device, as ``validate_instruction`` requires)."""
    from qiskit.circuit import QuantumRegister

    index = {q: k for k, q in enumerate(QuantumRegister(num_qubits, "q"))}
    return [index[q] for q in instruction.qubits]


def layer_model(device_source: str, instruction: CircuitInstruction) -> LayerModel:
    """The Pauli-Lindblad model of one boxed layer on the device (see the module docstring)."""
    from qiskit_ibm_runtime.noise_learner_v3.find_learning_protocol import (
        find_learning_protocol,
    )
    from qiskit_ibm_runtime.noise_learner_v3.learning_protocol import LearningProtocol
    from samplomatic.utils import undress_box

    target = device_target(device_source)
    physical = _physical(instruction, target.num_qubits)
    order = tuple(sorted(physical))
    if find_learning_protocol(instruction) == LearningProtocol.TREX:
        # The noise model's readout error is the target's symmetric measurement error
        # (Aer's basic_device_readout_errors): read it there, without building a model of a
        # device-wide measurement box.
        trex: dict[tuple[str, tuple[int, ...]], float] = {
            ("X", (k,)): _flip_rate(_measure_error(target, q)) for k, q in enumerate(order)
        }
        return _finish_layer("trex", len(order), trex)
    local = {p: k for k, p in enumerate(order)}  # physical qubit → generator index
    model = device_noise_model_for(device_source, order)  # renumbered like `local`
    box = instruction.operation
    box_to_local = {
        q: local[p] for q, p in zip(box.body.qubits, physical, strict=True)
    }  # box qubit → generator index
    rates: dict[tuple[str, tuple[int, ...]], float] = {}

    def add(error: Any, qubits: tuple[int, ...]) -> None:
        for (label, sub), rate in _channel_rates(error).items():
            key = (label, tuple(qubits[i] for i in sub))
            rates[key] = rates.get(key, 0.0) + rate

    for k in range(len(order)):
        for _ in range(2):  # the dressing: rz sx rz sx rz per qubit
            if (error := _gate_error(model, "sx", (k,))) is not None:
                add(error, (k,))
        for label in ("X", "Y", "Z"):
            rates.setdefault((label, (k,)), 0.0)
    for inst in undress_box(box).body:
        if inst.operation.name in ("barrier", "delay"):
            continue
        qubits = tuple(box_to_local[q] for q in inst.qubits)
        if (error := _gate_error(model, inst.operation.name, qubits)) is not None:
            add(error, qubits)
    return _finish_layer("lindblad", len(order), rates)


def _finish_layer(
    protocol: str, num_qubits: int, rates: dict[tuple[str, tuple[int, ...]], float]
) -> LayerModel:
    keys = sorted(rates, key=lambda k: (len(k[1]), k[1], k[0]))
    return LayerModel(protocol, num_qubits, tuple(keys), tuple(max(0.0, rates[k]) for k in keys))


def _gate_error(model: NoiseModel, name: str, qubits: tuple[int, ...]) -> Any:
    # NoiseModel has no public per-qubit accessor (see backends.restrict_noise_model).
    per_gate = model._local_quantum_errors.get(name, {})
    return per_gate.get(qubits) or model._default_quantum_errors.get(name)


def _readout_rate(model: NoiseModel, qubit: int) -> float:
    """The TREX rate of a qubit's readout error in ``model``."""
    error = model._local_readout_errors.get((qubit,)) or model._default_readout_error
    if error is None:
        return 0.0
    probs = np.asarray(error.probabilities)
    return _flip_rate((probs[0, 1] + probs[1, 0]) / 2)


def _measure_error(target: Target, qubit: int) -> float:
    props = target["measure"].get((qubit,)) if "measure" in target.operation_names else None
    return float(props.error) if props is not None and props.error else 0.0


def _flip_rate(flip: float) -> float:
    """``λ`` of the generator ``X`` whose channel flips the bit with probability ``flip``:
    ``flip = (1 - exp(-2λ)) / 2``."""
    return float(-0.5 * math.log(max(1e-300, 1 - 2 * flip)))


@cache
def _anticommutation(n: int) -> tuple[tuple[str, ...], np.ndarray]:
    """Labels of the non-identity Paulis on ``n`` qubits (qiskit order) and the 0/1 matrix
    ``M[Q, P] = 1`` when ``Q`` and ``P`` anticommute."""
    from qiskit.quantum_info import pauli_basis

    paulis = pauli_basis(n)[1:]
    labels = tuple(paulis.to_labels())
    anti = np.array([[0.0 if q.commutes(p) else 1.0 for p in paulis] for q in paulis])
    return labels, anti


def _channel_rates(error: Any) -> dict[tuple[str, tuple[int, ...]], float]:
    """The Pauli-Lindblad rates of the Pauli twirl of an Aer ``QuantumError`` on ``n`` qubits:
    ``{(sparse label, indices into the error's qubits): rate}``."""
    from qiskit.quantum_info import PTM

    fidelities = np.diag(PTM(error.to_quantumchannel()).data).real[1:]
    labels, anti = _anticommutation(error.num_qubits)
    rates = np.linalg.solve(anti, -0.5 * np.log(np.clip(fidelities, 1e-300, None)))
    out = {}
    for label, rate in zip(labels, rates, strict=True):
        # qiskit labels are little-endian: character -1 - i acts on qubit i
        sparse = [(c, i) for i, c in enumerate(reversed(label)) if c != "I"]
        out["".join(c for c, _ in sparse), tuple(i for _, i in sparse)] = float(rate)
    return out


def _learning_time(
    target: Target,
    instructions: list[CircuitInstruction],
    layers: list[LayerModel],
    depths: tuple[int, ...],
    *,
    num_randomizations: int,
    shots: int,
) -> tuple[list[tuple[float, int]], int]:
    """What IBM's learning circuits would cost: ``(duration, executions)`` per circuit family,
    and the number of circuits. Pauli-Lindblad layers: for each layer-pair depth ``d``, 9
    measurement bases x ``num_randomizations`` circuits of ``2d`` layers and a readout; TREX
    layers: ``num_randomizations`` readout circuits."""
    items = []
    circuits = 0
    for instruction, layer in zip(instructions, layers, strict=True):
        physical = _physical(instruction, target.num_qubits)
        readout = max(_duration(target, "measure", (q,)) for q in physical)
        if layer.protocol == "trex":
            items.append((readout, num_randomizations * shots))
            circuits += num_randomizations
            continue
        dressing = 2 * max(_duration(target, "sx", (q,)) for q in physical)
        body_circuit = instruction.operation.body
        body = max(
            (
                _duration(
                    target,
                    op.operation.name,
                    tuple(physical[body_circuit.find_bit(q).index] for q in op.qubits),
                )
                for op in body_circuit
            ),
            default=0.0,
        )
        for d in depths:
            items.append(
                (2 * d * (dressing + body) + readout, LEARNING_BASES * num_randomizations * shots)
            )
            circuits += LEARNING_BASES * num_randomizations
    return items, circuits


def _duration(target: Target, name: str, qubits: tuple[int, ...]) -> float:
    if name not in target.operation_names:
        return 0.0
    props = target[name].get(qubits)
    return float(props.duration) if props is not None and props.duration else 0.0


# ---------------------------------------------------------------------------------------------
# Post-processing
# ---------------------------------------------------------------------------------------------


def finish(prepared: PreparedJob, sampled: Sampled | None) -> str:
    """The JSON text of ``NoiseLearnerV3ResultsModel`` in the params' schema version, encoded by
    the client's own converter. ``sampled`` is ``None`` for a dry run: the rates are then
    random (seeded), on the same generators."""
    from qiskit.quantum_info import QubitSparsePauliList
    from qiskit_ibm_runtime.noise_learner_v3 import converters
    from qiskit_ibm_runtime.results.noise_learner_v3 import (
        NoiseLearnerV3Result,
        NoiseLearnerV3Results,
    )

    from .dry_run import mock_rng

    (plan,) = prepared.post
    rng = mock_rng(prepared) if sampled is None else None
    data = []
    for layer in plan.layers:
        rates = np.asarray(layer.rates)
        if rng is not None:
            rates = rng.uniform(0.0, 2e-3, size=len(rates))
        if layer.protocol == "trex":
            metadata: dict[str, Any] = {
                "learning_protocol": "trex",
                "post_selection": {"fraction_kept": 1.0, "success_rates": {}},
            }
        else:
            metadata = {
                "learning_protocol": "lindblad",
                "post_selection": {
                    "fraction_kept": dict.fromkeys(plan.layer_pair_depths, 1.0),
                    "success_rates": {d: {} for d in plan.layer_pair_depths},
                },
            }
        data.append(
            NoiseLearnerV3Result.from_generators(
                [
                    QubitSparsePauliList.from_sparse_list([(label, list(idx))], layer.num_qubits)
                    for label, idx in layer.generators
                ],
                rates,
                metadata=metadata,
            )
        )
    encode = getattr(
        converters, "noise_learner_v3_result_to_" + plan.schema_version[1:].replace(".", "_")
    )
    return str(encode(NoiseLearnerV3Results(data)).model_dump_json())
