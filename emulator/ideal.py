"""The QPU's path for noiseless circuits measured only at their end: Aer computes each
circuit's exact outcome probabilities once per parameter set, and numpy draws the shots.

Aer's ``SamplerV2`` samples such circuits the same way inside (it "measure-samples" the final
state), but returns every shot as a hex string that its Python wrapper then parses one by one:
an Estimator job's two 4-qubit measurement circuits at 4096 shots each took 12 ms on the QPU
worker, about 9 of them in that parsing (``benchmarks/README.md``). Here Aer returns one
probability vector per parameter set (``save_probabilities`` over the measured qubits) and the
shots are ``numpy`` draws from it: about 2 ms for the same job. The shots are independent draws
from the circuit's Born distribution either way, reproducible from the job's
``seed_simulator``; only the random stream differs from Aer's.

Anything else goes to Aer's sampler as before (:func:`sample_pubs` returns ``None``): a noise
model, a measurement followed by anything on its qubit, a clbit written twice, resets, control
flow and other non-gate instructions, parameterless circuits with several parameter sets, and
probability vectors too big to hold (:data:`MAX_PROBABILITIES`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from .derived import derived

if TYPE_CHECKING:
    from qiskit.circuit import QuantumCircuit
    from qiskit.primitives.containers import BitArray, DataBin
    from qiskit.primitives.containers.sampler_pub import SamplerPub

__all__ = ["MAX_PROBABILITIES", "data_bin", "sample_pubs", "terminal_measurements"]

#: The most probabilities (parameter sets x 2^measured qubits) one run may return: 32 MiB of
#: float64. Above it, Aer's own sampler (whose memory does not grow with the measured qubits).
MAX_PROBABILITIES = 2**22

#: Instructions that are not gates but leave an ideal final state's distribution alone.
_PASSIVE = frozenset({"barrier", "delay"})


def terminal_measurements(circuit: QuantumCircuit) -> list[tuple[int, int]] | None:
    """``(qubit, clbit)`` indices of the circuit's measurements when every one comes after the
    last operation on its qubit and writes its own clbit, and everything else is a gate (or a
    barrier or delay); ``None`` otherwise."""
    from qiskit.circuit import Gate

    qubit_index = {bit: k for k, bit in enumerate(circuit.qubits)}
    clbit_index = {bit: k for k, bit in enumerate(circuit.clbits)}
    measured: dict[int, int] = {}
    written: set[int] = set()
    for instruction in circuit.data:
        operation = instruction.operation
        name = operation.name
        if name == "measure":
            qubit, clbit = qubit_index[instruction.qubits[0]], clbit_index[instruction.clbits[0]]
            if qubit in measured or clbit in written:
                return None
            measured[qubit] = clbit
            written.add(clbit)
        elif name in _PASSIVE:
            continue
        elif instruction.clbits or not isinstance(operation, Gate):
            return None  # reset, control flow, initialize, store...
        elif any(qubit_index[q] in measured for q in instruction.qubits):
            return None  # a gate after a measurement
    return list(measured.items())


def sample_pubs(
    pubs: Sequence[SamplerPub], seed: int | None, *, max_threads: int, max_memory_mb: int
) -> list[DataBin] | None:
    """Sample noiseless ``pubs`` from their exact distributions: one ``DataBin`` per PUB, as
    Aer's ``SamplerV2`` returns it, or ``None`` when any of them needs Aer's sampler (see the
    module's docstring).

    Raises:
        AerError: Aer cannot simulate a circuit (e.g. out of memory).
    """
    plans = []
    for pub in pubs:
        plan = _ideal(pub.circuit)
        sets = pub.parameter_values.size
        if plan is None or sets == 0 or (not pub.circuit.num_parameters and sets != 1):
            return None
        if sets * 2 ** len(plan.found) > MAX_PROBABILITIES:
            return None
        plans.append(plan)
    probabilities = _probabilities(pubs, plans, max_threads, max_memory_mb)
    rng = np.random.default_rng(seed)
    data = []
    for pub, plan, rows in zip(pubs, plans, probabilities, strict=True):
        shots, shape = int(pub.shots), tuple(pub.parameter_values.shape)
        draws = [rng.choice(p.size, size=shots, p=p / p.sum()) for p in rows]
        if plan.tables is not None:
            data.append(_from_tables(plan.tables, draws, shape, shots))
            continue
        bits = []
        for outcomes in draws:
            row = np.zeros((shots, pub.circuit.num_clbits), dtype=bool)
            for k, (_, clbit) in enumerate(plan.found):  # qubit k of the vector is bit k
                row[:, clbit] = (outcomes >> k) & 1
            bits.append(row)
        data.append(data_bin(pub.circuit, shape, shots, bits))
    return data


def _from_tables(
    tables: dict[str, tuple[np.ndarray, int]],
    draws: Sequence[np.ndarray],
    shape: tuple[int, ...],
    shots: int,
) -> DataBin:
    """The ``DataBin`` of one PUB from its drawn outcomes (one array per parameter set): each
    register's bytes looked up per outcome (:attr:`_Ideal.tables`)."""
    from qiskit.primitives.containers import DataBin

    meas = {
        name: _bit_array([table[outcomes] for outcomes in draws], shape, shots, num_bits)
        for name, (table, num_bits) in tables.items()
    }
    return DataBin(**meas, shape=shape)


def _probabilities(
    pubs: Sequence[SamplerPub],
    plans: Sequence[_Ideal],
    max_threads: int,
    max_memory_mb: int,
) -> list[list[np.ndarray]]:
    """One Aer run for all ``pubs``: per PUB, the measured qubits' probabilities for each of
    its parameter sets (in the order of ``parameter_values``, flattened)."""
    from qiskit_aer.aererror import AerError

    circuits = []
    binds: list[dict[Any, Any]] = []
    for pub, plan in zip(pubs, plans, strict=True):
        circuits.append(plan.unmeasured)
        # As Aer's SamplerV2 binds a PUB's parameter sets: one array of values per parameter.
        values = pub.parameter_values.as_array(pub.circuit.parameters)
        binds.append({p: values[..., k].ravel() for k, p in enumerate(pub.circuit.parameters)})
    simulator = _simulator(max_threads, max_memory_mb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = simulator.run(circuits, shots=1, parameter_binds=binds).result()
    if not result.success:
        raise AerError(f"Aer simulation failed: {result.status}")
    experiments = iter(result.results)
    rows = []
    for pub in pubs:
        rows.append(
            [np.asarray(next(experiments).data.p) for _ in range(pub.parameter_values.size)]
        )
    return rows


@cache
def _simulator(max_threads: int, max_memory_mb: int) -> Any:
    """One statevector simulator per setting, reused by every run (making one took 0.1 ms)."""
    from qiskit_aer import AerSimulator

    return AerSimulator(
        method="statevector", max_parallel_threads=max_threads, max_memory_mb=max_memory_mb
    )


#: The most bytes of lookup tables one circuit's registers may take (:attr:`_Ideal.tables`).
_TABLE_BYTES = 2**20


@dataclass(frozen=True, slots=True)
class _Ideal:
    """What the ideal path needs of a circuit whose measurements are terminal."""

    found: list[tuple[int, int]]
    """:func:`terminal_measurements`: ``(qubit, clbit)``; qubit ``k`` of the probability
    vector is the ``k``-th of them."""
    unmeasured: Any
    """The circuit without its measurements, saving the measured qubits' probabilities."""
    tables: dict[str, tuple[np.ndarray, int]] | None
    """Per classical register, its packed bytes (as ``BitArray`` holds them) for each outcome
    of the probability vector, and its width; ``None`` when they would take more than
    :data:`_TABLE_BYTES` (the shots' bits are then set one measured qubit at a time). A
    draw's bits are one lookup: 0.27 -> 0.11 ms for 4096 shots of 4 bits."""


def _ideal(circuit: QuantumCircuit) -> _Ideal | None:
    """The ideal path's plan of ``circuit`` (``None`` when its measurements are not terminal),
    once per circuit (the QPU's worker opens a repeated circuit into the same object)."""

    def compute() -> _Ideal | None:
        import qiskit_aer.library  # noqa: F401  (QuantumCircuit.save_probabilities)

        found = terminal_measurements(circuit)
        if found is None:
            return None
        unmeasured = circuit.copy_empty_like()
        for instruction in circuit.data:
            if instruction.operation.name != "measure":
                unmeasured._append(instruction)
        unmeasured.save_probabilities([qubit for qubit, _ in found], label="p")
        return _Ideal(found, unmeasured, _tables(circuit, found))

    return derived(circuit, "ideal", compute)


def _tables(
    circuit: QuantumCircuit, found: list[tuple[int, int]]
) -> dict[str, tuple[np.ndarray, int]] | None:
    outcomes = 2 ** len(found)
    widths = [(len(creg) + 7) // 8 for creg in circuit.cregs]
    if outcomes * sum(widths) > _TABLE_BYTES:
        return None
    index = np.arange(outcomes)
    bit_of = {clbit: k for k, (_, clbit) in enumerate(found)}
    tables = {}
    for creg, nbytes in zip(circuit.cregs, widths, strict=True):
        table = np.zeros((outcomes, nbytes), dtype=np.uint8)
        for position, bit in enumerate(creg):
            k = bit_of.get(circuit.find_bit(bit).index)
            if k is not None:  # BitArray: big-endian bytes, bit 0 the last byte's lowest
                bits = ((index >> k) & 1) << (position % 8)
                table[:, nbytes - 1 - position // 8] |= bits.astype(np.uint8)
        tables[creg.name] = (table, len(creg))
    return tables


def data_bin(
    circuit: QuantumCircuit, shape: tuple[int, ...], shots: int, rows: Sequence[np.ndarray]
) -> DataBin:
    """A ``DataBin`` with one ``BitArray`` per classical register of ``circuit``, shaped like the
    PUB (``shape``), as Aer's ``SamplerV2`` returns it, from one ``(shots, num_clbits)`` array
    of booleans per parameter set (``rows``, in the flattened order of ``shape``)."""
    from qiskit.primitives.containers import BitArray, DataBin

    meas = {}
    for creg in circuit.cregs:
        clbits = [circuit.find_bit(b).index for b in creg]
        arrays = [BitArray.from_bool_array(bits[:, clbits], order="little").array for bits in rows]
        meas[creg.name] = _bit_array(arrays, shape, shots, len(clbits))
    return DataBin(**meas, shape=shape)


def _bit_array(
    rows: Sequence[np.ndarray], shape: tuple[int, ...], shots: int, num_bits: int
) -> BitArray:
    """One register's ``BitArray`` shaped like the PUB, from its packed bytes per parameter set
    (``(shots, bytes)`` each, in the flattened order of ``shape``)."""
    from qiskit.primitives.containers import BitArray

    nbytes = (num_bits + 7) // 8
    # A PUB with no parameter sets (shape (0,)) has no rows: an empty array of its shape.
    stacked = np.stack(rows) if rows else np.zeros((0, shots, nbytes), np.uint8)
    return BitArray(stacked.reshape((*shape, shots, nbytes)), num_bits)
