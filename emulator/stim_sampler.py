"""Clifford circuits with Pauli noise, sampled with Stim.

Why Stim: a Clifford circuit's state is a stabilizer tableau, and Pauli noise only flips signs,
so Stim samples a 156-qubit noisy GHZ circuit in milliseconds where Aer's stabilizer method with
the same Pauli noise takes half a minute (its per-shot Python-side overhead and noise sampling),
and a state vector cannot hold it at all.

A circuit is Clifford here when, after binding, every gate's angles are multiples of π/2 (within
:data:`ANGLE_TOLERANCE`, then rounded, as IBM's local executor rounds them with
``_round_to_clifford``) and its matrix is a Clifford operation; measurements, resets, barriers
and delays are allowed, control flow is not. Each gate becomes the Stim gates of its tableau
(``stim.Tableau.from_unitary_matrix``, checked against the matrix, cached per gate), followed by
the instruction's Pauli channel from :class:`emulator.noise.PauliNoise`; a measurement becomes
``M(p)`` with the qubit's twirled readout flip probability.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import stim
    from qiskit import QuantumCircuit
    from qiskit.circuit import Instruction
    from qiskit.primitives.containers import DataBin
    from qiskit.primitives.containers.sampler_pub import SamplerPub

    from .noise import PauliNoise

__all__ = ["ANGLE_TOLERANCE", "is_clifford", "pub_is_clifford", "sample_pub", "to_stim"]

#: How far (in units of π/2) an angle may be from a multiple of π/2 and still count as one.
ANGLE_TOLERANCE = 1e-6

#: Instructions that are not gates but that Stim runs.
_NON_GATES = frozenset({"measure", "reset", "barrier", "delay"})

StimOps = tuple[tuple[str, tuple[int, ...]], ...]


def _rounded_params(op: Instruction) -> tuple[Any, ...] | None:
    """``op``'s float parameters as multiples ``k`` of π/2, or ``None`` when one is not."""
    out: list[Any] = []
    for p in op.params:
        if isinstance(p, float | int) and not isinstance(p, bool):
            k = float(p) / (math.pi / 2)
            if abs(k - round(k)) > ANGLE_TOLERANCE:
                return None
            out.append(("k", round(k) % 4 if op.name in _PERIOD_2PI else round(k)))
        elif isinstance(p, np.ndarray | str):
            return ("opaque",)  # a matrix or a label: checked by its unitary, not cached
        else:  # an unbound parameter
            return None
    return tuple(out)


#: Rotation gates whose angle only matters modulo 2π up to a global phase.
_PERIOD_2PI = frozenset({"rz", "p", "u1", "rx", "ry", "rzz", "rxx", "ryy", "rzx"})


def clifford_ops(op: Instruction) -> StimOps | None:
    """The Stim gates (name, targets local to ``op``) equal to ``op`` up to a global phase, or
    ``None`` when ``op`` is not a Clifford gate."""
    if op.name in _NON_GATES or getattr(op, "blocks", None) or op.num_clbits:
        return None
    params = _rounded_params(op)
    if params is None:
        return None
    if params == ("opaque",):
        return _tableau_ops(op)
    key = (op.name, op.num_qubits, params)
    if key not in _OPS:
        _OPS[key] = _gate_ops(op, params)
    return _OPS[key]


#: Stim gates per (name, width, angles as multiples of π/2); ``None`` for non-Clifford gates.
_OPS: dict[tuple[str, int, tuple[Any, ...]], StimOps | None] = {}


def _gate_ops(op: Instruction, params: tuple[Any, ...]) -> StimOps | None:
    if op.name in _FIXED:
        return _FIXED[op.name]
    if op.name in ("rz", "p", "u1"):
        return _RZ[params[0][1]]
    bound = op.to_mutable()
    bound.params = [k * math.pi / 2 for _, k in params]
    return _tableau_ops(bound)


_RZ: tuple[StimOps, ...] = ((), (("S", (0,)),), (("Z", (0,)),), (("S_DAG", (0,)),))

_FIXED: dict[str, StimOps] = {
    "id": (),
    "x": (("X", (0,)),),
    "y": (("Y", (0,)),),
    "z": (("Z", (0,)),),
    "h": (("H", (0,)),),
    "s": (("S", (0,)),),
    "sdg": (("S_DAG", (0,)),),
    "sx": (("SQRT_X", (0,)),),
    "sxdg": (("SQRT_X_DAG", (0,)),),
    "cx": (("CX", (0, 1)),),
    "cy": (("CY", (0, 1)),),
    "cz": (("CZ", (0, 1)),),
    "swap": (("SWAP", (0, 1)),),
}


def _tableau_ops(op: Any) -> StimOps | None:
    import stim
    from qiskit.quantum_info import Operator

    try:
        matrix = Operator(op).data
        tableau = stim.Tableau.from_unitary_matrix(matrix, endian="little")
    except Exception:  # no matrix, or not a stabilizer operation
        return None
    # from_unitary_matrix does not reject every non-Clifford (it accepts rz(0.3)): compare.
    back = tableau.to_unitary_matrix(endian="little")
    overlap = abs(np.vdot(back.ravel(), matrix.ravel())) / matrix.shape[0]
    if not math.isclose(overlap, 1.0, abs_tol=1e-6):  # Stim computes in float32
        return None
    return tuple(
        (inst.name, tuple(t.value for t in inst.targets_copy()))
        for inst in tableau.to_circuit(method="elimination")
    )


