"""IBM's ``executor`` program with the unmodified official client against the real emulator.

The client-side primitives (``executor_sampler.SamplerV2``, ``executor_estimator.Estimator``) and
``Executor`` + ``QuantumProgram`` on the 156-qubit ``ibm_fez``, real Aer, over loopback; dry runs
on the mock twin; legacy options that are ignored; and every way an executor job is refused.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import requests
from circuits import bell
from ibm_quantum_schemas.common import F64CompressedTensorModel
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import EstimatorV2, Executor, QuantumProgram
from qiskit_ibm_runtime import SamplerV2 as LegacySampler
from qiskit_ibm_runtime.exceptions import IBMRuntimeError, RuntimeJobFailureError
from qiskit_ibm_runtime.executor_estimator import Estimator
from qiskit_ibm_runtime.executor_sampler import SamplerV2
from qiskit_ibm_runtime.options_models.executor import ExecutorOptions
from qiskit_ibm_runtime.quantum_program.params_converters import (
    QUANTUM_PROGRAM_PARAMS_CONVERTERS,
)
from rest import Api
from rest import isa_bell as rest_isa_bell
from samplomatic import build
from samplomatic.transpiler import generate_boxing_pass_manager

from aioruntime import protocol as p
from aioruntime.protocol import ErrorCode
from emulator.testing import EmulatorProcess, EmulatorThread


@pytest.fixture(scope="module")
def fez(official: Any) -> Any:
    return official.backend("ibm_fez")


@pytest.fixture(scope="module")
def pm(fez: Any) -> Any:
    return generate_preset_pass_manager(optimization_level=1, target=fez.target, seed_transpiler=7)


@pytest.fixture(scope="module")
def isa_bell(pm: Any) -> QuantumCircuit:
    return pm.run(bell())


def stages(job: Any) -> dict[str, datetime]:
    return {k: datetime.fromisoformat(v) for k, v in job.metrics()["emulator"]["stages"].items()}


def raw_get(emu: EmulatorThread, path: str, **params: Any) -> requests.Response:
    token = requests.post(
        emu.base_url + p.IAM_TOKEN,
        data={"grant_type": p.IAM_GRANT_TYPE, "apikey": emu.api_key},
        timeout=10,
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", p.HEADER_SERVICE_CRN: emu.instance}
    return requests.get(emu.runtime_url + path, headers=headers, params=params, timeout=30)


# ---------------------------------------------------------------------------------------------
# The client-side primitives
# ---------------------------------------------------------------------------------------------


def test_sampler_bell_on_fez(fez: Any, isa_bell: QuantumCircuit) -> None:
    job = SamplerV2(mode=fez).run([isa_bell], shots=1000)
    result = job.result()
    counts = result[0].data.meas.get_counts()
    assert job.primitive_id == "executor"
    assert set(counts) <= {"00", "11"} and sum(counts.values()) == 1000
    assert 400 < counts["00"] < 600
    # the chunk timing is the job's real QPU span, and the usage its modelled time
    (chunk,) = result.metadata["executor"].chunk_timing
    span = stages(job)
    assert chunk.start == span["qpu_start"] and chunk.stop == span["qpu_end"]
    assert chunk.parts[0].idx_item == 0 and chunk.parts[0].size == 1
    metrics = job.metrics()
    modelled = metrics["emulator"]["modelled_quantum_seconds"]
    assert job.usage() == pytest.approx(modelled)
    assert 2.0 + 1000 * 250e-6 < modelled < 2.0 + 1000 * 400e-6  # overhead + 1000 executions


def test_twirled_sampler_on_fez(fez: Any, isa_bell: QuantumCircuit) -> None:
    sampler = SamplerV2(mode=fez)
    sampler.options.twirling.enable_gates = True
    sampler.options.twirling.enable_measure = True
    result = sampler.run([isa_bell], shots=512).result()
    counts = result[0].data.meas.get_counts()
    assert set(counts) <= {"00", "11"} and sum(counts.values()) == 512
    assert result[0].metadata["num_randomizations"] > 1


def test_estimator_defaults_bell_on_fez(fez: Any, pm: Any) -> None:
    isa = pm.run(bell(measure=False))
    obs = [SparsePauliOp(label).apply_layout(isa.layout) for label in ("ZZ", "XX", "IZ")]
    estimator = Estimator(mode=fez)  # resilience level 1: measurement twirling and TREX
    assert estimator.finalize_options().resilience.measure_mitigation
    result = estimator.run([(isa, obs)]).result()
    evs, stds = result[0].data.evs, result[0].data.stds
    assert evs.shape == (3,)
    assert evs[:2] == pytest.approx([1.0, 1.0], abs=0.05)
    assert abs(evs[2]) < 0.1
    # without noise ZZ and XX of a Bell state are exact, so their spread is 0; <ZI> varies
    assert np.all(np.isfinite(stds)) and np.all(stds >= 0) and stds[2] > 0


def test_estimator_on_torino(official: Any) -> None:
    """133 qubits dressed and measured by the client: simulated in packs, not 2^133."""
    torino = official.backend("ibm_torino")
    isa = generate_preset_pass_manager(optimization_level=1, target=torino.target).run(
        bell(measure=False)
    )
    estimator = Estimator(mode=torino)
    estimator.options.twirling.num_randomizations = 4
    obs = SparsePauliOp("ZZ").apply_layout(isa.layout)
    result = estimator.run([(isa, obs)]).result()
    assert result[0].data.evs == pytest.approx(1.0, abs=0.05)


def test_executor_program_with_argument_sets(fez: Any, pm: Any, isa_bell: QuantumCircuit) -> None:
    theta = Parameter("θ")
    qc = QuantumCircuit(1)
    qc.ry(theta, 0)
    qc.measure_all()
    isa = pm.run(qc)
    program = QuantumProgram(shots=64)
    angles = np.array([0.0, np.pi, np.pi, 0.0, np.pi, 0.0]).reshape(2, 3, 1)
    program.append_circuit_item(isa, circuit_arguments=angles)
    program.append_circuit_item(isa_bell)
    job = Executor(fez).run(program)
    result = job.result()
    first, second = result
    bits = first["meas"]
    assert bits.shape == (2, 3, 64, 1) and bits.dtype == bool
    assert np.array_equal(bits[..., 0].all(axis=-1), angles[..., 0] == np.pi)
    assert np.array_equal(bits[..., 0].any(axis=-1), angles[..., 0] == np.pi)
    assert second["meas"].shape == (64, 2)
    assert np.all(second["meas"][:, 0] == second["meas"][:, 1])  # a Bell pair
    # one chunk of 7 elements; executions = (6 + 1) x 64 shots
    (chunk,) = result.metadata.chunk_timing
    assert [(part.idx_item, part.size) for part in chunk.parts] == [(0, 6), (1, 1)]


@pytest.mark.parametrize("version", ["v0.1", "v0.2", "v1.0", "v1.1"])
def test_older_schema_versions(official: Any, fez: Any, version: str) -> None:
    qc = QuantumCircuit(1)
    qc.x(0)
    qc.measure_all()
    isa = generate_preset_pass_manager(optimization_level=1, target=fez.target).run(qc)
    program = QuantumProgram(shots=10)
    program.append_circuit_item(isa)
    params = QUANTUM_PROGRAM_PARAMS_CONVERTERS[version].encoder(program, ExecutorOptions())
    job = official._run(
        program_id="executor", inputs=params.model_dump(mode="json"), options={"backend": fez}
    )
    result = job.result()  # decoded by the client's decoder of that result version
    assert result[0]["meas"].shape == (10, 1) and result[0]["meas"].all()


# ---------------------------------------------------------------------------------------------
# Dry runs: the mock twin
# ---------------------------------------------------------------------------------------------


def test_dry_run_estimates_and_bills_nothing(
    emulator: EmulatorThread, official: Any, fez: Any, isa_bell: QuantumCircuit
) -> None:
    consumed = official.usage()["usage_consumed_seconds"]
    job = SamplerV2(mode=fez).run([isa_bell], shots=300, dry_run=True)
    result = job.result()
    assert job.backend().name == "mock_fez"
    # validated and pre-processed for real: the modelled time of the same job on ibm_fez
    estimate = job.usage_estimation["quantum_seconds"]
    assert estimate == pytest.approx(2.0 + 300 * (250e-6 + 9.5e-5), rel=0.05)
    assert job.usage() == 0 and official.usage()["usage_consumed_seconds"] == consumed
    # no QPU turn: no QPU span in the metrics, no chunk timing in the result
    assert "qpu_start" not in stages(job)
    assert result.metadata["executor"].chunk_timing == []
    # the result keeps the schema, with random (seeded) bits
    meas = result[0].data.meas
    assert meas.num_shots == 300 and meas.num_bits == 2
    assert len(meas.get_counts()) == 4
    # dry runs are listed only with include_mocks, as on IBM
    assert job.job_id() not in {j.job_id() for j in official.jobs(limit=None)}
    assert job.job_id() in {j.job_id() for j in official.jobs(limit=None, include_mocks=True)}


def test_mock_twins_are_listed_only_with_include_mocks(
    emulator: EmulatorThread, official: Any
) -> None:
    assert "mock_fez" not in {b.name for b in official.backends()}
    mock = official.backend("mock_fez")
    assert mock.num_qubits == 156 and mock.configuration().backend_name == "mock_fez"
    listed = raw_get(emulator, p.BACKENDS).json()["devices"]
    assert all(d["class"] == "real" for d in listed)
    with_mocks = raw_get(emulator, p.BACKENDS, include_mocks="true").json()["devices"]
    assert {d["name"]: d["class"] for d in with_mocks}["mock_fez"] == "mock"
    for path in (p.BACKEND_PROPERTIES, p.BACKEND_STATUS):
        assert raw_get(emulator, path.format(name="mock_fez")).status_code == 200


def test_dry_run_estimator_and_noise_free_bill(fez: Any, pm: Any) -> None:
    isa = pm.run(bell(measure=False))
    obs = SparsePauliOp("ZZ").apply_layout(isa.layout)
    job = Estimator(mode=fez).run([(isa, obs)], dry_run=True)
    result = job.result()  # the client's estimator post-processing accepts the mock data
    assert result[0].data.evs.shape == ()
    assert job.usage() == 0 and job.usage_estimation["quantum_seconds"] > 2.0


# ---------------------------------------------------------------------------------------------
# Legacy programs: options accepted and ignored say so
# ---------------------------------------------------------------------------------------------


def test_legacy_mitigation_options_are_reported(
    fez: Any, pm: Any, isa_bell: QuantumCircuit
) -> None:
    isa = pm.run(bell(measure=False))
    estimator = EstimatorV2(mode=fez)  # resilience_level 1 by default
    estimator.options.dynamical_decoupling.enable = True
    estimator.options.default_precision = 0.1
    job = estimator.run([(isa, SparsePauliOp("ZZ").apply_layout(isa.layout))])
    note = job.result().metadata["emulator"]
    assert note["ignored_options"][0].startswith("resilience_level=1 (TREX")
    assert "dynamical_decoupling.enable" in note["ignored_options"]
    assert "executor_estimator.Estimator" in note["note"]
    logs = job.logs()
    assert "WARNING" in logs and "resilience_level=1" in logs and "client" in logs
    sampler = LegacySampler(mode=fez)
    sampler.options.twirling.enable_gates = True
    job = sampler.run([isa_bell], shots=10)
    assert job.result().metadata["emulator"]["ignored_options"] == ["twirling.enable_gates"]
    plain = LegacySampler(mode=fez).run([isa_bell], shots=10)
    assert "emulator" not in plain.result().metadata and "WARNING" not in plain.logs()


# ---------------------------------------------------------------------------------------------
# Bad input: a 4xx at POST /jobs, or a Failed job naming the problem; never a 500
# ---------------------------------------------------------------------------------------------


def submit_params(official: Any, fez: Any, params: dict[str, Any]) -> Any:
    return official._run(program_id="executor", inputs=params, options={"backend": fez})


def assert_failed(job: Any, code: int, *words: str) -> None:
    with pytest.raises(RuntimeJobFailureError) as info:
        job.result()
    message = str(info.value)
    assert str(int(code)) in message, message
    for word in words:
        assert word.lower() in message.lower(), message
    assert job.status() == "ERROR"


def plain_program(isa: QuantumCircuit, shots: int = 10) -> QuantumProgram:
    program = QuantumProgram(shots=shots)
    program.append_circuit_item(isa)
    return program


def v2_params(program: QuantumProgram) -> dict[str, Any]:
    encoder = QUANTUM_PROGRAM_PARAMS_CONVERTERS["v2.0"].encoder
    return dict(encoder(program, ExecutorOptions()).model_dump(mode="json"))


def test_unknown_schema_version_is_refused_at_submit(
    official: Any, fez: Any, isa_bell: QuantumCircuit
) -> None:
    params = v2_params(plain_program(isa_bell))
    params["schema_version"] = "v9.9"
    with pytest.raises(IBMRuntimeError, match=r"(?s)400.*schema_version.{1,8}v9\.9.*v2\.0"):
        submit_params(official, fez, params)


def test_the_server_process_never_imports_qiskit() -> None:
    """The server answers executor and noise-learner submissions without importing qiskit: the
    schema versions checked at ``POST /jobs`` come from a worker (it imported
    ``qiskit_ibm_runtime`` on its first executor request: the event loop stalled 2.5 s and the
    server grew by 130 MiB). ``/proc/<pid>/maps`` lists the libraries a process loaded."""
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc/<pid>/maps (Linux)")

    def loads_qiskit(pid: int) -> bool:
        return "qiskit" in Path(f"/proc/{pid}/maps").read_text()

    with EmulatorProcess("--backends", "ibm_manila", "--ephemeral", "--lanes", "1") as emu:
        api = Api(emu.base_url, emu.api_key, emu.instance)
        params = v2_params(plain_program(rest_isa_bell()))
        job = api.submit_body({"program_id": "executor", "backend": "ibm_manila", "params": params})
        assert api.wait(job)["state"]["status"] == "Completed"
        for program, version in (("executor", "v9.9"), ("noise-learner", "v0.9")):
            body = {
                "program_id": program,
                "backend": "ibm_manila",
                "params": {**params, "schema_version": version},
            }
            resp = api("POST", p.JOBS, json=body)
            assert resp.status_code == 400 and f"schema_version '{version}'" in resp.text
        workers = psutil.Process(emu.pid).children(recursive=True)
        assert any(loads_qiskit(w.pid) for w in workers)  # the check below can see qiskit
        assert not loads_qiskit(emu.pid)


def test_meas_level_other_than_classified_is_refused(fez: Any, isa_bell: QuantumCircuit) -> None:
    program = QuantumProgram(shots=10, meas_level="kerneled")
    program.append_circuit_item(isa_bell)
    with pytest.raises(IBMRuntimeError, match=r"(?s)400.*meas_level.{1,8}kerneled.*classified"):
        Executor(fez).run(program)


def test_wrong_argument_shapes_fail_the_job(official: Any, fez: Any, pm: Any) -> None:
    theta = Parameter("θ")
    qc = QuantumCircuit(1)
    qc.rx(theta, 0)
    qc.measure_all()
    program = QuantumProgram(shots=10)
    program.append_circuit_item(pm.run(qc), circuit_arguments=np.zeros((3, 1)))
    params = v2_params(program)
    # two values per argument set for a circuit with one parameter
    params["quantum_program"]["items"][0]["circuit_arguments"] = (
        F64CompressedTensorModel.from_numpy(np.zeros((3, 2))).model_dump(mode="json")
    )
    assert_failed(submit_params(official, fez, params), ErrorCode.VALIDATION, "circuit_arguments")


def test_samplex_that_does_not_match_its_circuit_fails(
    fez: Any, pm: Any, isa_bell: QuantumCircuit
) -> None:
    boxed = generate_boxing_pass_manager(enable_gates=True, enable_measures=True).run(isa_bell)
    template, samplex = build(boxed)
    other = QuantumCircuit(template.num_qubits, template.num_clbits)  # no parameters at all
    other.measure(range(2), range(2))
    program = QuantumProgram(shots=10)
    program.append_samplex_item(other, samplex, shape=(2,))
    assert_failed(Executor(fez).run(program), ErrorCode.VALIDATION, "does not match its circuit")


def test_non_isa_circuit_fails_with_transpilation_code(fez: Any) -> None:
    program = plain_program(bell())  # h and cx: not Heron instructions
    assert_failed(Executor(fez).run(program), ErrorCode.TRANSPILATION, "not ISA", "'h'")


def test_too_many_executions_and_shots_fail(fez: Any, isa_bell: QuantumCircuit) -> None:
    program = QuantumProgram(shots=100_000)
    program.append_circuit_item(isa_bell)
    for _ in range(101):
        program.append_circuit_item(isa_bell)
    assert_failed(Executor(fez).run(program), ErrorCode.VALIDATION, "executions", "limit")
    assert_failed(
        Executor(fez).run(plain_program(isa_bell, shots=10**6)), ErrorCode.VALIDATION, "shots"
    )


def test_emulator_still_serves_after_bad_jobs(fez: Any, isa_bell: QuantumCircuit) -> None:
    result = Executor(fez).run(plain_program(isa_bell, shots=20)).result()
    assert result[0]["meas"].shape == (20, 2)
