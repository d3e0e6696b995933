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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .derived import derived

if TYPE_CHECKING:
    import stim
    from qiskit import QuantumCircuit
    from qiskit.circuit import Instruction
    from qiskit.primitives.containers import DataBin
    from qiskit.primitives.containers.sampler_pub import SamplerPub

    from .noise import PauliNoise

__all__ = [
    "ANGLE_TOLERANCE",
    "Program",
    "binds_to_clifford",
    "compile_circuit",
    "is_clifford",
    "noiseless_program",
    "non_clifford_qubits",
    "pub_is_clifford",
    "sample_pub",
    "to_stim",
]

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
    from qiskit.primitives.containers.sampler_pub import SamplerPub

    return pub_is_clifford(SamplerPub(circuit, validate=False))


def pub_is_clifford(pub: SamplerPub) -> bool:
    """Whether every parameter set of ``pub`` binds its circuit to a Clifford circuit.

    One pass over the circuit, then a vectorised check of the parametric gates' angles: a
    PUB with hundreds of parameter sets (an executor's twirls) costs little more than one.
    """
    return binds_to_clifford(compile_circuit(pub.circuit, None), pub)


def binds_to_clifford(program: Program | None, pub: SamplerPub) -> bool:
    """:func:`pub_is_clifford` with ``program``, the noiseless :func:`compile_circuit` of
    ``pub.circuit``, already compiled."""
    return program is not None and program.multiples(_rows(pub)) is not None


def to_stim(circuit: QuantumCircuit, noise: PauliNoise | None) -> tuple[stim.Circuit, list[int]]:
    """The Stim circuit of a bound Clifford ``circuit``, with ``noise`` on its first
    ``len(noise.physical)`` qubits, and the clbit each measurement record writes.

    Raises:
        ValueError: the circuit is not Clifford (check with :func:`is_clifford` first).
    """
    import stim

    program = compile_circuit(circuit, noise)
    if program is None or program.slots:
        raise ValueError("the circuit is not a bound Clifford circuit")
    return stim.Circuit("\n".join(program.pieces)), program.records


@dataclass(slots=True)
class _Slot:
    """A parametric gate: its Stim text depends on the parameter set."""

    piece: int
    op: Instruction
    qubits: tuple[int, ...]
    sources: list[tuple[str, Any]]
    """Per gate parameter: ``("col", i)``, column ``i`` of the parameter values;
    ``("const", x)``; or ``("expr", e)``, a ``ParameterExpression`` evaluated per set."""
    noise: str
    texts: dict[tuple[Any, ...], str] = field(default_factory=dict)


@dataclass(slots=True)
class Program:
    """A circuit as Stim text, compiled once; parametric gates are filled in per parameter set.

    Built as text and parsed by Stim once per parameter set: ``stim.Circuit.append`` costs
    about 0.2 ms a call, which for a 156-qubit circuit with its noise channels was most of the
    job.
    """

    pieces: list[str]
    slots: list[_Slot]
    records: list[int]
    """The clbit each measurement record writes."""
    columns: dict[Any, int]

    def multiples(self, rows: np.ndarray) -> list[np.ndarray] | None:
        """Per slot, its angles in multiples of π/2 for every row of parameter values, or
        ``None`` when some parameter set makes a gate non-Clifford."""
        out = [ks for ks in _all_multiples(self.slots, rows, self.columns) if ks is not None]
        return out if len(out) == len(self.slots) else None

    def text(self, multiples: list[np.ndarray], row: int) -> str:
        """The Stim program of parameter set ``row`` (``multiples`` from :meth:`multiples`)."""
        pieces = list(self.pieces)
        for slot, ks in zip(self.slots, multiples, strict=True):
            text = _slot_text(slot, tuple(ks[row].tolist()))  # made on first use
            if text is None:  # multiples() said every set is Clifford
                raise ValueError("the PUB is not a Clifford circuit")
            pieces[slot.piece] = text
        return "\n".join(pieces)


