"""Cutting device-wide circuits down to what Aer needs to simulate.

ISA circuits are device-wide (156 qubits on ``ibm_fez``), and simulating them as they are would
need a 2^156 statevector. Two cuts keep Aer's work proportional to what a circuit really does:

1. :func:`compact`: only *live* qubits (those acted on by anything but a barrier, delay,
   measurement or reset, see :func:`live_qubits`) are simulated; every other qubit stays in |0>,
   so one extra "ground" qubit stands in for all that are measured or reset.
2. :func:`plan_packs`: live qubits that no multi-qubit instruction ever connects evolve
   independently, so a circuit splits into independent *components*, and the components are
   packed into a few narrow circuits (:class:`Pack`), each simulated on its own. This is what
   makes the executor's twirled circuits tractable: samplomatic dresses *every* qubit of a
   device-wide circuit with single-qubit gates and measures them all, so all 156 qubits are live
   but only the user's few are entangled. Independent components sampled separately have the
   same joint distribution as the whole circuit (the device noise model is local: per-gate and
   per-qubit readout errors), so the packs' bits are simply put back together
   (:func:`merge_bins`). A circuit with control flow, or whose classical bits are written from
   more than one component, is never split.

Pure functions on circuits; everything here pickles.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.circuit import CircuitInstruction
    from qiskit.primitives.containers import DataBin

__all__ = ["Pack", "compact", "live_qubits", "merge_bins", "plan_packs"]

#: Instructions that leave a qubit in |0> if it starts there (or do nothing to it).
_GROUND_OPS = frozenset({"barrier", "delay", "measure", "reset"})

#: Components are packed together into circuits of up to this many qubits (or the widest
#: component, when wider). Measured on ibm_fez with the executor Estimator's Bell job (156 dressed
#: qubits, 96 parameter sets of 128 shots): each pack costs Aer's per-shot result conversion, so
#: fewer packs are faster without noise (width 1: 7 s, 4: 3.5 s, 8: 2 s), while a noisy pack runs
#: Aer's density-matrix method, whose cost grows as 4^width (with noise, width 4: 6.5 s,
#: 8: 44 s, 12: 6 min). So 4, for what Aer runs; what Stim runs goes into one pack whatever
#: its width (``plan_packs(unbounded=...)``, from the executor).
PACK_WIDTH = 4


def live_qubits(circuit: QuantumCircuit) -> tuple[int, ...]:
    """Physical qubits ``circuit`` acts on with anything but a barrier, delay, measurement or
    reset, sorted. Every other qubit stays in |0> throughout: it needs no simulation."""
    index = {q: k for k, q in enumerate(circuit.qubits)}
    live: set[int] = set()
    for inst in circuit.data:
        # ``inst.name`` does not build the Python operation object, ``inst.operation`` does:
        # this loop runs over every instruction of a device-wide circuit.
        if inst.name not in _GROUND_OPS:
            live.update(index[q] for q in inst.qubits)
    return tuple(sorted(live))


def compact(circuit: QuantumCircuit, live: tuple[int, ...]) -> QuantumCircuit:
    """``circuit`` on the qubits that need simulating: its qubit ``live[i]`` becomes qubit ``i``,
    and every other qubit that is measured or reset shares one extra "ground" qubit
    ``len(live)``, which stays in |0> (so those measurements read 0, as they would on an ideal
    device; no readout error is modelled for them). Barriers and delays are cut to the kept
    qubits. Classical bits, registers, parameters and metadata are unchanged.
    """
    return _compact(circuit, list(circuit.data), live)


def _compact(
    circuit: QuantumCircuit, instructions: list[CircuitInstruction], live: tuple[int, ...]
) -> QuantumCircuit:
    """:func:`compact` of ``circuit`` keeping only ``instructions`` (some of its own)."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import Barrier

    new_index = {p: i for i, p in enumerate(live)}
    ground = len(live)
    old_index = {q: k for k, q in enumerate(circuit.qubits)}
    needs_ground = any(
        inst.name in ("measure", "reset")
        and any(old_index[q] not in new_index for q in inst.qubits)
        for inst in instructions
    )
    out = QuantumCircuit(
        ground + (1 if needs_ground or not live else 0),
        name=circuit.name,
        global_phase=circuit.global_phase,
        metadata=dict(circuit.metadata or {}),
    )
    out.add_bits(list(circuit.clbits))
    for creg in circuit.cregs:
        out.add_register(creg)
    for inst in instructions:
        if inst.name in ("measure", "reset"):
            qubits = [out.qubits[new_index.get(old_index[q], ground)] for q in inst.qubits]
        else:
            qubits = [
                out.qubits[new_index[old_index[q]]]
                for q in inst.qubits
                if old_index[q] in new_index
            ]
            if not qubits and inst.qubits:  # a barrier or delay on ground qubits only
                continue
            if inst.name == "barrier" and len(qubits) != len(inst.qubits):
                out.append(Barrier(len(qubits)), qubits, copy=False)
                continue
        # ``replace`` keeps the (possibly not yet built) operation as it is
        out._append(inst.replace(qubits=tuple(qubits)))
    return out


