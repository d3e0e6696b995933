"""The Pauli twirl of device noise, its on-disk cache, and the Stim conversion."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.circuit.library import ECRGate, RZGate
from qiskit.primitives.containers.bindings_array import BindingsArray
from qiskit.primitives.containers.sampler_pub import SamplerPub
from qiskit.quantum_info import PTM, Kraus
from qiskit_aer.noise import (
    amplitude_damping_error,
    depolarizing_error,
    pauli_error,
    thermal_relaxation_error,
)
from qiskit_aer.primitives import SamplerV2 as AerSampler

from emulator import noise, noise_cache
from emulator.noise import PauliNoise, pauli_labels, pauli_twirl, twirl_error, twirl_readout
from emulator.stim_sampler import clifford_ops, is_clifford, sample_pub, to_stim
from emulator.targets import device_noise_model_for


def probs_by_label(probs: np.ndarray) -> dict[str, float]:
    labels = pauli_labels(round(math.log(len(probs), 4)))
    return {label: float(p) for label, p in zip(labels, probs, strict=True)}


# ---------------------------------------------------------------------------------------------
# The twirl
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_qubits", [1, 2])
def test_depolarizing_channel_is_its_own_twirl(num_qubits: int) -> None:
    lam = 0.08
    probs = twirl_error(depolarizing_error(lam, num_qubits))
    d = 4**num_qubits
    assert probs[0] == pytest.approx(1 - lam * (d - 1) / d, abs=1e-12)
    assert np.allclose(probs[1:], lam / d, atol=1e-12)


def test_amplitude_damping_twirl_from_the_ptm_diagonal() -> None:
    gamma = 0.2
    # PTM diagonal of amplitude damping: (1, sqrt(1-g), sqrt(1-g), 1-g)
    s = math.sqrt(1 - gamma)
    expected = {
        "I": (1 + 2 * s + 1 - gamma) / 4,
        "X": gamma / 4,
        "Y": gamma / 4,
        "Z": (1 - 2 * s + 1 - gamma) / 4,
    }
    via_aer = probs_by_label(twirl_error(amplitude_damping_error(gamma)))
    k0 = np.array([[1, 0], [0, s]])
    k1 = np.array([[0, math.sqrt(gamma)], [0, 0]])
    via_kraus = probs_by_label(pauli_twirl(Kraus([k0, k1])))
    for label, p in expected.items():
        assert via_aer[label] == pytest.approx(p, abs=1e-12)
        assert via_kraus[label] == pytest.approx(p, abs=1e-12)


def test_two_qubit_labels_keep_qiskit_order() -> None:
    error = pauli_error([("IX", 0.1), ("ZI", 0.2), ("XY", 0.05), ("II", 0.65)])
    probs = probs_by_label(twirl_error(error))
    assert probs["IX"] == pytest.approx(0.1) and probs["ZI"] == pytest.approx(0.2)
    assert probs["XY"] == pytest.approx(0.05) and probs["YX"] == pytest.approx(0.0, abs=1e-12)


def test_device_errors_keep_their_ptm_diagonal() -> None:
    """The twirl of every error of a device gate keeps the PTM diagonal, hence the process
    fidelity (the gate's error rate)."""
    model = device_noise_model_for("manila", (0, 1))
    for name, per_qubits in model._local_quantum_errors.items():
        for error in per_qubits.values():
            probs = twirl_error(error)
            labels = pauli_labels(error.num_qubits)
            twirled = pauli_error([(lab, p) for lab, p in zip(labels, probs, strict=True) if p > 0])
            original = np.diag(PTM(error.to_quantumchannel()).data).real
            assert np.allclose(np.diag(PTM(twirled.to_quantumchannel()).data).real, original)
            assert probs[0] < 1.0, name  # there is an error to keep


def test_thermal_relaxation_twirl() -> None:
    t1, t2, t = 100e-6, 80e-6, 1e-6
    probs = twirl_error(thermal_relaxation_error(t1, t2, t))
    p_amp = 1 - math.exp(-t / t1)
    assert probs[1] == pytest.approx(p_amp / 4, rel=1e-9)  # X and Y: a quarter of the decay
    assert probs[1] == pytest.approx(probs[2])
    # Z: dephasing, from the PTM's XX element exp(-t/T2)
    assert probs[3] == pytest.approx((1 - 2 * math.exp(-t / t2) + 1 - p_amp) / 4, rel=1e-9)


def test_readout_twirl_is_the_mean_flip() -> None:
    assert twirl_readout([[0.98, 0.02], [0.06, 0.94]]) == pytest.approx(0.04)


# ---------------------------------------------------------------------------------------------
# A device's table, lazily per qubit set, cached on disk
# ---------------------------------------------------------------------------------------------


def test_device_table_is_built_per_qubit_set_and_kept_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = noise.DeviceTable("manila", tmp_path)
    table.ensure((0, 1))
    assert set(table.gates["cx"]) == {(0, 1), (1, 0)} and set(table.readout) == {0, 1}
    assert 2 not in table.readout  # only the qubits asked for
    files = list(tmp_path.glob("pauli-manila-*.json"))
    assert len(files) == 1 and files[0] == noise_cache.table_path("manila", tmp_path)

    # A new process (a new table) reads the file and computes nothing for covered qubits.
    def boom(*_: Any) -> None:
        raise AssertionError("recomputed a cached noise model")

    monkeypatch.setattr(noise.DeviceTable, "_compute", boom)
    again = noise.DeviceTable("manila", tmp_path)
    again.ensure((1, 0))
    sub = again.restricted((1, 0))  # renumbered: physical 1 is qubit 0
    assert np.array_equal(sub.gates["cx"][(0, 1)], table.gates["cx"][(1, 0)])
    assert sub.readout == (table.readout[1], table.readout[0])
    with pytest.raises(AssertionError, match="recomputed"):
        again.ensure((0, 1, 2))  # qubit 2 is not cached yet


def test_a_table_sees_what_another_process_computed(tmp_path: Path) -> None:
    """The QPU worker's table, loaded before a lane computed more qubits, reads the file again
    instead of computing them a second time."""
    qpu = noise.DeviceTable("manila", tmp_path)
    lane = noise.DeviceTable("manila", tmp_path)
    lane.ensure((3, 4))
    assert ("cx", (3, 4)) not in qpu.covered
    calls: list[Any] = []
    original = noise.DeviceTable._compute
    noise.DeviceTable._compute = lambda self, missing: calls.append(missing)  # type: ignore[method-assign]
    try:
        qpu.ensure((3, 4))
    finally:
        noise.DeviceTable._compute = original  # type: ignore[method-assign]
    assert calls == [] and np.array_equal(qpu.gates["cx"][(3, 4)], lane.gates["cx"][(3, 4)])


def test_a_table_computes_only_the_instructions_a_job_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's table covers the instructions its circuits run (and every qubit's readout), not
    the device's others; each instruction's errors are the ones the whole model gives it."""
    whole = noise.DeviceTable("manila", None)
    whole.ensure((0, 1))  # every instruction of the device

    computed: list[set[Any]] = []
    original = noise.DeviceTable._compute

    def spy(self: noise.DeviceTable, missing: set[Any]) -> None:
        computed.append({name for name, _ in missing})
        original(self, missing)

    monkeypatch.setattr(noise.DeviceTable, "_compute", spy)
    table = noise.DeviceTable("manila", tmp_path)
    table.ensure((0, 1), {"cx", "barrier"})  # barrier: not a target instruction, no errors
    assert computed == [{"cx", "measure"}]
    assert set(table.gates) == {"cx"} and set(table.readout) == {0, 1}
    assert np.array_equal(table.gates["cx"][(0, 1)], whole.gates["cx"][(0, 1)])
    assert table.readout == whole.readout

    # A later job with sx computes sx alone, on the same qubits; cx is not recomputed.
    table.ensure((0, 1), {"cx", "sx"})
    assert computed[1:] == [{"sx"}]
    for name in ("cx", "sx"):
        for qargs, probs in whole.gates[name].items():
            assert np.array_equal(table.gates[name][qargs], probs)
    sub = table.restricted((0, 1), {"sx"})
    assert set(sub.gates) == {"sx"}  # what was asked for, not everything the table holds

    # A table that lacks an instruction says so instead of dropping its noise.
    with pytest.raises(LookupError, match=r"lacks .*\('x', \(0,\)\)"):
        table.restricted((0, 1), {"x"})
    with pytest.raises(LookupError, match="call ensure"):
        table.restricted((0, 1))  # every instruction: reset, x, ... were never computed


@pytest.mark.parametrize(("source", "qubits"), [("manila", (0, 1, 2, 3, 4)), ("fez", (0, 1, 2, 3))])
def test_the_table_from_aers_parts_equals_the_twirl_of_aers_composed_model(
    source: str, qubits: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table is built from Aer's depolarizing and relaxation parts, without composing them
    (``targets.device_error_parts``); it equals the twirl of ``NoiseModel.from_backend``'s
    composed errors, for every instruction of the device: one- and two-qubit gates (``cx``;
    ``cz`` and ``rzz`` on fez), ``id``, ``reset`` (relaxation only), readout. An Aer without the
    per-part builders gets the composed path, with the same table."""
    table = noise.DeviceTable(source, None)
    table.ensure(qubits)
    names = frozenset(name for name, _ in table.needed(qubits))
    reference = noise.DeviceTable(source, None)
    reference._compute_composed(qubits, names)
    assert set(table.gates) == set(reference.gates)
    assert {"reset", "id"} <= set(table.gates) and len(table.readout) == len(qubits)
    assert {"cz", "rzz"} <= set(table.gates) or source == "manila"
    for name, per_qubits in reference.gates.items():
        assert set(table.gates[name]) == set(per_qubits), name
        for qargs, probs in per_qubits.items():
            assert np.allclose(table.gates[name][qargs], probs, rtol=0, atol=1e-12), (name, qargs)
    assert table.readout == reference.readout

    def no_parts(*_: Any) -> Any:
        raise ImportError("an Aer without _device_depolarizing_error")

    monkeypatch.setattr("emulator.targets.device_error_parts", no_parts)
    fallback = noise.DeviceTable(source, None)
    fallback.ensure(qubits)
    assert fallback.covered == table.covered
    for name, per_qubits in reference.gates.items():
        for qargs, probs in per_qubits.items():
            assert np.array_equal(fallback.gates[name][qargs], probs)