def _all_multiples(
    slots: Sequence[_Slot], rows: np.ndarray, columns: dict[Any, int]
) -> list[np.ndarray | None]:
    """Per slot, its angles in multiples of π/2 for every row of parameter values (shape
    ``(rows, parameters of the gate)``), or ``None`` when some row makes its gate
    non-Clifford. The slots whose one parameter is a column of the values (a twirled
    circuit's ``rz``: hundreds in a device-wide one) go through :func:`_column_gates`; one at a
    time, they were most of an executor job's simulation plan."""
    out: list[np.ndarray | None] = [None] * len(slots)
    simple = [i for i, s in enumerate(slots) if len(s.sources) == 1 and s.sources[0][0] == "col"]
    gates = [(slots[i].sources[0][1], slots[i].op) for i in simple]
    for i, ks in zip(simple, _column_gates(rows, gates), strict=True):
        out[i] = ks
    vectorised = set(simple)
    for i, slot in enumerate(slots):
        if i not in vectorised:
            out[i] = _slot_multiples(slot, rows, columns)
    return out


def _column_gates(
    rows: np.ndarray, gates: Sequence[tuple[int, Instruction]]
) -> list[np.ndarray | None]:
    """For gates whose one parameter is column ``c`` of ``rows`` (``(c, operation)``): per
    gate, its angle in multiples of π/2 for every row (shape ``(rows, 1)``), or ``None`` when
    some row makes it non-Clifford. One array operation for all of them, and one Stim lookup
    per gate kind (name, width) and multiple, not per gate."""
    out: list[np.ndarray | None] = [None] * len(gates)
    if not gates:
        return out
    k = rows[:, [c for c, _ in gates]] / (math.pi / 2)
    rounded = np.rint(k)
    near = np.all(np.abs(k - rounded) <= ANGLE_TOLERANCE, axis=0)
    ks_all = rounded.astype(np.int64)
    kinds: dict[tuple[str, int], list[int]] = {}
    for j, (_, op) in enumerate(gates):
        kinds.setdefault((op.name, op.num_qubits), []).append(j)
    for (name, _), members in kinds.items():
        ks = ks_all[:, members] % 4 if name in _PERIOD_2PI else ks_all[:, members]
        ok = near[members]
        op = gates[members[0]][1]
        for value in np.unique(ks):
            if _ops_of(op, (("k", int(value)),)) is None:
                ok &= ~np.any(ks == value, axis=0)
        for m, j in enumerate(members):
            if ok[m]:
                out[j] = ks[:, m : m + 1]
    return out


def _ops_of(op: Instruction, params: tuple[Any, ...]) -> StimOps | None:
    """:func:`_gate_ops` of ``op`` with ``params`` (multiples of π/2), cached."""
    key = (op.name, op.num_qubits, params)
    if key not in _OPS:
        _OPS[key] = _gate_ops(op, params)
    return _OPS[key]


def _slot_multiples(slot: _Slot, rows: np.ndarray, columns: dict[Any, int]) -> np.ndarray | None:
    """The slot's angles in multiples of π/2 for every row of parameter values, or ``None``
    when some row makes its gate non-Clifford."""
    angles = np.stack([_evaluate(src, rows, columns) for src in slot.sources], axis=-1)
    k = angles / (math.pi / 2)
    rounded = np.rint(k)
    if np.any(np.abs(k - rounded) > ANGLE_TOLERANCE):
        return None
    ks = rounded.astype(np.int64)
    if slot.op.name in _PERIOD_2PI:
        ks %= 4
    combos = {tuple(row) for row in ks.tolist()}
    return None if any(_slot_text(slot, combo) is None for combo in combos) else ks


def _evaluate(source: tuple[str, Any], rows: np.ndarray, columns: dict[Any, int]) -> np.ndarray:
    kind, value = source
    if kind == "col":
        return rows[:, value]
    if kind == "const":
        return np.full(len(rows), value)
    params = list(value.parameters)
    return np.array(
        [float(value.bind({p: row[columns[p]] for p in params}).numeric()) for row in rows]
    )


def _sources(op: Instruction, columns: dict[Any, int]) -> list[tuple[str, Any]] | None:
    """Where each parameter of the parametric gate ``op`` comes from (see :class:`_Slot`), or
    ``None`` when it cannot be Clifford (a block, a complex parameter)."""
    from qiskit.circuit import ParameterExpression

    if getattr(op, "blocks", None):
        return None
    sources: list[tuple[str, Any]] = []
    for p in op.params:
        if isinstance(p, ParameterExpression):
            sources.append(("col", columns[p]) if p in columns else ("expr", p))
        elif _is_real(p):
            sources.append(("const", float(p)))
        else:
            return None
    return sources


