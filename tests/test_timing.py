"""The QPU time model (timing-and-scheduling.md section 2)."""

from __future__ import annotations

import pickle

import pytest
from circuits import bell, rotated_bell
from qiskit import QuantumCircuit
from qiskit.circuit.library import efficient_su2
from qiskit.transpiler import generate_preset_pass_manager

from emulator.backends import device_target
from emulator.timing import (
    TimingParams,
    _asap_duration_s,
    circuit_duration_s,
    quantum_seconds,
    subjob_count,
)


def isa(circuit: QuantumCircuit, source: str = "fez") -> QuantumCircuit:
    pm = generate_preset_pass_manager(
        optimization_level=1, target=device_target(source), seed_transpiler=7
    )
    return pm.run(circuit)


def test_formula_by_hand() -> None:
    params = TimingParams(overhead_s=2.0, init_s=1e-4)
    got = quantum_seconds([(2e-6, 1000), (5e-6, 300)], rep_delay_s=250e-6, params=params, subjobs=2)
    want = 2 * 2.0 + 1000 * (250e-6 + 1e-4 + 2e-6) + 300 * (250e-6 + 1e-4 + 5e-6)
    assert got == pytest.approx(want, rel=1e-12)
    assert quantum_seconds([], rep_delay_s=250e-6, params=params, subjobs=1) == 2.0


def test_params_are_frozen_keyword_only_and_pickle() -> None:
    params = TimingParams(overhead_s=0.5)
    assert pickle.loads(pickle.dumps(params)) == params
    with pytest.raises(TypeError):
        TimingParams(1.0)  # type: ignore[call-arg]
    with pytest.raises(AttributeError):
        params.overhead_s = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("circuits", "per", "want"),
    [(0, 300, 1), (1, 300, 1), (300, 300, 1), (301, 300, 2), (900, 75, 12)],
)
def test_subjob_count(circuits: int, per: int, want: int) -> None:
    assert subjob_count(circuits, per) == want


def test_bell_duration_is_qiskits_estimate() -> None:
    target = device_target("fez")
    circuit = isa(bell())
    duration = circuit_duration_s(circuit, target)
    assert duration == pytest.approx(circuit.estimate_duration(target, unit="s"))
    # one cz (84 ns), a few sx (24 ns) and a readout (1.56 µs) on Heron r2
    assert 1.5e-6 < duration < 2.0e-6
    assert _asap_duration_s(circuit, target, list(range(circuit.num_qubits))) == pytest.approx(
        duration
    )


def test_parameterised_circuit_needs_no_binding() -> None:
    circuit = isa(rotated_bell())
    target = device_target("fez")
    unbound = circuit_duration_s(circuit, target)
    bound = circuit_duration_s(circuit.assign_parameters([0.3]), target)
    assert unbound == pytest.approx(bound) and unbound > 1e-6


def test_control_flow_falls_back_to_asap() -> None:
    target = device_target("fez")
    qc = QuantumCircuit(2, 2)
    qc.sx(0)
    qc.measure(0, 0)
    with qc.if_test((qc.clbits[0], 1)):
        qc.x(1)
        qc.x(1)
    qc.measure(1, 1)
    readout = target["measure"][(0,)].duration
    x = target["x"][(1,)].duration
    sx = target["sx"][(0,)].duration
    assert circuit_duration_s(qc, target) == pytest.approx(sx + readout + 2 * x + readout)


def test_delays_count() -> None:
    target = device_target("fez")
    qc = QuantumCircuit(1, 1)
    qc.delay(1000, 0, unit="dt")
    qc.delay(2, 0, unit="us")
    qc.measure(0, 0)
    want = 1000 * target.dt + 2e-6 + target["measure"][(0,)].duration
    assert circuit_duration_s(qc, target) == pytest.approx(want)


@pytest.mark.parametrize(("source", "width"), [("fez", 10), ("manila", 5)])
def test_typical_circuit_lands_near_350_us_per_execution(source: str, width: int) -> None:
    """IBM's rule of thumb: 2 s + 350 µs per execution, with the default 250 µs rep_delay."""
    qc = efficient_su2(width, reps=3)
    qc.measure_all()
    duration = circuit_duration_s(isa(qc, source), device_target(source))
    per_execution = 250e-6 + TimingParams().init_s + duration
    assert 340e-6 <= per_execution <= 365e-6
    total = quantum_seconds(
        [(duration, 10_000)], rep_delay_s=250e-6, params=TimingParams(), subjobs=1
    )
    assert total == pytest.approx(2 + 0.00035 * 10_000, rel=0.03)
