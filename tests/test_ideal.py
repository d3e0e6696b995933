"""The QPU's path for noiseless circuits measured at their end (``emulator.ideal``): exact
probabilities from Aer, shots drawn by numpy; everything else stays on Aer's sampler."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from circuits import params_json
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit import Parameter
from qiskit.primitives.containers.estimator_pub import EstimatorPub
from qiskit.primitives.containers.sampler_pub import SamplerPub
from qiskit.quantum_info import SparsePauliOp, Statevector
from qiskit_aer.primitives import SamplerV2 as AerSampler

from emulator import ideal
from emulator.classical import postprocess, preprocess, sample
from emulator.simulation import NoiseLevel, SimulationPlan, run
from emulator.targets import device_target

SETTINGS: dict[str, Any] = {"max_threads": 1, "max_memory_mb": 1024}


def pub(circuit: QuantumCircuit, values: Any = None, shots: int = 4000) -> SamplerPub:
    return SamplerPub.coerce((circuit, values, shots))


def exact(circuit: QuantumCircuit, clbits: list[int]) -> dict[str, float]:
    """The exact distribution of ``clbits`` (listed as ``get_counts`` writes them, most
    significant first) for a circuit whose measurements are terminal."""
    found = {c: q for q, c in ideal.terminal_measurements(circuit) or []}
    probs = Statevector(circuit.remove_final_measurements(inplace=False)).probabilities_dict(
        [found[c] for c in reversed(clbits)]  # qargs[0] is the least significant bit
    )
    return {key: p for key, p in probs.items() if p > 0}


def close(counts: dict[str, int], want: dict[str, float], shots: int) -> None:
    """Every outcome's count within 5 standard deviations of its expectation, and nothing
    outside the support."""
    assert set(counts) <= set(want)
    for key, p in want.items():
        sigma = math.sqrt(shots * p * (1 - p))
        assert abs(counts.get(key, 0) - shots * p) <= 5 * sigma + 1, (key, counts, want)


def two_registers() -> QuantumCircuit:
    """Three qubits in an entangled non-Clifford state, measured into two registers in a
    shuffled order, with one clbit (``b[1]``) never written and a deterministic qubit."""
    a, b = ClassicalRegister(2, "a"), ClassicalRegister(10, "b")
    qc = QuantumCircuit(QuantumRegister(4), a, b)
    qc.ry(0.7, 0)
    qc.cx(0, 1)
    qc.rx(1.1, 2)
    qc.x(3)
    qc.barrier()
    qc.measure(0, b[9])
    qc.measure(1, a[0])
    qc.measure(2, b[0])
    qc.measure(3, a[1])
    return qc


def test_terminal_measurements_are_recognised() -> None:
    qc = two_registers()
    assert ideal.terminal_measurements(qc) == [(0, 11), (1, 0), (2, 2), (3, 1)]
    gate_after = qc.copy()
    gate_after.x(0)  # a gate on a measured qubit
    reset = QuantumCircuit(1, 1)
    reset.reset(0)
    reset.measure(0, 0)
    twice = QuantumCircuit(2, 1)
    twice.measure(0, 0)
    twice.measure(1, 0)  # the same clbit written twice
    conditional = QuantumCircuit(2, 2)
    conditional.measure(0, 0)
    with conditional.if_test((conditional.clbits[0], 1)):
        conditional.x(1)
    conditional.measure(1, 1)
    for circuit in (gate_after, reset, twice, conditional):
        assert ideal.terminal_measurements(circuit) is None
    # a gate on another qubit after a measurement is still fine
    later = QuantumCircuit(2, 1)
    later.measure(0, 0)
    later.h(1)
    assert ideal.terminal_measurements(later) == [(0, 0)]


def test_shots_follow_the_exact_distribution_in_every_register() -> None:
    qc = two_registers()
    (data,) = ideal.sample_pubs([pub(qc)], 7, **SETTINGS) or []
    assert set(data.keys()) == {"a", "b"}
    assert data.a.num_shots == data.b.num_shots == 4000
    assert data.a.num_bits == 2 and data.b.num_bits == 10
    a, b = data.a.get_counts(), data.b.get_counts()
    # a[1] is the X'd qubit: always 1; b[1..8] are never written: always 0
    assert all(key[0] == "1" for key in a)
    assert all(key[1:9] == "0" * 8 for key in b)
    close(a, exact(qc, [1, 0]), 4000)  # "a" reads a[1] a[0]
    written: dict[str, int] = {}
    for key, count in b.items():  # b[9] and b[0]
        written[key[0] + key[-1]] = written.get(key[0] + key[-1], 0) + count
    close(written, exact(qc, [11, 2]), 4000)
    # the joint distribution is kept shot by shot: b[9] (qubit 0) and a[0] (qubit 1) agree
    joint = data.a.slice_bits([0]).array == data.b.slice_bits([9]).array
    assert joint.all()


def test_the_layout_of_the_bits_is_aers() -> None:
    """Deterministic outcomes (non-Clifford gates that cancel) in two registers, one wider
    than a byte: the same arrays, bit for bit, as Aer's SamplerV2 returns."""
    qc = QuantumCircuit(QuantumRegister(3), ClassicalRegister(3, "low"), ClassicalRegister(9, "hi"))
    qc.rz(0.3, 0)
    qc.x(0)
    qc.rz(-0.3, 0)
    qc.x(2)
    qc.measure(0, 1)
    qc.measure(1, 0)
    qc.measure(2, 11)
    (ours,) = ideal.sample_pubs([pub(qc, shots=5)], 1, **SETTINGS) or []
    theirs = AerSampler(seed=1).run([(qc, None, 5)]).result()[0].data
    for name in ("low", "hi"):
        assert np.array_equal(ours[name].array, theirs[name].array), name
        assert ours[name].num_bits == theirs[name].num_bits


