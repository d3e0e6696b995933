"""The Estimator's classical side: measurement groups in, expectation values out.

Pre-processing (:func:`plan_estimator_pub`): the Pauli terms of all observables of a PUB are
grouped into qubit-wise commuting groups; each group becomes one measurement circuit (the PUB's
circuit + basis rotations in the device's native gates + measurements of the group's support
qubits into a fresh classical register), sampled at every parameter set of the PUB with
``ceil(1 / precision²)`` shots (IBM's rule).

Post-processing (:func:`estimator_pub_result`): per shot, each term's value is computed from the
measured bits (a parity for Pauli factors, an indicator for projector factors); an observable's
per-shot value in a group is ``Σ coeff · term``; the expectation value is the mean over shots summed
over groups, and its variance ``Σ_groups var(per-shot value) / shots`` (groups are independent
samples). A group of a few bits computes each outcome's value once and weighs it by how many shots
gave it, which is the same sum. No error mitigation, twirling or dynamical decoupling is applied.

Everything here is pure and picklable: plans travel between worker processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from .derived import derived

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.primitives.containers import DataBin, PubResult
    from qiskit.primitives.containers.estimator_pub import EstimatorPub
    from qiskit.transpiler import Target

__all__ = [
    "EstimatorPubPlan",
    "GroupPlan",
    "basis_change_gates",
    "estimator_pub_result",
    "estimator_result_metadata",
    "plan_estimator_pub",
    "shots_for_precision",
]

# Measurement bases of a qubit, and what each SparseObservable letter needs.
_NONE, _Z, _X, _Y = 0, 1, 2, 3
#: letter → (basis, kind); kind 0 = Pauli (±1 by parity), 1 = projector on the basis' bit 0
#: (|0>, |+>, |+i>), 2 = projector on bit 1 (|1>, |->, |-i>).
_LETTERS: dict[str, tuple[int, int]] = {
    "Z": (_Z, 0),
    "0": (_Z, 1),
    "1": (_Z, 2),
    "X": (_X, 0),
    "+": (_X, 1),
    "-": (_X, 2),
    "Y": (_Y, 0),
    "r": (_Y, 1),
    "l": (_Y, 2),
}


def shots_for_precision(precision: float) -> int:
    """IBM's rule: ``ceil(1 / precision²)`` shots (rounded first, so 0.1 gives 100, not 101)."""
    return max(1, math.ceil(round(1.0 / precision**2, 6)))


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """One measurement circuit of a PUB and how its bits map back to the observables."""

    sampler_index: int
    """Index of the measurement circuit in ``PreparedJob.sampler_pubs``."""
    creg: str
    """Classical register holding the group's measured bits (bit j = ``qubits[j]``)."""
    qubits: tuple[int, ...]
    """Measured (physical) qubits, in bit order."""
    parity: np.ndarray
    """``(num_bits, T)`` 0/1: bit j enters term t's parity (Pauli factor)."""
    zeros: np.ndarray
    """``(num_bits, T)`` 0/1: term t projects bit j on 0."""
    ones: np.ndarray
    """``(num_bits, T)`` 0/1: term t projects bit j on 1."""
    coeffs: np.ndarray
    """``(T, num_observables)``: coefficient of term t in (flattened) observable o."""


@dataclass(frozen=True, slots=True)
class EstimatorPubPlan:
    """What post-processing needs to rebuild one Estimator PUB result."""

    shape: tuple[int, ...]
    """The PUB's shape: observables broadcast against parameter sets."""
    obs_shape: tuple[int, ...]
    param_shape: tuple[int, ...]
    shots: int
    precision: float
    """Target precision reported in the metadata."""
    circuit_metadata: dict[str, Any]
    constants: np.ndarray
    """``(num_observables,)``: identity terms, exact."""
    groups: tuple[GroupPlan, ...]


@cache
def _basis_change_cached(gate_names: tuple[str, ...]) -> dict[int, tuple[Any, ...]]:
    from qiskit import QuantumCircuit, transpile

    out: dict[int, tuple[Any, ...]] = {}
    for basis in (_X, _Y):
        qc = QuantumCircuit(1)
        if basis == _Y:
            qc.sdg(0)  # S† then H maps the Y eigenbasis onto the Z eigenbasis
        qc.h(0)
        native = transpile(qc, basis_gates=list(gate_names), optimization_level=1)
        out[basis] = tuple(inst.operation for inst in native.data)
    return out