# ---------------------------------------------------------------------------------------------
# Independent components, packed
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pack:
    """One narrow circuit cut from a device-wide one."""

    qubits: tuple[int, ...]
    """The physical qubits simulated, in the compact circuit's order."""
    circuit: QuantumCircuit
    """The instructions on ``qubits`` (and, for the first pack, the measurements and resets of
    ground qubits), compacted: see :func:`compact`. Same classical bits and registers as the
    original circuit; bits written by other packs stay 0."""
    parameter_index: tuple[int, ...]
    """Positions of ``circuit.parameters`` in the original circuit's ``parameters``, to select
    the columns of its parameter values."""


def _components(
    circuit: QuantumCircuit, instructions: list[CircuitInstruction], live: tuple[int, ...]
) -> list[list[int]] | None:
    """The live qubits grouped by the multi-qubit instructions that connect them, each group
    sorted, groups by their first qubit; ``None`` when the circuit must not be split (control
    flow, or a classical bit written from two components, or from a component and a ground
    qubit)."""
    index = {q: k for k, q in enumerate(circuit.qubits)}
    parent = {q: q for q in live}

    def find(q: int) -> int:
        while parent[q] != q:
            parent[q] = parent[parent[q]]
            q = parent[q]
        return q

    for inst in instructions:
        if inst.is_control_flow():
            return None
        if len(inst.qubits) < 2 or inst.name in _GROUND_OPS:
            continue
        first, *rest = (find(index[q]) for q in inst.qubits)
        for other in rest:
            parent[other] = first
    cindex = {c: k for k, c in enumerate(circuit.clbits)}
    writer: dict[int, int] = {}  # clbit → component root (-1: a ground qubit)
    for inst in instructions:
        if inst.name != "measure":
            continue
        for q, c in zip(inst.qubits, inst.clbits, strict=True):
            who = find(index[q]) if index[q] in parent else -1
            if writer.setdefault(cindex[c], who) != who:
                return None
    groups: dict[int, list[int]] = {}
    for q in live:
        groups.setdefault(find(q), []).append(q)
    return sorted(groups.values(), key=lambda g: g[0])


def plan_packs(
    circuit: QuantumCircuit,
    *,
    width: int | None = None,
    unbounded: Collection[int] | None = None,
) -> list[Pack]:
    """``circuit`` cut into independent packs of at most ``max(width, widest component)``
    qubits (``width`` defaults to :data:`PACK_WIDTH`); a single pack holding every live qubit
    when the circuit cannot be split (see the module). One pass over the instructions.

    ``unbounded``: qubits (indices in ``circuit.qubits``) that Stim will simulate, whose cost
    does not grow exponentially with the width: the components made of these qubits only go
    into one first pack, however wide. The executor's twirled device-wide circuits are
    mostly such components (every qubit dressed with Clifford twirls): 39 packs of 4 qubits
    each sampled on their own, for one of 156 qubits (see ``executor.prepare``)."""
    instructions = list(circuit.data)
    live = live_qubits(circuit)
    components = _components(circuit, instructions, live) if live else None
    groups: list[tuple[int, ...]] = []
    if components is None or len(components) <= 1:
        groups.append(live)
    else:
        if unbounded is not None:
            wide = [c for c in components if all(q in unbounded for q in c)]
            if wide:
                groups.append(tuple(sorted(q for c in wide for q in c)))
                components = [c for c in components if not all(q in unbounded for q in c)]
        cap = max([width or PACK_WIDTH, *(len(c) for c in components)])
        current: list[int] = []
        for comp in components:
            if current and len(current) + len(comp) > cap:
                groups.append(tuple(sorted(current)))
                current = []
            current.extend(comp)
        if current:
            groups.append(tuple(sorted(current)))
    if len(groups) == 1:
        return [
            Pack(
                groups[0],
                _compact(circuit, instructions, groups[0]),
                tuple(range(circuit.num_parameters)),
            )
        ]
    # Each instruction goes to the pack of its qubits (barriers to every pack they touch,
    # measurements and resets of ground qubits to the first pack; delays on them are dropped).
    index = {q: k for k, q in enumerate(circuit.qubits)}
    pack_of = {q: n for n, group in enumerate(groups) for q in group}
    buckets: list[list[CircuitInstruction]] = [[] for _ in groups]
    for inst in instructions:
        where = {pack_of.get(index[q], -1) for q in inst.qubits}
        if inst.name == "barrier":
            for n in where - {-1}:
                buckets[n].append(inst)  # _compact cuts it to the pack's qubits
        elif where == {-1}:
            if inst.name in ("measure", "reset"):
                buckets[0].append(inst)
        else:
            (n,) = where - {-1}  # one component, so one pack
            buckets[n].append(inst)
    position = {p: k for k, p in enumerate(circuit.parameters)}
    packs = []
    for group, bucket in zip(groups, buckets, strict=True):
        sub = _compact(circuit, bucket, group)
        packs.append(Pack(group, sub, tuple(position[p] for p in sub.parameters)))
    return packs


def merge_bins(parts: Sequence[DataBin]) -> DataBin:
    """The packs' data of one circuit put back together: per classical register, the bitwise OR
    of the packs' bits (each bit is written by exactly one pack; the others left it 0)."""
    from qiskit.primitives.containers import DataBin

    if len(parts) == 1:
        return parts[0]
    fields = {}
    for name in parts[0]:
        merged = parts[0][name]
        for part in parts[1:]:
            merged = merged | part[name]
        fields[name] = merged
    return DataBin(**fields, shape=parts[0].shape)