def is_clifford(circuit: QuantumCircuit) -> bool:
    """Whether Stim can run the bound ``circuit`` (see the module docstring)."""
    for inst in circuit.data:
        op = inst.operation
        if op.name not in _NON_GATES and clifford_ops(op) is None:
            return False
    return True


def pub_is_clifford(pub: SamplerPub) -> bool:
    """Whether every parameter set of ``pub`` binds its circuit to a Clifford circuit."""
    circuit = pub.circuit
    if not circuit.parameters:
        return is_clifford(circuit)
    values = pub.parameter_values
    return all(is_clifford(values.bind(circuit, idx)) for idx in np.ndindex(values.shape))


def to_stim(circuit: QuantumCircuit, noise: PauliNoise | None) -> tuple[stim.Circuit, list[int]]:
    """The Stim circuit of a bound Clifford ``circuit``, with ``noise`` on its first
    ``len(noise.physical)`` qubits, and the clbit each measurement record writes.

    Built as Stim program text and parsed once: ``stim.Circuit.append`` costs about 0.2 ms a
    call, which for a 156-qubit circuit with its noise channels was most of the job.

    Raises:
        ValueError: the circuit is not Clifford (check with :func:`is_clifford` first).
    """
    import stim

    from .noise import delay_seconds

    lines: list[str] = []
    qindex = {q: i for i, q in enumerate(circuit.qubits)}
    cindex = {c: i for i, c in enumerate(circuit.clbits)}
    records: list[int] = []
    noisy = len(noise.physical) if noise is not None else 0
    memo = noise.stim_text if noise is not None else {}
    for inst in circuit.data:
        op = inst.operation
        qubits = tuple(qindex[q] for q in inst.qubits)
        name = op.name
        if name == "barrier":
            continue
        if name == "measure":
            q = qubits[0]
            p = noise.readout[q] if noise is not None and q < noisy else 0.0
            lines.append(f"M({p!r}) {q}" if p > 0 else f"M {q}")
            records.append(cindex[inst.clbits[0]])
        elif name == "reset":
            lines.append(f"R {qubits[0]}")
        elif name == "delay":
            if noise is not None and qubits[0] < noisy:
                seconds = delay_seconds(op, noise.dt)
                if seconds > 0:
                    lines.append(_channel_text(noise.delay(qubits[0], seconds), qubits))
            continue
        else:
            ops = clifford_ops(op)
            if ops is None:
                raise ValueError(f"{name}{op.params} is not a Clifford gate")
            for gate, targets in ops:
                lines.append(gate + " " + " ".join(str(qubits[t]) for t in targets))
        if noisy and all(q < noisy for q in qubits):
            key = (name, qubits)
            text = memo.get(key)
            if text is None:
                probs = noise.gates.get(name, {}).get(qubits)  # type: ignore[union-attr]
                text = memo[key] = _channel_text(probs, qubits) if probs is not None else ""
            if text:
                lines.append(text)
    return stim.Circuit("\n".join(lines)), records


def _channel_text(probs: np.ndarray, qubits: tuple[int, ...]) -> str:
    if probs[0] >= 1.0:
        return ""
    if len(qubits) == 1:
        args = [float(p) for p in probs[1:]]
        gate = "PAULI_CHANNEL_1"
    else:
        # Stim's order: p_AB for A on the first target, B on the second, A major; our index
        # puts the channel's qubit 0 (the first target) in the low base-4 digit.
        args = [float(probs[a + 4 * b]) for a in range(4) for b in range(4) if a or b]
        gate = "PAULI_CHANNEL_2"
    return f"{gate}({','.join(repr(a) for a in args)}) {' '.join(map(str, qubits))}"


def sample_pub(pub: SamplerPub, noise: PauliNoise | None, seed: int | None) -> DataBin:
    """Sample a Clifford ``pub`` with Stim: a ``DataBin`` with one ``BitArray`` per classical
    register, shaped like the PUB, as Aer's ``SamplerV2`` returns it."""
    from qiskit.primitives.containers import BitArray, DataBin

    circuit, shots = pub.circuit, int(pub.shots)
    values = pub.parameter_values
    shape = tuple(values.shape)
    regs = [(creg.name, [circuit.find_bit(b).index for b in creg]) for creg in circuit.cregs]
    arrays: dict[str, list[np.ndarray]] = {name: [] for name, _ in regs}
    rng = np.random.default_rng(seed)
    for idx in np.ndindex(shape):
        bound = values.bind(circuit, idx) if circuit.parameters else circuit
        stim_circuit, records = to_stim(bound, noise)
        sampler = stim_circuit.compile_sampler(seed=int(rng.integers(2**63)))
        samples = sampler.sample(shots) if records else np.zeros((shots, 0), dtype=bool)
        bits = np.zeros((shots, circuit.num_clbits), dtype=bool)
        for record, clbit in enumerate(records):  # a later measurement overwrites its clbit
            bits[:, clbit] = samples[:, record]
        for name, clbits in regs:
            arrays[name].append(BitArray.from_bool_array(bits[:, clbits], order="little").array)
    meas = {
        name: BitArray(np.stack(arrays[name]).reshape(shape + arrays[name][0].shape), len(clbits))
        for name, clbits in regs
    }
    return DataBin(**meas, shape=shape)