def basis_change_gates(target: Target) -> dict[int, tuple[Any, ...]]:
    """Native single-qubit gates rotating the X (``H``) and Y (``S†`` then ``H``) eigenbases onto
    the Z eigenbasis, e.g. ``rz(π/2)·sx·rz(π/2)`` on IBM devices. Keys are ``_X`` and ``_Y``."""
    one_qubit = tuple(
        sorted(
            name
            for name in target.operation_names
            if name not in ("measure", "reset", "delay")
            and getattr(target.operation_from_name(name), "num_qubits", 0) == 1
        )
    )
    return _basis_change_cached(one_qubit)


def plan_estimator_pub(
    pub: EstimatorPub,
    *,
    shots: int,
    precision: float,
    basis_gates: dict[int, tuple[Any, ...]],
    first_index: int,
) -> tuple[list[QuantumCircuit], EstimatorPubPlan]:
    """Group ``pub``'s observables into measurement circuits.

    Returns the measurement circuits (device-wide, parameters still unbound; each is to be
    sampled with the PUB's parameter values and ``shots``) and the plan that turns their bits
    back into expectation values. ``first_index`` is the ``sampler_pubs`` index the first
    circuit will get.
    """
    observables = pub.observables
    obs_sparse = observables.sparse_observables_array().reshape(-1)
    num_obs = len(obs_sparse)

    constants = np.zeros(num_obs)
    term_ids: dict[tuple[tuple[int, str], ...], int] = {}
    coeff_entries: list[tuple[int, int, float]] = []  # (term, observable, coeff)
    for o, obs in enumerate(obs_sparse):
        for letters, indices, coeff in obs.to_sparse_list():
            value = float(np.real(coeff))
            if not letters:
                constants[o] += value
                continue
            key = tuple(sorted(zip(indices, letters, strict=True)))
            tid = term_ids.setdefault(key, len(term_ids))
            coeff_entries.append((tid, o, value))
    terms = list(term_ids)

    # Qubit-wise commuting groups, greedily: terms with the largest support first, each into the
    # first group whose bases agree on every shared qubit.
    qubits_used = sorted({q for term in terms for q, _ in term})
    col = {q: i for i, q in enumerate(qubits_used)}
    bases = np.zeros((len(terms), len(qubits_used)), dtype=np.int8)
    for t, term in enumerate(terms):
        for q, letter in term:
            bases[t, col[q]] = _LETTERS[letter][0]
    group_bases = np.zeros((0, len(qubits_used)), dtype=np.int8)
    members: list[list[int]] = []
    for t in sorted(range(len(terms)), key=lambda i: (-len(terms[i]), i)):
        row = bases[t]
        fits = np.all((group_bases == 0) | (row == 0) | (group_bases == row), axis=1)
        hit = np.flatnonzero(fits)
        if hit.size:
            g = int(hit[0])
            group_bases[g] = np.maximum(group_bases[g], row)  # fill unset qubits
            members[g].append(t)
        else:
            group_bases = np.vstack([group_bases, row[None, :]])
            members.append([t])

    groups: list[GroupPlan] = []
    reg_base = _fresh_register_name(pub.circuit)
    # Per group, its measured qubits and the basis of each: what its circuit is made of.
    measurements = tuple(
        tuple(
            (q, int(group_bases[g, col[q]])) for q in qubits_used if group_bases[g, col[q]] != _NONE
        )
        for g in range(len(members))
    )
    circuits = derived(
        pub.circuit,
        ("measurement circuits", reg_base, measurements, _gates_key(basis_gates)),
        lambda: _measurement_circuits(pub.circuit, reg_base, measurements, basis_gates),
    )
    for g, term_list in enumerate(members):
        measured = [q for q, _ in measurements[g]]
        bit = {q: j for j, q in enumerate(measured)}

        local = {t: k for k, t in enumerate(term_list)}
        parity = np.zeros((len(measured), len(term_list)), dtype=np.float64)
        zeros = np.zeros_like(parity)
        ones = np.zeros_like(parity)
        for t in term_list:
            for q, letter in terms[t]:
                kind = _LETTERS[letter][1]
                (parity, zeros, ones)[kind][bit[q], local[t]] = 1.0
        coeffs = np.zeros((len(term_list), num_obs))
        for tid, o, value in coeff_entries:
            if tid in local:
                coeffs[local[tid], o] += value
        groups.append(
            GroupPlan(
                sampler_index=first_index + g,
                creg=f"{reg_base}{g}",
                qubits=tuple(measured),
                parity=parity,
                zeros=zeros,
                ones=ones,
                coeffs=coeffs,
            )
        )

    plan = EstimatorPubPlan(
        shape=tuple(pub.shape),
        obs_shape=tuple(observables.shape),
        param_shape=tuple(pub.parameter_values.shape),
        shots=shots,
        precision=precision,
        circuit_metadata=dict(pub.circuit.metadata or {}),
        constants=constants,
        groups=tuple(groups),
    )
    return circuits, plan


