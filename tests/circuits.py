"""Circuits the tests share (logical, not yet transpiled for a device)."""

from __future__ import annotations

import json
from typing import Any

from qiskit import QuantumCircuit
from qiskit.primitives.containers.sampler_pub import SamplerPub
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime.json import RuntimeEncoder

from emulator.backends import device_target

__all__ = ["bell", "ghz", "params_json", "rotated_bell", "sampler_params", "to_isa"]


def bell(measure: bool = True) -> QuantumCircuit:
    """The Bell state (|00> + |11>)/sqrt(2), measured into ``meas`` unless ``measure=False``."""
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    if measure:
        qc.measure_all()
    return qc


def rotated_bell(measure: bool = True) -> QuantumCircuit:
    """A Bell pair whose first rotation is a parameter: ``ry(theta)`` on qubit 0, then
    ``cx(0, 1)`` (theta = 0 gives |00>, theta = pi gives |11>); measured into ``meas`` unless
    ``measure=False``."""
    from qiskit.circuit import Parameter

    qc = QuantumCircuit(2)
    qc.ry(Parameter("theta"), 0)
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


def to_isa(circuit: QuantumCircuit, source: str = "fez") -> QuantumCircuit:
    """``circuit`` transpiled for the device snapshot ``source`` (e.g. ``fez``, ``manila``)."""
    pm = generate_preset_pass_manager(
        optimization_level=1, target=device_target(source), seed_transpiler=11
    )
    return pm.run(circuit)


def params_json(pubs: list[Any], options: dict[str, Any] | None = None, **extra: Any) -> str:
    """What the official client sends as ``params`` (spec 4.1)."""
    body = {"pubs": pubs, "options": options or {}, "version": 2, "support_qiskit": True}
    body.update(extra)
    return json.dumps(body, cls=RuntimeEncoder)


def sampler_params(pubs: list[tuple[Any, ...]], options: dict[str, Any] | None = None) -> str:
    return params_json([SamplerPub.coerce(p) for p in pubs], options)