def test_parameter_sets_each_follow_their_own_distribution() -> None:
    theta, phi = Parameter("theta"), Parameter("phi")
    qc = QuantumCircuit(2)
    qc.ry(theta, 0)
    qc.cx(0, 1)
    qc.rx(phi, 1)
    qc.measure_all()
    values = np.array([[[0.3, 0.0], [1.2, 0.4], [2.0, 2.5]], [[0.9, 1.7], [0.1, 3.0], [2.8, 0.2]]])
    (data,) = ideal.sample_pubs([pub(qc, values)], 3, **SETTINGS) or []
    assert data.shape == (2, 3) and data.meas.array.shape == (2, 3, 4000, 1)
    for index in np.ndindex(2, 3):
        bound = qc.assign_parameters(values[index])
        close(data.meas[index].get_counts(), exact(bound, [1, 0]), 4000)


def test_the_seed_reproduces_the_shots() -> None:
    qc = two_registers()

    def shots(seed: int | None) -> np.ndarray:
        (data,) = ideal.sample_pubs([pub(qc, shots=300)], seed, **SETTINGS) or []
        return np.asarray(data.b.array)

    assert np.array_equal(shots(5), shots(5))
    assert not np.array_equal(shots(5), shots(6))
    assert not np.array_equal(shots(None), shots(None))


def test_what_the_path_cannot_take_goes_to_aers_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    mid = QuantumCircuit(2, 2)
    mid.h(0)
    mid.measure(0, 0)
    mid.cx(0, 1)
    mid.measure(1, 1)
    fine = two_registers()
    # one PUB that cannot take the path sends all of them to Aer's sampler
    assert ideal.sample_pubs([pub(fine), pub(mid)], 1, **SETTINGS) is None
    # a parameterless circuit with several parameter sets
    assert ideal.sample_pubs([pub(fine, np.zeros((3, 0)))], 1, **SETTINGS) is None
    # more probabilities than the bound (2 sets x 2^4 here)
    theta = Parameter("t")
    wide = QuantumCircuit(4)
    wide.ry(theta, range(4))
    wide.measure_all()
    monkeypatch.setattr(ideal, "MAX_PROBABILITIES", 31)
    assert ideal.sample_pubs([pub(wide, [[0.1], [0.2]])], 1, **SETTINGS) is None
    monkeypatch.setattr(ideal, "MAX_PROBABILITIES", 32)
    assert ideal.sample_pubs([pub(wide, [[0.1], [0.2]])], 1, **SETTINGS) is not None
    # and the QPU's run still samples the mid-circuit measurement, on Aer
    plan = SimulationPlan(NoiseLevel.NONE, ("statevector", "statevector"), 1.0)
    data, _ = run([pub(fine), pub(mid)], [(0, 1, 2, 3), (0, 1)], "fez", plan, seed=2)
    counts = data[1].c.get_counts()
    assert set(counts) == {"00", "11"}
    close(counts, {"00": 0.5, "11": 0.5}, 4000)