def _measurement_circuits(
    circuit: QuantumCircuit,
    reg_base: str,
    measurements: tuple[tuple[tuple[int, int], ...], ...],
    basis_gates: dict[int, tuple[Any, ...]],
) -> list[QuantumCircuit]:
    """Per group, ``circuit`` with the group's basis changes and measurements into a register
    of its own (``{reg_base}{g}``). Built once per circuit and groups (:func:`derived`): a
    program that sends the same circuit and observables again gets the same circuit objects,
    so what pre-processing and the QPU derive from them is derived once too."""
    from qiskit import ClassicalRegister

    circuits = []
    for g, group in enumerate(measurements):
        creg = ClassicalRegister(len(group), f"{reg_base}{g}")
        measured = circuit.copy()
        measured.add_register(creg)
        for q, basis in group:
            for gate in basis_gates.get(basis, ()):
                measured.append(gate, [q], copy=False)
        for j, (q, _) in enumerate(group):
            measured.measure(q, creg[j])
        circuits.append(measured)
    return circuits


def _gates_key(basis_gates: dict[int, tuple[Any, ...]]) -> tuple[Any, ...]:
    """What tells two devices' basis changes apart: each gate's name and parameters."""
    return tuple(
        (basis, tuple((gate.name, tuple(map(float, gate.params))) for gate in gates))
        for basis, gates in sorted(basis_gates.items())
    )


def _fresh_register_name(circuit: QuantumCircuit) -> str:
    """A register-name prefix no existing register of ``circuit`` starts with."""
    names = {reg.name for reg in circuit.cregs}
    base = "est_meas"
    while any(name.startswith(base) for name in names):
        base = "_" + base
    return base


#: The widest group whose moments come from a table of its outcomes (:func:`_group_moments`),
#: and the most table entries (parameter sets x outcomes x observables) it may hold.
_TABLE_BITS = 12
_TABLE_ENTRIES = 2**22