def test_instruction_names_look_inside_control_flow() -> None:
    qc = QuantumCircuit(2, 1)
    qc.sx(0)
    qc.measure(0, 0)
    with qc.if_test((qc.clbits[0], 1)):
        qc.cx(0, 1)
        with qc.box():  # nested: a block inside a block
            qc.rz(0.1, 1)
    assert noise.instruction_names([qc]) == {"sx", "measure", "if_else", "cx", "box", "rz"}
    assert noise.instruction_names([]) == frozenset()


def test_a_cache_file_of_the_old_per_qubit_format_is_not_read(tmp_path: Path) -> None:
    path = noise_cache.table_path("manila", tmp_path)
    old = {"format": 1, "gates": [["cx", [0, 1], [1.0] + [0.0] * 15]], "readout": [[0, 0.01]]}
    path.write_text(json.dumps({**old, "covered": [[0], [1], [0, 1]]}))
    assert noise_cache.load(path) is None


def test_unreadable_cache_file_is_ignored(tmp_path: Path) -> None:
    path = noise_cache.table_path("manila", tmp_path)
    path.write_text("{not json")
    assert noise_cache.load(path) is None
    assert noise_cache.load(tmp_path / "missing.json") is None


# ---------------------------------------------------------------------------------------------
# Stim
# ---------------------------------------------------------------------------------------------


