"""Noise levels through the official client against the real emulator: chosen by flag and by
job option, a 100+ qubit Clifford circuit with device noise, ``pauli`` agreeing with ``full``,
and a job over the simulation budget refused before it reaches the QPU."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from circuits import ghz
from conftest import emulator_config
from qiskit import QuantumCircuit
from qiskit.circuit.library import n_local
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import EstimatorV2, SamplerV2
from qiskit_ibm_runtime.exceptions import RuntimeJobFailureError

from emulator.testing import EmulatorThread

#: Small enough for ``full`` (density matrix), wide enough to show the device's errors.
SHOTS = 4000


@pytest.fixture(scope="module")
def noise_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pytest's cache directory when it is on (the ibm_fez table then costs its
    seconds once per checkout, not once per run), else a temporary one."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("aioruntime-noise"))
    return tmp_path_factory.mktemp("noise-cache")


@pytest.fixture(scope="module")
def emu(noise_cache: Path) -> Iterator[EmulatorThread]:
    """``--noise pauli --sim-budget 20`` on ibm_fez alone, one lane."""
    config = emulator_config(
        backends="ibm_fez", lanes=1, noise="pauli", sim_budget_s=20.0, noise_cache_dir=noise_cache
    )
    with EmulatorThread(config) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def backend(emu: EmulatorThread) -> Any:
    return emu.official_service().backend("ibm_fez")


def isa(backend: Any, circuit: QuantumCircuit) -> QuantumCircuit:
    pm = generate_preset_pass_manager(
        optimization_level=1, target=backend.target, seed_transpiler=1
    )
    return pm.run(circuit)


def sampler(backend: Any, level: str | None = None, *, seed: int = 1) -> SamplerV2:
    s = SamplerV2(mode=backend)
    s.options.simulator.seed_simulator = seed
    if level is not None:
        s.options.experimental = {"noise_level": level}
    return s


def success(result: Any) -> tuple[float, float]:
    """Probability of all-equal bits (GHZ success), and its standard error."""
    bits = result.data.meas.to_bool_array()
    ok = np.all(bits == bits[:, :1], axis=1)
    p = float(ok.mean())
    return p, math.sqrt(p * (1 - p) / len(ok))


def test_level_from_the_flag_and_from_job_options(backend: Any) -> None:
    circuit = isa(backend, ghz(5))
    default = sampler(backend).run([circuit], shots=SHOTS).result()
    assert default.metadata["simulation"]["noise_level"] == "pauli"  # --noise pauli
    assert default.metadata["simulation"]["methods"] == {"stim": 1}
    assert 0.5 < success(default[0])[0] < 1.0  # the device's errors, still a GHZ state

    ideal = SamplerV2(mode=backend)
    ideal.options.experimental = {"simulator": {"noise_level": "none"}}  # options.simulator.*
    result = ideal.run([circuit], shots=500).result()
    assert result.metadata["simulation"]["noise_level"] == "none"
    assert set(result[0].data.meas.get_counts()) == {"00000", "11111"}

    full = sampler(backend, "full").run([circuit], shots=500).result()
    assert full.metadata["simulation"]["noise_level"] == "full"
    assert full.metadata["simulation"]["methods"] == {"density_matrix": 1}


def test_unknown_level_fails_the_job(backend: Any) -> None:
    job = sampler(backend, "loud").run([isa(backend, ghz(2))], shots=10)
    with pytest.raises(RuntimeJobFailureError, match="noise_level must be one of"):
        job.result()


def test_a_156_qubit_clifford_circuit_runs_with_device_noise(backend: Any) -> None:
    n = backend.num_qubits
    circuit = isa(backend, ghz(n))
    ideal = sampler(backend, "none").run([circuit], shots=200).result()
    assert set(ideal[0].data.meas.bitcount().tolist()) <= {0, n}

    result = sampler(backend).run([circuit], shots=1000).result()
    simulation = result.metadata["simulation"]
    assert simulation["methods"] == {"stim": 1} and simulation["noise_level"] == "pauli"
    bits = result[0].data.meas.to_bool_array(order="little")  # bit k: logical qubit k
    assert bits.shape == (1000, n)
    assert len(set(bits.sum(axis=1).tolist())) > 10  # errors: not only all-zeros and all-ones
    # The chain of 578 CZs crosses ibm_fez's broken couplers (error 1.0 in the snapshot), so
    # whole blocks flip; neighbours along the chain still agree far more often than by chance.
    agree = np.mean(bits[:, 1:] == bits[:, :-1])
    assert 0.75 < agree < 1.0


def test_pauli_keeps_the_error_rates_of_full(backend: Any) -> None:
    """GHZ-5 success probability, and a 4-qubit Estimator on a non-Clifford ansatz: ``pauli``
    and ``full`` agree within three standard errors plus 0.03."""
    circuit = isa(backend, ghz(5))
    p_pauli, s_pauli = success(sampler(backend, "pauli").run([circuit], shots=SHOTS).result()[0])
    p_full, s_full = success(sampler(backend, "full").run([circuit], shots=SHOTS).result()[0])
    assert p_full < 0.99  # there is noise to agree on
    assert abs(p_pauli - p_full) <= 3 * math.hypot(s_pauli, s_full) + 0.03

    ansatz = n_local(4, "ry", "cz", entanglement="linear", reps=2)
    values = np.linspace(0.3, 2.1, ansatz.num_parameters)
    state = isa(backend, ansatz)
    observables = [
        SparsePauliOp(label).apply_layout(state.layout)
        for label in ("ZZII", "IIXX", "ZIIZ", "YYII")
    ]
    evs = {}
    for level in ("pauli", "full"):
        estimator = EstimatorV2(mode=backend)
        estimator.options.default_shots = SHOTS
        estimator.options.simulator.seed_simulator = 3
        estimator.options.experimental = {"noise_level": level}
        result = estimator.run([(state, observables, values)]).result()
        assert result.metadata["simulation"]["noise_level"] == level
        evs[level] = (result[0].data.evs, result[0].data.stds)
    (e_p, s_p), (e_f, s_f) = evs["pauli"], evs["full"]
    assert np.all(np.abs(e_p - e_f) <= 3 * np.hypot(s_p, s_f) + 0.03), (e_p, e_f)


def test_a_job_over_budget_fails_before_the_qpu(emu: EmulatorThread, backend: Any) -> None:
    """20 qubits x 1000 shots at ``full``: about 10 minutes of trajectories, over the 20 s
    budget; refused by pre-processing with the cheaper choices named."""
    job = sampler(backend, "full").run([isa(backend, ghz(20))], shots=1000)
    with pytest.raises(RuntimeJobFailureError) as info:
        job.result()
    message = str(info.value)
    assert "1001" in message and "budget of 20 s" in message
    assert "'pauli' noise level" in message and "fewer shots" in message
    record = emu.call(lambda: emu.store.job(job.job_id()))
    assert record is not None and "qpu_start" not in record.stages  # never held the QPU
    assert emu.statistics().backend("ibm_fez").qpu_busy is False
