"""Noise levels, and the Pauli twirl of a device's noise (the ``pauli`` level).

Why a Pauli level: Aer's device noise model (``NoiseModel.from_backend``: depolarizing plus
thermal relaxation on every gate, readout errors) makes every shot a full state-vector
trajectory with Kraus sampling, about a second per shot for 20 qubits. Replacing each error
channel by its *Pauli twirl* keeps the channel's Pauli-transfer-matrix diagonal, hence each
gate's process fidelity and each readout's average error, and turns the noise into random Pauli
flips, which a stabilizer sampler (Stim) applies to Clifford circuits of any width in
milliseconds. This is what Pauli twirling does on the device too.

The twirl is closed form: for an ``n``-qubit channel with PTM diagonal ``λ_P``, the twirled
channel applies Pauli ``Q`` with probability ``p_Q = 4^-n Σ_P s(P, Q) λ_P``, ``s = +1`` when
``P`` and ``Q`` commute and ``-1`` otherwise. Readout errors are twirled the same way (a random
bit flip before and after measuring): the flip probability becomes ``(P(1|0) + P(0|1)) / 2``.

Probability vectors index Paulis as :func:`qiskit.quantum_info.pauli_basis` orders them: index
``i`` has Pauli ``(i >> 2k) & 3`` (0 = I, 1 = X, 2 = Y, 3 = Z) on the channel's qubit ``k``.

Per device, the twirled table (:class:`DeviceTable`) is built lazily, only for the qubits and
pairs a job touches and the instructions its circuits run, from the same per-qubit-set Aer model
the ``full`` level uses, and is kept on disk (see :mod:`emulator.noise_cache`) so that later
starts load it in milliseconds.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .noise_cache import Key

if TYPE_CHECKING:
    from qiskit.circuit import Instruction
    from qiskit_aer.noise import NoiseModel, QuantumError

__all__ = [
    "DeviceTable",
    "NoiseLevel",
    "PauliNoise",
    "instruction_names",
    "pauli_noise_for",
    "pauli_twirl",
    "table_for",
    "twirl_error",
    "twirl_readout",
]


class NoiseLevel(enum.StrEnum):
    """How faithfully the emulator simulates a device's noise."""

    FULL = "full"
    """Aer's noise model from the device's calibration data (``NoiseModel.from_backend``)."""
    PAULI = "pauli"
    """The same model with every channel replaced by its Pauli twirl."""
    NONE = "none"
    """Ideal simulation."""


# ---------------------------------------------------------------------------------------------
# The twirl of one channel
# ---------------------------------------------------------------------------------------------

#: s(P, Q) for single-qubit Paulis I, X, Y, Z: +1 when they commute.
_SIGNS_1Q = np.array([[1, 1, 1, 1], [1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]], dtype=float)


@cache
def _signs(num_qubits: int) -> np.ndarray:
    out = np.ones((1, 1))
    for _ in range(num_qubits):
        out = np.kron(_SIGNS_1Q, out)
    return out


@cache
def pauli_labels(num_qubits: int) -> tuple[str, ...]:
    """qiskit labels of the Paulis in probability-vector order (``II, IX, IY, IZ, XI, ...``)."""
    from qiskit.quantum_info import pauli_basis

    return tuple(pauli_basis(num_qubits).to_labels())


def pauli_twirl(channel: Any) -> np.ndarray:
    """Probabilities of the Paulis of the Pauli twirl of ``channel`` (any channel
    ``qiskit.quantum_info.PTM`` accepts: ``Kraus``, ``SuperOp``, ``Choi``, an ``Operator``).

    Computed from the PTM diagonal; tiny negative values from rounding are clipped and the
    vector renormalised, so it sums to 1.
    """
    from qiskit.quantum_info import PTM

    ptm = PTM(channel)
    num_qubits = round(np.log2(ptm.dim[0]))
    return _twirl_of_diagonal(np.real(np.diag(ptm.data)), num_qubits)


def twirl_error(error: QuantumError) -> np.ndarray:
    """:func:`pauli_twirl` of an Aer ``QuantumError`` (a mixture of circuits)."""
    return _twirl_of_diagonal(ptm_diagonal(error), error.num_qubits)