def non_clifford_qubits(circuit: QuantumCircuit, rows: np.ndarray) -> set[int] | None:
    """The qubits (indices in ``circuit.qubits``) that some instruction leaves non-Clifford for
    some parameter set of ``rows`` (one row per set, columns in ``circuit.parameters`` order),
    or ``None`` when Stim can run none of it (control flow). What is left, Stim can run for
    every set: the executor packs it into one circuit however wide (``plan_packs``).

    A gate whose one parameter is a column (a twirl's ``rz``) is checked with the others of
    its kind in one array operation, without building its Python operation. The pass over the
    instructions (what does not depend on ``rows``) is made once per circuit
    (:class:`_CliffordScan`): a repeated circuit's jobs check only their values."""
    scan = derived(circuit, "clifford scan", lambda: _CliffordScan.of(circuit))
    if scan is None:
        return None
    out = set(scan.fixed)
    for slot, ks in zip(scan.slots, _all_multiples(scan.slots, rows, scan.columns), strict=True):
        if ks is None:
            out.update(slot.qubits)
    gates = [(column, scan.kinds[kind]) for column, kind, _ in scan.simple]
    for (_, _, qubits), ks in zip(scan.simple, _column_gates(rows, gates), strict=True):
        if ks is None:
            out.update(qubits)
    return out


@dataclass(frozen=True, slots=True)
class _CliffordScan:
    """What :func:`non_clifford_qubits` reads from a circuit's instructions, whatever the
    parameter values."""

    columns: dict[Any, int]
    fixed: frozenset[int]
    """Qubits of gates that are never Clifford (a fixed ``t``, a complex parameter...)."""
    slots: list[_Slot]
    """Parametric gates checked per parameter set, one at a time or by kind."""
    simple: list[tuple[int, tuple[str, int], tuple[int, ...]]]
    """Gates whose one parameter is a column: ``(column, (name, width), qubits)``."""
    kinds: dict[tuple[str, int], Instruction]
    """One operation per kind of ``simple`` gate, for its Stim ops."""

    @classmethod
    def of(cls, circuit: QuantumCircuit) -> _CliffordScan | None:
        """``None`` when the circuit has control flow (Stim runs none of it)."""
        from qiskit.circuit import Parameter, ParameterExpression

        columns = {p: i for i, p in enumerate(circuit.parameters)}
        qindex = {q: i for i, q in enumerate(circuit.qubits)}
        fixed: set[int] = set()
        slots: list[_Slot] = []
        simple: list[tuple[int, tuple[str, int], tuple[int, ...]]] = []
        kinds: dict[tuple[str, int], Instruction] = {}
        for inst in circuit.data:
            name = inst.name
            if name in _NON_GATES:
                continue
            if inst.is_control_flow():
                return None
            qubits = tuple(qindex[q] for q in inst.qubits)
            params = inst.params
            if not params and name in _FIXED:
                continue
            if len(params) == 1 and isinstance(params[0], Parameter) and params[0] in columns:
                kind = (name, len(qubits))
                if kind not in kinds:
                    kinds[kind] = inst.operation
                simple.append((columns[params[0]], kind, qubits))
                continue
            op = inst.operation
            if any(isinstance(p, ParameterExpression) for p in op.params):
                sources = _sources(op, columns)
                if sources is None:
                    fixed.update(qubits)
                else:
                    slots.append(_Slot(0, op, qubits, sources, ""))
            elif clifford_ops(op) is None:
                fixed.update(qubits)
        return cls(columns, frozenset(fixed), slots, simple, kinds)


def _slot_text(slot: _Slot, combo: tuple[int, ...]) -> str | None:
    text = slot.texts.get(combo)
    if text is None:
        ops = _ops_of(slot.op, tuple(("k", k) for k in combo))
        if ops is None:
            return None
        text = slot.texts[combo] = _gate_text(ops, slot.qubits, slot.noise)
    return text


def _gate_text(ops: StimOps, qubits: tuple[int, ...], noise: str) -> str:
    lines = [gate + " " + " ".join(str(qubits[t]) for t in targets) for gate, targets in ops]
    if noise:
        lines.append(noise)
    return "\n".join(lines)