def noise_on(num_qubits: int, **gates: dict[tuple[int, ...], list[float]]) -> PauliNoise:
    return PauliNoise(
        physical=tuple(range(num_qubits)),
        gates={name: {q: np.asarray(p) for q, p in per.items()} for name, per in gates.items()},
        readout=(0.0,) * num_qubits,
        t1=(math.inf,) * num_qubits,
        t2=(math.inf,) * num_qubits,
        dt=None,
    )


def pub(circuit: QuantumCircuit, shots: int, values: Any = None) -> SamplerPub:
    return SamplerPub.coerce((circuit, values, shots))


def test_clifford_detection_rounds_angles() -> None:
    assert clifford_ops(RZGate(math.pi / 2)) == (("S", (0,)),)
    assert clifford_ops(RZGate(-math.pi / 2 + 1e-9)) == (("S_DAG", (0,)),)
    assert clifford_ops(RZGate(0.3)) is None
    assert clifford_ops(ECRGate()) is not None  # through its tableau
    qc = QuantumCircuit(2, 2)
    qc.append(ECRGate(), [0, 1])
    qc.measure([0, 1], [0, 1])
    assert is_clifford(qc)
    qc.t(0)
    assert not is_clifford(qc)


def test_known_circuit_distribution_and_parameter_sweep() -> None:
    theta = Parameter("θ")
    qc = QuantumCircuit(1, 1)
    qc.sx(0)
    qc.rz(theta, 0)
    qc.sx(0)
    qc.measure(0, 0)
    # sx rz(θ) sx: θ = 0 is X (always 1), θ = π is -i·Z-like up to phase (always 0)
    data = sample_pub(pub(qc, 100, [[0.0], [math.pi], [math.pi / 2]]), None, seed=3)
    counts = [data.c[i].get_counts() for i in range(3)]
    assert counts[0] == {"1": 100} and counts[1] == {"0": 100}
    assert set(counts[2]) == {"0", "1"}  # θ = π/2: an equal superposition
    assert data.c.shape == (3,) and data.c.num_shots == 100


