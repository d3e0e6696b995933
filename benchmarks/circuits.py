"""The circuits, parameters and Hamiltonian the workloads send (ISA for the backend's target)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.quantum_info import SparsePauliOp
    from qiskit.transpiler import Target

__all__ = ["VqeProblem", "su2_pubs", "trivial_pub", "vqe_problem"]


def _transpile(circuit: QuantumCircuit, target: Target) -> QuantumCircuit:
    from qiskit.transpiler import generate_preset_pass_manager

    pm = generate_preset_pass_manager(optimization_level=1, target=target, seed_transpiler=7)
    return pm.run(circuit)


def su2_pubs(
    target: Target, *, n: int, qubits: int = 8, reps: int = 2, seed: int = 1234
) -> tuple[QuantumCircuit, list[np.ndarray]]:
    """``efficient_su2(qubits, reps)`` + ``measure_all`` transpiled for ``target``, and ``n``
    parameter vectors drawn uniformly from [0, 2π)."""
    from qiskit.circuit.library import efficient_su2

    circuit = efficient_su2(qubits, reps=reps)
    circuit.measure_all()
    isa = _transpile(circuit, target)
    rng = np.random.default_rng(seed)
    return isa, [rng.uniform(0, 2 * np.pi, circuit.num_parameters) for _ in range(n)]


def trivial_pub(target: Target) -> QuantumCircuit:
    """The trivial job: one qubit, a Hadamard, a measurement (ISA for ``target``)."""
    from qiskit import QuantumCircuit

    circuit = QuantumCircuit(1)
    circuit.h(0)
    circuit.measure_all()
    return _transpile(circuit, target)


@dataclass(frozen=True, slots=True)
class VqeProblem:
    ansatz: QuantumCircuit  # ISA
    hamiltonian: SparsePauliOp  # laid out for the ISA ansatz
    x0: np.ndarray

    def pub(self, x: Any) -> tuple[QuantumCircuit, SparsePauliOp, np.ndarray]:
        return (self.ansatz, self.hamiltonian, np.asarray(x, dtype=float))


def vqe_problem(target: Target, *, qubits: int = 4, seed: int = 1234) -> VqeProblem:
    """A transverse-field Ising chain, ``H = -Σ Z_i Z_{i+1} - 0.5 Σ X_i`` on ``qubits`` qubits,
    with a hardware-efficient ansatz of RY rotations and a CX chain
    (``efficient_su2(qubits, reps=1, su2_gates=["ry"])``, ``2 x qubits`` parameters: COBYLA
    needs at least parameters + 2 evaluations)."""
    from qiskit.circuit.library import efficient_su2
    from qiskit.quantum_info import SparsePauliOp

    terms = []
    for i in range(qubits - 1):
        label = ["I"] * qubits
        label[i] = label[i + 1] = "Z"
        terms.append(("".join(label), -1.0))
    for i in range(qubits):
        label = ["I"] * qubits
        label[i] = "X"
        terms.append(("".join(label), -0.5))
    hamiltonian = SparsePauliOp.from_list(terms)
    ansatz = efficient_su2(qubits, reps=1, su2_gates=["ry"])
    isa = _transpile(ansatz, target)
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0, 2 * np.pi, ansatz.num_parameters)
    return VqeProblem(isa, hamiltonian.apply_layout(isa.layout), x0)