def compile_circuit(circuit: QuantumCircuit, noise: PauliNoise | None) -> Program | None:
    """``circuit`` as a :class:`Program` with ``noise`` on its first ``len(noise.physical)``
    qubits, or ``None`` when a gate that does not depend on the parameters is not Clifford (or
    there is control flow)."""
    from qiskit.circuit import ParameterExpression

    from .noise import delay_seconds

    pieces: list[str] = []
    slots: list[_Slot] = []
    records: list[int] = []
    columns = {p: i for i, p in enumerate(circuit.parameters)}
    qindex = {q: i for i, q in enumerate(circuit.qubits)}
    cindex = {c: i for i, c in enumerate(circuit.clbits)}
    noisy = len(noise.physical) if noise is not None else 0
    memo = noise.stim_text if noise is not None else {}
    for inst in circuit.data:
        op = inst.operation
        qubits = tuple(qindex[q] for q in inst.qubits)
        name = op.name
        if name == "barrier":
            continue
        channel = ""
        if noise is not None and all(q < noisy for q in qubits) and name != "delay":
            cached = memo.get((name, qubits))
            if cached is None:
                probs = noise.gates.get(name, {}).get(qubits)
                cached = _channel_text(probs, qubits) if probs is not None else ""
                memo[(name, qubits)] = cached
            channel = cached
        if name == "measure":
            q = qubits[0]
            p = noise.readout[q] if noise is not None and q < noisy else 0.0
            pieces.append(_join(f"M({p!r}) {q}" if p > 0 else f"M {q}", channel))
            records.append(cindex[inst.clbits[0]])
        elif name == "reset":
            pieces.append(_join(f"R {qubits[0]}", channel))
        elif name == "delay":
            seconds = delay_seconds(op, noise.dt) if noise is not None and qubits[0] < noisy else 0
            if seconds > 0:
                pieces.append(_channel_text(noise.delay(qubits[0], seconds), qubits))  # type: ignore[union-attr]
        elif any(isinstance(p, ParameterExpression) for p in op.params):
            sources = _sources(op, columns)
            if sources is None:
                return None
            pieces.append("")
            slots.append(_Slot(len(pieces) - 1, op, qubits, sources, channel))
        else:
            ops = clifford_ops(op)
            if ops is None:
                return None
            pieces.append(_gate_text(ops, qubits, channel))
    return Program(pieces, slots, records, columns)


def noiseless_program(circuit: QuantumCircuit) -> Program | None:
    """:func:`compile_circuit` without noise, once per circuit (a job's circuits are only read;
    the plan's Clifford check and the sampling share it)."""
    return derived(circuit, "stim", lambda: compile_circuit(circuit, None))


def _is_real(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool)


def _join(first: str, second: str) -> str:
    return f"{first}\n{second}" if second else first


def _rows(pub: SamplerPub) -> np.ndarray:
    """The PUB's parameter values, one row per parameter set, columns in circuit order."""
    values = pub.parameter_values
    size = max(1, values.size)
    if not pub.circuit.parameters:
        return np.zeros((size, 0))
    return np.asarray(values.as_array(pub.circuit.parameters), dtype=float).reshape(size, -1)


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
    register, shaped like the PUB, as Aer's ``SamplerV2`` returns it.

    Raises:
        ValueError: a parameter set makes the circuit non-Clifford (see :func:`pub_is_clifford`).
    """
    import stim

    from .ideal import data_bin

    circuit, shots = pub.circuit, int(pub.shots)
    shape = tuple(pub.parameter_values.shape)
    program = noiseless_program(circuit) if noise is None else compile_circuit(circuit, noise)
    multiples = program.multiples(_rows(pub)) if program is not None else None
    if program is None or multiples is None:
        raise ValueError("the PUB is not a Clifford circuit")
    rows = []
    rng = np.random.default_rng(seed)
    records = program.records
    for row in range(math.prod(shape)):
        sampler = stim.Circuit(program.text(multiples, row)).compile_sampler(
            seed=int(rng.integers(2**63))
        )
        samples = sampler.sample(shots) if records else np.zeros((shots, 0), dtype=bool)
        bits = np.zeros((shots, circuit.num_clbits), dtype=bool)
        for record, clbit in enumerate(records):  # a later measurement overwrites its clbit
            bits[:, clbit] = samples[:, record]
        rows.append(bits)
    return data_bin(circuit, shape, shots, rows)