def test_an_estimator_job_takes_the_path_and_its_values_are_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default level (none): an Estimator job's measurement circuits are non-Clifford, so
    not Stim's, and are sampled from their exact probabilities, never by Aer's sampler."""
    from qiskit.transpiler import generate_preset_pass_manager

    def no_aer_sampler(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Aer's sampler was used")

    monkeypatch.setattr("emulator.simulation._aer", no_aer_sampler)
    qc = QuantumCircuit(3)
    qc.ry(0.4, 0)
    qc.cx(0, 1)
    qc.ry(1.3, 2)
    qc.cx(1, 2)
    pm = generate_preset_pass_manager(optimization_level=1, target=device_target("fez"))
    isa = pm.run(qc)
    observable = SparsePauliOp.from_list([("ZZI", 1.0), ("IXX", 0.5), ("YIZ", -0.3)])
    pubs = [EstimatorPub.coerce((isa, observable.apply_layout(isa.layout)))]
    params = params_json(pubs, {"simulator": {"seed_simulator": 4}})
    prepared = preprocess("estimator", params, "fez")
    assert prepared.simulation is not None
    assert set(prepared.simulation.methods) == {"statevector"}
    result = postprocess(prepared, sample(prepared), *_instants())
    from aioruntime.protocol import loads

    (pub_result,) = loads(result)
    want = Statevector(qc).expectation_value(observable).real
    ev, std = float(pub_result.data.evs), float(pub_result.data.stds)
    assert 0 < std <= 0.03
    assert abs(ev - want) <= 5 * std


def _instants() -> tuple[Any, Any]:
    from datetime import UTC, datetime, timedelta

    start = datetime(2026, 1, 2, tzinfo=UTC)
    return start, start + timedelta(seconds=1)


def test_a_repeated_circuit_is_prepared_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """An optimizer's loop sends the QPU the same circuit object with new values: its
    measurements are read and its measurement-free copy built once, and each job still gets
    its own values' distribution."""
    calls: list[QuantumCircuit] = []
    real = ideal.terminal_measurements

    def counted(circuit: QuantumCircuit) -> list[tuple[int, int]] | None:
        calls.append(circuit)
        return real(circuit)

    monkeypatch.setattr(ideal, "terminal_measurements", counted)
    theta = Parameter("theta")
    qc = QuantumCircuit(1, 1)
    qc.ry(theta, 0)
    qc.measure(0, 0)
    for value in (0.4, 2.5, 0.4):
        (data,) = ideal.sample_pubs([pub(qc, [value])], 9, **SETTINGS) or []
        one = math.sin(value / 2) ** 2
        close(data.c.get_counts(), {"0": 1 - one, "1": one}, 4000)
    assert calls == [qc]


def test_the_lookup_tables_give_the_bits_of_setting_them_one_by_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A register's bytes looked up per drawn outcome are the bytes of setting each measured
    clbit and packing: the same arrays, bit for bit, for the same seed (registers of one and
    two bytes, unwritten clbits, a parameter grid)."""
    theta = Parameter("theta")
    qc = two_registers()
    qc.data.insert(0, qc.data[0].replace(operation=qc.data[0].operation.__class__(theta)))
    values = np.array([[0.2], [1.3], [2.9]])

    def sample(circuit: QuantumCircuit) -> Any:
        (data,) = ideal.sample_pubs([pub(circuit, values, shots=500)], 21, **SETTINGS) or []
        return data

    tabled = sample(qc.copy())
    monkeypatch.setattr(ideal, "_TABLE_BYTES", 0)
    one_by_one = sample(qc.copy())  # a new circuit object: planned again, without tables
    assert ideal._ideal(qc.copy()).tables is None  # type: ignore[union-attr]
    for name in ("a", "b"):
        assert np.array_equal(tabled[name].array, one_by_one[name].array), name
        assert tabled[name].num_bits == one_by_one[name].num_bits
        assert tabled[name].shape == one_by_one[name].shape == (3,)