def test_last_measurement_of_a_clbit_wins_and_reset_works() -> None:
    qc = QuantumCircuit(1, 2)
    qc.x(0)
    qc.measure(0, 0)
    qc.reset(0)
    qc.measure(0, 1)
    qc.x(0)
    qc.measure(0, 1)
    assert sample_pub(pub(qc, 50), None, seed=1).c.get_counts() == {"11": 50}


def test_two_qubit_channel_reaches_the_right_qubit() -> None:
    """A cz channel with only X on its first qubit: Stim and Aer (the same noise as an Aer
    model) both flip qubit 0 alone, about 30% of the time."""
    probs = np.zeros(16)
    probs[0], probs[1] = 0.7, 0.3  # index 1: X on the channel's qubit 0 ("IX")
    assert pauli_labels(2)[1] == "IX"
    table = noise_on(2, cz={(0, 1): list(probs)})
    qc = QuantumCircuit(2)
    qc.cz(0, 1)
    qc.measure_all()
    stim_counts = sample_pub(pub(qc, 4000), table, seed=7).meas.get_counts()
    aer = AerSampler(seed=7, options={"backend_options": {"noise_model": table.to_aer()}})
    aer_counts = aer.run([(qc, None, 4000)]).result()[0].data.meas.get_counts()
    for counts in (stim_counts, aer_counts):
        assert set(counts) == {"00", "01"}
        assert counts["01"] / 4000 == pytest.approx(0.3, abs=0.03)


def test_readout_flips_in_stim_text() -> None:
    table = noise_on(1)
    table = PauliNoise(**{**table.__dict__, "readout": (0.25,), "stim_text": {}})
    qc = QuantumCircuit(1, 1)
    qc.measure(0, 0)
    circuit, records = to_stim(qc, table)
    assert str(circuit).strip() == "M(0.25) 0" and records == [0]
    counts = sample_pub(pub(qc, 4000), table, seed=2).c.get_counts()
    assert counts["1"] / 4000 == pytest.approx(0.25, abs=0.03)


def test_bindings_array_pub_shape() -> None:
    theta = Parameter("θ")
    qc = QuantumCircuit(1)
    qc.rz(theta, 0)
    qc.measure_all()
    values = BindingsArray({theta: np.zeros((2, 3))})
    data = sample_pub(SamplerPub(qc, values, 10), None, seed=None)
    assert data.meas.shape == (2, 3) and data.meas.num_shots == 10


def test_parameter_expressions_are_evaluated_per_set() -> None:
    theta = Parameter("θ")
    qc = QuantumCircuit(1, 1)
    qc.sx(0)
    qc.rz(2 * theta + math.pi, 0)  # rz(π) at θ = 0, rz(2π) at θ = π/2
    qc.sx(0)
    qc.measure(0, 0)
    data = sample_pub(pub(qc, 50, [[0.0], [math.pi / 2]]), None, seed=4)
    assert data.c[0].get_counts() == {"0": 50} and data.c[1].get_counts() == {"1": 50}
    from emulator.stim_sampler import pub_is_clifford

    assert pub_is_clifford(pub(qc, 5, [[0.0], [math.pi / 4]]))  # 2θ = π/2
    assert not pub_is_clifford(pub(qc, 5, [[0.0], [0.1]]))


def test_stim_samples_a_pub_without_parameter_sets() -> None:
    """A PUB of shape (0,) (an empty parameter array, found by the job-body fuzz) samples to
    empty bit arrays of that shape, as Aer's sampler gives, not an error."""
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    pub = SamplerPub(qc, BindingsArray({}, shape=(0,)), shots=5)
    data = sample_pub(pub, None, seed=1)
    assert data.shape == (0,) and data.meas.shape == (0,) and data.meas.num_shots == 5