def ptm_diagonal(error: QuantumError) -> np.ndarray:
    """The diagonal of the Pauli transfer matrix of an Aer ``QuantumError``: what its twirl
    keeps.

    ``QuantumError.to_quantumchannel`` builds a ``SuperOp`` circuit by circuit, about 40 ms for
    one device gate error (a minute for ``ibm_fez``). Here the PTM of each distinct instruction
    is computed once (``qiskit.quantum_info.PTM``) and the circuits' PTMs are products of those:
    a PTM of a tensor product is the tensor product of the PTMs.
    """
    n = error.num_qubits
    if n > 2:
        from qiskit.quantum_info import PTM

        return np.real(np.diag(PTM(error.to_quantumchannel()).data))
    dim = 4**n
    total = np.zeros((dim, dim))
    memo = _PTM_MEMO
    for circuit, prob in zip(error.circuits, error.probabilities, strict=True):
        if prob <= 0:
            continue
        ptm = np.eye(dim)
        for inst in circuit.data:
            qubits = tuple(circuit.find_bit(q).index for q in inst.qubits)
            key = (_op_key(inst.operation), qubits, n)
            step = memo.get(key)
            if step is None:
                step = memo[key] = _embed_ptm(_instruction_ptm(inst.operation), qubits, n)
            ptm = step @ ptm
        total += prob * ptm
    return np.diag(total).copy()


def _twirl_of_diagonal(diagonal: np.ndarray, num_qubits: int) -> np.ndarray:
    """Pauli probabilities from a PTM diagonal; rounding's tiny negatives clipped, renormalised."""
    probs = _signs(num_qubits) @ diagonal / 4**num_qubits
    probs = np.clip(probs, 0.0, None)
    return probs / probs.sum()  # type: ignore[no-any-return]


def twirl_readout(probabilities: Any) -> float:
    """Flip probability of a twirled single-qubit readout error with assignment matrix
    ``[[P(0|0), P(1|0)], [P(0|1), P(1|1)]]``."""
    m = np.asarray(probabilities, dtype=float)
    return float((m[0, 1] + m[1, 0]) / 2)


_RESET_KRAUS = (
    np.array([[1, 0], [0, 0]], dtype=complex),
    np.array([[0, 1], [0, 0]], dtype=complex),
)


#: Embedded PTMs of instructions seen in errors; a few per device qubit (the Kraus operators of
#: relaxation differ per qubit, the Paulis and resets are shared).
_PTM_MEMO: dict[Any, np.ndarray] = {}


def _op_key(op: Instruction) -> Any:
    params = tuple(
        np.asarray(p).tobytes() if isinstance(p, np.ndarray | list) else p for p in op.params
    )
    return (op.name, op.num_qubits, params)


def _instruction_ptm(op: Instruction) -> np.ndarray:
    from qiskit.quantum_info import PTM, Kraus, Operator

    if op.name == "reset":
        channel: Any = Kraus(list(_RESET_KRAUS))
    elif op.name == "kraus":
        channel = Kraus([np.asarray(k, dtype=complex) for k in op.params])
    elif op.name in ("barrier", "delay"):
        return np.eye(4**op.num_qubits)
    else:
        channel = Operator(op)
    return np.real(PTM(channel).data)


