"""Circuits the tests share (logical, not yet transpiled for a device)."""

from __future__ import annotations

from qiskit import QuantumCircuit

__all__ = ["bell", "ghz"]


def bell(measure: bool = True) -> QuantumCircuit:
    """The Bell state (|00> + |11>)/sqrt(2), measured into ``meas`` unless ``measure=False``."""
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    if measure:
        qc.measure_all()
    return qc


def ghz(n: int, measure: bool = True) -> QuantumCircuit:
    """The n-qubit GHZ state, measured into ``meas`` unless ``measure=False``."""
    qc = QuantumCircuit(n)
    qc.h(0)
    for q in range(n - 1):
        qc.cx(q, q + 1)
    if measure:
        qc.measure_all()
    return qc