def _group_moments(group: GroupPlan, data: DataBin, shots: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance-of-the-mean of every observable's per-shot value in one group,
    each of shape ``(*param_shape, num_observables)``.

    A narrow group (at most :data:`_TABLE_BITS` bits, the usual case) has few outcomes: each
    outcome's value is computed once, and each parameter set's shots are counted per outcome
    (``bincount`` of the packed bytes), instead of unpacking every shot's bits into floats and
    multiplying them: 0.32 -> 0.01 ms for a 4-bit group at 4096 shots. The two give the same
    numbers up to rounding."""
    bit_array = getattr(data, group.creg)
    num_bits = bit_array.num_bits
    num_obs = group.coeffs.shape[1]
    param_shape = bit_array.shape
    sets = math.prod(param_shape)
    outcomes = 2**num_bits
    if num_bits <= _TABLE_BITS and sets * outcomes * num_obs <= _TABLE_ENTRIES:
        packed = bit_array.array.reshape(sets, shots, -1)  # big-endian bytes: the last is bits 0-7
        index = np.zeros((sets, shots), dtype=np.int64)
        for byte in range(packed.shape[-1]):
            index |= packed[..., -1 - byte].astype(np.int64) << (8 * byte)
        index += (np.arange(sets, dtype=np.int64) * outcomes)[:, None]
        counts = np.bincount(index.ravel(), minlength=sets * outcomes).reshape(sets, outcomes)
        table = (np.arange(outcomes)[:, None] >> np.arange(num_bits)) & 1
        per_outcome = _values(group, table.astype(np.float64)) @ group.coeffs  # (outcomes, obs)
        mean = counts @ per_outcome / shots  # (sets, obs)
        if shots > 1:
            spread = (per_outcome[None, :, :] - mean[:, None, :]) ** 2
            var = np.einsum("so,sok->sk", counts, spread) / (shots - 1)
        else:
            var = np.zeros_like(mean)
        return mean.reshape(*param_shape, num_obs), var.reshape(*param_shape, num_obs) / shots
    bits = bit_array.to_bool_array(order="little").astype(np.float64)
    # bits: (*param_shape, shots, num_bits); all products below are over the bit axis.
    per_shot = _values(group, bits) @ group.coeffs  # (*param_shape, shots, num_observables)
    mean = per_shot.mean(axis=-2)
    var = per_shot.var(axis=-2, ddof=1) if shots > 1 else np.zeros_like(mean)
    return mean, var / shots


def _values(group: GroupPlan, bits: np.ndarray) -> np.ndarray:
    """Each term's value (±1, or 0 where a projector rejects) for bits ``(..., num_bits)`` as
    floats: ``(..., num_terms)``."""
    parity = np.rint(bits @ group.parity) % 2
    values: np.ndarray = 1.0 - 2.0 * parity
    if group.zeros.any():
        values *= (bits @ group.zeros) == 0
    if group.ones.any():
        values *= (bits @ group.ones) == group.ones.sum(axis=0)
    return values


def estimator_pub_result(plan: EstimatorPubPlan, datas: Sequence[DataBin]) -> PubResult:
    """Build one ``PubResult`` (``evs``, ``stds``, ``ensemble_standard_error``) from the sampled
    data of ``PreparedJob.sampler_pubs`` (indexed by ``GroupPlan.sampler_index``)."""
    from qiskit.primitives.containers import DataBin, PubResult

    num_obs = plan.constants.shape[0]
    param_size = int(np.prod(plan.param_shape, dtype=np.int64))
    evs_table = np.broadcast_to(plan.constants, (*plan.param_shape, num_obs)).copy()
    var_table = np.zeros_like(evs_table)
    for group in plan.groups:
        mean, var = _group_moments(group, datas[group.sampler_index], plan.shots)
        evs_table += mean
        var_table += var
    evs_table = evs_table.reshape(param_size, num_obs)
    var_table = var_table.reshape(param_size, num_obs)

    # Index the (parameter set, observable) tables by the broadcast PUB shape.
    obs_index = np.broadcast_to(np.arange(num_obs).reshape(plan.obs_shape), plan.shape)
    par_index = np.broadcast_to(np.arange(param_size).reshape(plan.param_shape), plan.shape)
    evs = np.asarray(evs_table[par_index, obs_index], dtype=np.float64)
    # np.sqrt of a 0-d array is a NumPy scalar, which RuntimeEncoder sends as a plain float: a
    # 0-d PUB (one observable, no parameter sets) must still give 0-d arrays, as qiskit's
    # StatevectorEstimator and IBM's service do (``stds.shape == ()``).
    stds = np.asarray(np.sqrt(var_table[par_index, obs_index]), dtype=np.float64)
    data = DataBin(evs=evs, stds=stds, ensemble_standard_error=stds.copy(), shape=plan.shape)
    metadata = {
        "target_precision": float(plan.precision),
        "shots": int(plan.shots),
        "circuit_metadata": plan.circuit_metadata,
        "resilience": {},
        "num_randomizations": 1,
    }
    return PubResult(data, metadata=metadata)


def estimator_result_metadata() -> dict[str, Any]:
    """Top-level metadata of an Estimator result, shaped like IBM's, stating what was applied:
    no dynamical decoupling, no twirling, no mitigation."""
    return {
        "dynamical_decoupling": {"enable": False},
        "twirling": {"enable_gates": False, "enable_measure": False},
        "resilience": {
            "measure_mitigation": False,
            "zne_mitigation": False,
            "pec_mitigation": False,
        },
        "version": 2,
    }
