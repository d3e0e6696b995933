"""The predicted cost of simulating a circuit, and Aer's method for it.

Why predict: the emulator has one QPU per backend, so a job that would simulate for an hour
(a noisy 20-qubit circuit costs about a second per shot on Aer) holds everyone else up. The
prediction uses only the circuit's shape (width, instructions, two-qubit gates, whether it
measures mid-circuit), the shots and parameter sets, and the noise level, so pre-processing can
refuse such a job before it reaches the QPU. The constants were measured on the development
machine (2 cores; see ``benchmarks/README.md``, "Noise levels") and are good to a factor of a
few: enough to tell a second from an hour, which is all the budget needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

__all__ = ["COSTS", "CostModel", "Shape", "aer_method", "predict", "shape_of"]


@dataclass(frozen=True, slots=True)
class CostModel:
    """Seconds per unit of work, measured on the development machine (2 cores, see
    ``benchmarks/README.md``). Good to a factor of a few, depending on the machine's load."""

    run_s: float = 0.02
    """Fixed cost of one Aer run (building the simulator, transpiling to its basis)."""
    stim_binding_s: float = 2e-3
    stim_instruction_s: float = 12e-6
    """Converting one instruction (and its noise channel) to Stim text, per parameter set."""
    stim_sample_s: float = 3e-9
    """Per instruction and shot."""
    sv_amplitude_s: float = 3.5e-9
    """Per instruction and state-vector amplitude, for one ideal run."""
    trajectory_instruction_s: float = 5e-6
    trajectory_amplitude_s: float = 5e-9
    """Per shot of a noisy (or mid-circuit-measured) state vector: per instruction, and per
    instruction and amplitude."""
    dm_instruction_s: float = 5e-3
    dm_element_s: float = 7e-9
    """Density matrix (one run for all shots): per instruction (Aer turns each noisy
    instruction's error into a superoperator), and per instruction and matrix element."""
    mps_instruction_s: float = 5e-4
    mps_chi3_s: float = 1e-8
    """Matrix product state: per instruction, and per two-qubit gate and bond dimension cubed."""


COSTS = CostModel()


@dataclass(frozen=True, slots=True)
class Shape:
    width: int
    instructions: int
    two_qubit: int
    bond: int
    """An upper bound of the MPS bond dimension (2^ gates crossing the worst cut)."""
    terminal: bool
    """Measurements only at the end: an ideal run can sample every shot from one state."""


def shape_of(circuit: QuantumCircuit) -> Shape:
    index = {q: i for i, q in enumerate(circuit.qubits)}
    n = circuit.num_qubits
    crossing = [0] * (n + 1)
    instructions = two = 0
    measured: set[int] = set()
    terminal = True
    for inst in circuit.data:
        name = inst.operation.name
        if name == "barrier":
            continue
        instructions += 1
        qubits = [index[q] for q in inst.qubits]
        if name == "measure":
            measured.update(qubits)
            continue
        if measured.intersection(qubits) or getattr(inst.operation, "blocks", None):
            terminal = False
        if len(qubits) >= 2:
            two += 1
            lo, hi = min(qubits), max(qubits)
            for k in range(lo + 1, hi + 1):
                crossing[k] += 1
    exponent = max((min(crossing[k], k, n - k) for k in range(1, n)), default=0)
    return Shape(n, instructions, two, 2 ** min(exponent, 62), terminal)


def predict(method: str, shape: Shape, shots: int, bindings: int, noisy: bool) -> float:
    c = COSTS
    if method == "stim":
        convert = c.stim_binding_s + c.stim_instruction_s * shape.instructions
        return bindings * (convert + c.stim_sample_s * shape.instructions * shots)
    if method == "density_matrix":
        per = shape.instructions * (c.dm_instruction_s + 4.0**shape.width * c.dm_element_s)
        return c.run_s + bindings * per
    runs = bindings * (shots if noisy or not shape.terminal else 1)
    if method == "statevector":
        amplitudes = 2.0**shape.width
        if noisy or not shape.terminal:
            per_instruction = c.trajectory_instruction_s + amplitudes * c.trajectory_amplitude_s
            per = shape.instructions * per_instruction
        else:
            per = shape.instructions * amplitudes * c.sv_amplitude_s
        return c.run_s + runs * per
    per = shape.instructions * c.mps_instruction_s + shape.two_qubit * shape.bond**3 * c.mps_chi3_s
    return c.run_s + runs * per


def aer_method(shape: Shape, shots: int, noisy: bool, max_memory_mb: int) -> str:
    """Aer's own rule for its ``automatic`` method, made explicit so it can be predicted: a
    noisy circuit measured at the end whose shots outnumber its amplitudes is cheaper as one
    density matrix than as a trajectory per shot."""
    memory = max_memory_mb * 2**20
    if noisy and shape.terminal and shots > 2**shape.width and 16 * 4.0**shape.width <= memory:
        return "density_matrix"
    return "statevector" if 16 * 2.0**shape.width <= memory else "matrix_product_state"
