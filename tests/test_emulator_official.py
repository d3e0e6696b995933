"""Job mode with the unmodified official qiskit-ibm-runtime client against the real emulator."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from circuits import bell
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import EstimatorV2, QiskitRuntimeService, SamplerV2
from qiskit_ibm_runtime.exceptions import (
    IBMInputValueError,
    RuntimeJobMaxTimeoutError,
    RuntimeJobNotFound,
)

from emulator.backends import device_target
from emulator.testing import EmulatorThread
from emulator.timing import TimingParams, circuit_duration_s, quantum_seconds
from emulator.workers import available_cpus


@pytest.fixture(scope="module")
def fez(official: Any) -> Any:
    return official.backend("ibm_fez")


@pytest.fixture(scope="module")
def pm(fez: Any) -> Any:
    return generate_preset_pass_manager(optimization_level=1, target=fez.target, seed_transpiler=7)


def test_construction_recipe_a_lists_and_transpiles(official: Any, fez: Any) -> None:
    names = {b.name for b in official.backends()}
    assert {"ibm_fez", "ibm_torino", "ibm_manila"} <= names
    assert fez.num_qubits == 156
    assert not fez.configuration().simulator
    least = official.least_busy(operational=True, simulator=False)
    assert least.name in names
    isa = generate_preset_pass_manager(optimization_level=1, target=fez.target).run(bell())
    assert set(isa.count_ops()) <= set(fez.target.operation_names) | {"barrier", "measure"}


def test_construction_recipe_b_environment_only(emulator: EmulatorThread) -> None:
    with emulator.environment():
        service = QiskitRuntimeService()
        assert "ibm_manila" in {b.name for b in service.backends()}


def test_sampler_bell_counts(fez: Any, pm: Any) -> None:
    job = SamplerV2(mode=fez).run([pm.run(bell())], shots=1000)
    counts = job.result()[0].data.meas.get_counts()
    assert set(counts) <= {"00", "11"}
    assert sum(counts.values()) == 1000
    assert 400 < counts["00"] < 600
    assert job.status() == "DONE"


def test_sampler_broadcasting_shapes(fez: Any, pm: Any) -> None:
    theta = Parameter("θ")
    qc = QuantumCircuit(1)
    qc.ry(theta, 0)
    qc.measure_all()
    isa = pm.run(qc)
    values = np.linspace(0, np.pi, 6).reshape(2, 3, 1)
    sampler = SamplerV2(mode=fez)
    sampler.options.default_shots = 200
    result = sampler.run([(isa, values), (isa, [0.0], 50)]).result()
    first = result[0].data.meas
    assert first.shape == (2, 3)
    assert first.num_shots == 200
    # θ = 0 never flips the qubit; θ = π always does
    assert first[0, 0].get_counts() == {"0": 200}
    assert first[1, 2].get_counts() == {"1": 200}
    assert result[1].data.meas.num_shots == 50


def test_estimator_bell_observables(fez: Any, pm: Any) -> None:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    isa = pm.run(qc)
    obs = [SparsePauliOp(label).apply_layout(isa.layout) for label in ("ZZ", "XX", "IZ", "YY")]
    estimator = EstimatorV2(mode=fez)
    estimator.options.default_precision = 0.02
    estimator.options.seed_estimator = 1
    result = estimator.run([(isa, obs)]).result()
    evs, stds = result[0].data.evs, result[0].data.stds
    exact = np.array([1.0, 1.0, 0.0, -1.0])
    assert evs.shape == (4,)
    assert np.all(np.abs(evs - exact) <= 4 * np.maximum(stds, 1e-3))
    assert np.all(stds <= 0.02 * 1.01)  # unbiased variance: n/(n-1) above the bound
    assert result[0].metadata["target_precision"] == pytest.approx(0.02)


def test_estimator_parameter_sets_and_observables(fez: Any, pm: Any) -> None:
    theta = Parameter("θ")
    qc = QuantumCircuit(1)
    qc.ry(theta, 0)
    isa = pm.run(qc)
    thetas = np.linspace(0, np.pi, 5)
    obs = [
        [SparsePauliOp("Z").apply_layout(isa.layout)],
        [SparsePauliOp("X").apply_layout(isa.layout)],
    ]
    result = EstimatorV2(mode=fez).run([(isa, obs, thetas.reshape(-1, 1), 0.03)]).result()
    evs, stds = result[0].data.evs, result[0].data.stds
    assert evs.shape == (2, 5)
    exact = np.stack([np.cos(thetas), np.sin(thetas)])
    assert np.all(np.abs(evs - exact) <= 4 * np.maximum(stds, 1e-3))


def test_metrics_and_usage_follow_the_model(fez: Any, pm: Any) -> None:
    isa = pm.run(bell())
    job = SamplerV2(mode=fez).run([isa], shots=2000)
    job.result()
    metrics = job.metrics()
    target = device_target("fez")
    expected = quantum_seconds(
        [(circuit_duration_s(isa, target), 2000)],
        rep_delay_s=250e-6,
        params=TimingParams(),
        subjobs=1,
    )
    assert metrics["usage"]["quantum_seconds"] == pytest.approx(expected, rel=1e-6)
    assert job.usage() == pytest.approx(expected, rel=1e-6)
    # 2 s overhead + 2000 executions of about 350 µs
    assert 2.5 < expected < 2.9
    stamps = metrics["timestamps"]
    assert stamps["created"] <= stamps["running"] <= stamps["finished"]
    spans = job.result().metadata["execution"]["execution_spans"]
    assert len(spans) == 1 and spans[0].start <= spans[0].stop


def test_tags_filter_in_jobs(official: Any, fez: Any, pm: Any) -> None:
    sampler = SamplerV2(mode=fez)
    sampler.options.environment.job_tags = ["tag-filter-test", "t2"]
    tagged = sampler.run([pm.run(bell())], shots=10)
    untagged = SamplerV2(mode=fez).run([pm.run(bell())], shots=10)
    tagged.result()
    untagged.result()
    found = official.jobs(job_tags=["tag-filter-test"], limit=50)
    assert [j.job_id() for j in found] == [tagged.job_id()]
    assert tagged.update_tags(["renamed"]) == ["renamed"]
    assert official.jobs(job_tags=["tag-filter-test"]) == []


def test_delete_then_not_found(official: Any, fez: Any, pm: Any) -> None:
    job = SamplerV2(mode=fez).run([pm.run(bell())], shots=10)
    job.result()
    official.delete_job(job.job_id())
    with pytest.raises(RuntimeJobNotFound):
        official.job(job.job_id())


def test_max_execution_time_is_the_1305_path(fez: Any, pm: Any) -> None:
    sampler = SamplerV2(mode=fez)
    sampler.options.max_execution_time = 1  # the job needs ~3.4 s of QPU time
    job = sampler.run([pm.run(bell())], shots=4000)
    with pytest.raises(RuntimeJobMaxTimeoutError):
        job.result()
    assert job.status() == "ERROR"
    assert job.usage() == pytest.approx(1.0)


def test_official_client_refuses_non_isa_before_sending(fez: Any) -> None:
    with pytest.raises(IBMInputValueError):
        SamplerV2(mode=fez).run([bell()])


def test_cancel_queued_job(make_emulator: Any) -> None:
    emu = make_emulator(backends="ibm_manila")
    service = emu.official_service()
    backend = service.backend("ibm_manila")
    isa = generate_preset_pass_manager(optimization_level=1, target=backend.target).run(bell())
    emu.call(lambda: emu.scheduler.pause("ibm_manila"))  # a gate: no lane is granted
    job = SamplerV2(mode=backend).run([isa], shots=10)
    assert job.status() == "QUEUED"
    job.cancel()
    assert emu.wait_final(job.job_id()) == "Cancelled"
    emu.call(lambda: emu.scheduler.resume("ibm_manila"))
    assert service.job(job.job_id()).status() == "CANCELLED"
    # the lanes still work afterwards
    assert SamplerV2(mode=backend).run([isa], shots=10).result()[0].data.meas.num_shots == 10


@pytest.mark.parametrize("workers", ["process", "ray"], indirect=True)  # also on Ray actors
def test_twelve_jobs_five_lanes_one_qpu(make_emulator: Any, workers: str) -> None:
    emu = make_emulator(backends="ibm_fez", workers=workers)
    service = emu.official_service()
    backend = service.backend("ibm_fez")
    isa = generate_preset_pass_manager(optimization_level=1, target=backend.target).run(bell())
    emu.call(lambda: emu.scheduler.pause("ibm_fez"))
    jobs = [SamplerV2(mode=backend).run([isa], shots=20) for _ in range(12)]
    stats = emu.statistics().backend("ibm_fez")
    assert stats.queued == 12 and stats.lanes.busy == 0
    emu.call(lambda: emu.scheduler.resume("ibm_fez"))
    for job in jobs:
        assert job.result()[0].data.meas.num_shots == 20
    stats = emu.statistics().backend("ibm_fez")
    assert stats.lanes.peak_busy == 5  # five jobs held lanes at once ...
    assert stats.qpu_peak == 1
    # ... while their stages ran in as many workers as the emulator has CPU slots (one per
    # CPU here, one on the tests' Ray cluster; conftest.emulator_config)
    plane = emu.scheduler.plane.statistics()
    assert plane["cpu_slots"] == (emu.config.cpu_slots or available_cpus())
    assert 1 <= plane["lane_workers"] <= plane["cpu_slots"]
    assert stats.completed == 12
    # QPU spans never overlap
    spans = sorted(
        (s.start, s.stop) for j in jobs for s in j.result().metadata["execution"]["execution_spans"]
    )
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert math.isclose(sum(j.usage() for j in jobs), 12 * jobs[0].usage(), rel_tol=1e-9)


def test_alias_and_device_noise(make_emulator: Any) -> None:
    emu = make_emulator(backends="my_qpu=ibm_manila", noise=True)
    service = emu.official_service()
    assert [b.name for b in service.backends()] == ["my_qpu"]
    backend = service.backend("my_qpu")
    isa = generate_preset_pass_manager(optimization_level=1, target=backend.target).run(bell())
    sampler = SamplerV2(mode=backend)
    sampler.options.simulator.seed_simulator = 11
    counts = sampler.run([isa], shots=4000).result()[0].data.meas.get_counts()
    # manila's noise model flips some outcomes; an ideal Bell pair never gives 01 or 10
    assert counts.get("01", 0) + counts.get("10", 0) > 0
    assert counts["00"] + counts["11"] > 3000