#: Swaps the two qubits' digits of a two-qubit PTM index (d1 * 4 + d0).
_SWAP_PTM = np.eye(16)[[4 * (i % 4) + i // 4 for i in range(16)]]


def _embed_ptm(ptm: np.ndarray, qubits: Sequence[int], n: int) -> np.ndarray:
    """``ptm`` acting on ``qubits`` of an ``n``-qubit (n <= 2) channel."""
    if len(qubits) == n:
        return ptm if list(qubits) == sorted(qubits) else _SWAP_PTM @ ptm @ _SWAP_PTM
    eye = np.eye(4)
    return np.kron(eye, ptm) if qubits[0] == 0 else np.kron(ptm, eye)


# ---------------------------------------------------------------------------------------------
# Pauli noise on a set of qubits
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PauliNoise:
    """The twirled noise of a device on qubits ``0..n-1`` (physical qubit ``physical[i]`` is
    qubit ``i``): after each instruction, a random Pauli; on each measurement, a bit flip."""

    physical: tuple[int, ...]
    gates: Mapping[str, Mapping[tuple[int, ...], np.ndarray]]
    """Instruction name → qubits → Pauli probabilities applied after the instruction."""
    readout: tuple[float, ...]
    """Per qubit, the probability that a measurement reports the wrong bit."""
    t1: tuple[float, ...]
    t2: tuple[float, ...]
    dt: float | None
    """The device's sample time, for delays given in ``dt``."""
    basis_gates: tuple[str, ...] = ()
    _delays: dict[tuple[int, float], np.ndarray] = field(default_factory=dict, repr=False)
    stim_text: dict[tuple[str, tuple[int, ...]], str] = field(default_factory=dict, repr=False)
    """Stim's text of each instruction's channel, memoised by :mod:`emulator.stim_sampler`."""

    def delay(self, qubit: int, seconds: float) -> np.ndarray:
        """Pauli probabilities of the twirled thermal relaxation of ``qubit`` idling for
        ``seconds`` (what Aer's ``RelaxationNoisePass`` applies to delays, twirled)."""
        key = (qubit, float(seconds))
        probs = self._delays.get(key)
        if probs is None:
            from qiskit_aer.noise import thermal_relaxation_error

            t1, t2 = self.t1[qubit], self.t2[qubit]
            if not (np.isfinite(t1) and np.isfinite(t2)) or seconds <= 0:
                probs = np.array([1.0, 0.0, 0.0, 0.0])
            else:
                error = thermal_relaxation_error(t1, min(t2, 2 * t1), seconds)
                probs = twirl_error(error)
            self._delays[key] = probs
        return probs

    def to_aer(self) -> NoiseModel:
        """The same noise as an Aer ``NoiseModel`` (for circuits Stim cannot run)."""
        from qiskit.circuit import Delay
        from qiskit_aer.noise import NoiseModel, ReadoutError, pauli_error
        from qiskit_aer.noise.passes import LocalNoisePass

        model = NoiseModel(basis_gates=list(self.basis_gates) or None)
        for name, per_qubits in self.gates.items():
            for qubits, probs in per_qubits.items():
                if error := _pauli_error(probs, pauli_error):
                    model.add_quantum_error(error, name, list(qubits), warnings=False)
        for qubit, p in enumerate(self.readout):
            if p > 0:
                model.add_readout_error(ReadoutError([[1 - p, p], [p, 1 - p]]), [qubit])

        def delay_error(op: Any, qubits: Sequence[int]) -> Any:
            seconds = delay_seconds(op, self.dt)
            return _pauli_error(self.delay(qubits[0], seconds), pauli_error) if seconds else None

        model._custom_noise_passes.append(LocalNoisePass(delay_error, op_types=Delay))
        return model


def _pauli_error(probs: np.ndarray, factory: Any) -> Any:
    if probs[0] >= 1.0:
        return None
    labels = pauli_labels(round(np.log(len(probs)) / np.log(4)))
    return factory([(label, float(p)) for label, p in zip(labels, probs, strict=True) if p > 0])


_UNIT_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12}


def delay_seconds(op: Any, dt: float | None) -> float:
    """A ``Delay``'s duration in seconds (0 when it is in ``dt`` and ``dt`` is unknown)."""
    if op.unit == "dt":
        return float(op.duration) * dt if dt else 0.0
    return float(op.duration) * _UNIT_S.get(op.unit, 0.0)


# ---------------------------------------------------------------------------------------------
# A device's twirled table, built lazily per instruction and qubits, and kept on disk
# ---------------------------------------------------------------------------------------------


#: Every table computes readout errors: :meth:`DeviceTable.restricted` reports one per qubit.
_ALWAYS = frozenset({"measure"})


def _with_readout(names: Iterable[str] | None) -> frozenset[str] | None:
    """The instructions a job running ``names`` needs covered (``None``: all of the device's)."""
    return None if names is None else _ALWAYS | frozenset(names)


def instruction_names(circuits: Iterable[Any]) -> frozenset[str]:
    """The names of the instructions in ``circuits``, inside control-flow blocks too: what a
    job's noise must cover. ``count_ops`` (qiskit's Rust) reads a 2,300-instruction circuit in
    0.04 ms, a Python walk in 3.4 ms; only circuits with control flow are walked, for their
    blocks."""
    from qiskit.circuit import CONTROL_FLOW_OP_NAMES

    names: set[str] = set()
    stack = list(circuits)
    while stack:
        circuit = stack.pop()
        ops = circuit.count_ops()
        names.update(ops)
        if not CONTROL_FLOW_OP_NAMES.isdisjoint(ops):
            for inst in circuit.data:
                stack.extend(getattr(inst.operation, "blocks", ()))
    return frozenset(names)


class DeviceTable:
    """The twirled gate and readout errors of one device, for the instructions and qubits
    computed so far.

    ``covered`` holds every ``(instruction, qargs)`` of the target whose errors are known
    (possibly none: ``rz`` has no error). :meth:`ensure` computes what a job lacks from Aer's
    model of exactly the missing qubits and instructions, so a 5-qubit job never pays for the
    156-qubit device model, and a GHZ circuit of ``cz`` gates never pays for the device's
    ``rzz`` couplings (on ``ibm_fez``, half of the two-qubit errors).
    """

    def __init__(self, source: str, cache_dir: Path | None) -> None:
        from . import noise_cache

        self.source = source
        self.path = noise_cache.table_path(source, cache_dir) if cache_dir else None
        data = noise_cache.load(self.path) if self.path else None
        self.gates: dict[str, dict[tuple[int, ...], np.ndarray]] = {}
        self.readout: dict[int, float] = {}
        self.covered: set[Key] = set()
        if data is not None:
            self.gates, self.readout, self.covered = data

    def needed(self, physical: Iterable[int], names: Iterable[str] | None = None) -> set[Key]:
        """What a job on ``physical`` running the instructions ``names`` (``None``: every
        instruction of the device) needs: each of those instructions of the target on a subset
        of ``physical``, and the readout of every qubit. Names the target lacks (``barrier``,
        control flow) need nothing."""
        return self._keys(set(physical), _with_readout(names))

    def _keys(self, live: set[int], names: Iterable[str] | None) -> set[Key]:
        """The target's ``(name, qargs)`` for ``names`` (``None``: all) within ``live``."""
        from .targets import device_target

        target = device_target(self.source)
        out: set[Key] = set()
        for name in target.operation_names if names is None else names:
            if name not in target:
                continue
            for qargs in target[name]:
                if qargs is not None and set(qargs) <= live:
                    out.add((name, qargs))
        return out

    def ensure(self, physical: Iterable[int], names: Iterable[str] | None = None) -> None:
        """Compute and store the errors a job on ``physical`` running ``names`` needs
        (:meth:`needed`) and that are not known yet.

        With a cache file, another process (a classical lane, see :func:`emulator.simulation.
        prepare`) may have computed them since this table was loaded: the file is read again
        first, under a lock, so that each device's errors are computed once, not once per
        worker.
        """
        from . import noise_cache

        needed = self.needed(physical, names)
        if not needed - self.covered:
            return
        if self.path is None:
            self._compute(needed - self.covered)
            return
        with noise_cache.locked(self.path):
            if (data := noise_cache.load(self.path)) is not None:
                self._merge(*data)
            if missing := needed - self.covered:
                self._compute(missing)
                noise_cache.save(self.path, self.gates, self.readout, self.covered)

    def _merge(
        self,
        gates: dict[str, dict[tuple[int, ...], np.ndarray]],
        readout: dict[int, float],
        covered: set[Key],
    ) -> None:
        for name, per_qubits in gates.items():
            self.gates.setdefault(name, {}).update(per_qubits)
        self.readout.update(readout)
        self.covered |= covered

    def _compute(self, missing: set[Key]) -> None:
        """Twirl Aer's errors of the instructions in ``missing`` on their qubits."""
        from .targets import device_error_parts

        qubits = tuple(sorted({q for _, qargs in missing for q in qargs}))
        names = frozenset(name for name, _ in missing)
        try:
            parts, readouts = device_error_parts(self.source, qubits, names)
        except ImportError:  # an Aer without the per-part builders
            self._compute_composed(qubits, names)
        else:
            for name, local, errors in parts:
                # Depolarizing (a diagonal PTM) then relaxation: the composition's diagonal is
                # the product of the diagonals (see device_error_parts).
                diagonal = np.prod([ptm_diagonal(e) for e in errors], axis=0)
                qargs = tuple(qubits[i] for i in local)
                self.gates.setdefault(name, {})[qargs] = _twirl_of_diagonal(diagonal, len(local))
            for local_qubit, readout in readouts:
                self.readout[qubits[local_qubit]] = twirl_readout(readout.probabilities)
        # The errors cover each of these instructions on every qargs within these qubits.
        self.covered |= self._keys(set(qubits), names)

    def _compute_composed(self, qubits: tuple[int, ...], names: frozenset[str]) -> None:
        """:meth:`_compute` from Aer's composed model (``NoiseModel.from_backend``): twice as
        slow, kept for an Aer without the per-part builders, and as the tests' reference."""
        from .targets import device_noise_model_for

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Uncached: the Aer model of 156 qubits is hundreds of MB and only its twirl is kept.
            model = device_noise_model_for.__wrapped__(self.source, qubits, names)
        for name, per_qubits in model._local_quantum_errors.items():
            for local, error in per_qubits.items():
                qargs = tuple(qubits[i] for i in local)
                self.gates.setdefault(name, {})[qargs] = twirl_error(error)
        for local, readout in model._local_readout_errors.items():
            if len(local) == 1:
                self.readout[qubits[local[0]]] = twirl_readout(readout.probabilities)

    def restricted(
        self, physical: tuple[int, ...], names: Iterable[str] | None = None
    ) -> PauliNoise:
        """The table on ``physical`` for the instructions ``names`` (``None``: all),
        renumbered ``0..n-1``.

        Raises:
            LookupError: :meth:`ensure` has not computed all of it: a job must never lose
                noise silently because its table was incomplete.
        """
        from .targets import device_target

        wanted = _with_readout(names)
        if missing := self._keys(set(physical), wanted) - self.covered:
            raise LookupError(
                f"the {self.source} noise table lacks {len(missing)} instruction(s), e.g. "
                f"{min(missing)}: call ensure() first"
            )
        index = {p: i for i, p in enumerate(physical)}
        gates: dict[str, dict[tuple[int, ...], np.ndarray]] = {}
        for name, per_qubits in self.gates.items():
            if wanted is not None and name not in wanted:
                continue
            for qargs, probs in per_qubits.items():
                if all(q in index for q in qargs):
                    gates.setdefault(name, {})[tuple(index[q] for q in qargs)] = probs
        target = device_target(self.source)
        props = target.qubit_properties or [None] * target.num_qubits
        t1 = tuple(_finite(getattr(props[q], "t1", None)) for q in physical)
        t2 = tuple(_finite(getattr(props[q], "t2", None)) for q in physical)
        return PauliNoise(
            physical=physical,
            gates=gates,
            readout=tuple(self.readout.get(q, 0.0) for q in physical),
            t1=t1,
            t2=t2,
            dt=target.dt,
            basis_gates=tuple(n for n in target.operation_names if n not in _CONTROL_FLOW),
        )


_CONTROL_FLOW = frozenset({"if_else", "while_loop", "for_loop", "switch_case", "box"})


def _finite(value: float | None) -> float:
    return float(value) if value else float("inf")


@cache
def table_for(source: str, cache_dir: Path | None) -> DeviceTable:
    """This process's table of ``source`` (read from ``cache_dir`` when there is one)."""
    return DeviceTable(source, cache_dir)


@lru_cache(maxsize=64)
def pauli_noise_for(
    source: str,
    physical: tuple[int, ...],
    cache_dir: Path | None = None,
    names: frozenset[str] | None = None,
) -> PauliNoise:
    """The twirled device noise on ``physical`` (renumbered ``0..n-1``) of the instructions
    ``names`` (``None``: all of the device's; see :func:`instruction_names`), cached per
    process; ``cache_dir`` keeps the device's table across starts (``None``: this process
    only)."""
    table = table_for(source, cache_dir)
    table.ensure(physical, names)
    return table.restricted(physical, names)
