"""aioruntime's executor path against the real emulator over loopback (real Aer, manual clock):
the client-side Sampler and Estimator, ``AsyncExecutor`` + ``QuantumProgram``, sessions and
batches, dry runs, PEC through the noise learner, the CPU pool, and the same requests on the
wire as the official client."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np
import pytest
import pytest_asyncio
from circuits import bell
from client_helpers import endpoint, service_for
from conftest import emulator_config
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import Executor, QuantumProgram
from qiskit_ibm_runtime.quantum_program.params_converters import (
    QUANTUM_PROGRAM_PARAMS_CONVERTERS,
)
from qiskit_ibm_runtime.results import QuantumProgramResult

from aioruntime import (
    AsyncBackend,
    AsyncBatch,
    AsyncExecutor,
    AsyncExecutorEstimatorV2,
    AsyncExecutorSamplerV2,
    AsyncRuntimeService,
    AsyncSamplerV2,
    AsyncSession,
    BadRequestError,
    InputValueError,
    JobCancelledError,
    JobTimeoutError,
)
from aioruntime import protocol as p
from emulator.testing import EmulatorThread

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    """Manual clock: model time moves only when a test says so (session windows are exact)."""
    with EmulatorThread(emulator_config(backends="ibm_fez,ibm_manila", clock="manual")) as emu:
        yield emu


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fez(service: AsyncRuntimeService) -> AsyncBackend:
    return await service.backend("ibm_fez")


@pytest.fixture(scope="module")
def pm(fez: AsyncBackend) -> Any:
    return generate_preset_pass_manager(optimization_level=1, target=fez.target, seed_transpiler=7)


@pytest.fixture(scope="module")
def isa_bell(pm: Any) -> QuantumCircuit:
    return pm.run(bell())


@pytest.fixture(scope="module")
def small_pm(manila: AsyncBackend) -> Any:
    """ibm_manila (5 qubits): for what does not need a wide device, so the emulator's own work
    stays small (ibm_fez dresses and measures all 156 qubits of every executor circuit)."""
    return generate_preset_pass_manager(1, target=manila.target, seed_transpiler=7)


def observables(isa: QuantumCircuit, labels: tuple[str, ...] = ("ZZ", "XX", "IZ")) -> list[Any]:
    return [SparsePauliOp(label).apply_layout(isa.layout) for label in labels]


async def in_thread(fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(fn, *args)


# -- the client-side primitives --------------------------------------------------------------------


async def test_sampler_bell_on_fez(fez: AsyncBackend, isa_bell: QuantumCircuit) -> None:
    job = await AsyncExecutorSamplerV2(mode=fez).run([isa_bell], shots=300)
    result = await job
    counts = result[0].data.meas.get_counts()
    assert job.primitive_id == "executor" and job.session_id is None
    assert set(counts) <= {"00", "11"} and sum(counts.values()) == 300
    assert result.metadata["executor"].chunk_timing  # it ran on the QPU
    metrics = await job.metrics()
    assert await job.usage() == pytest.approx(metrics["emulator"]["modelled_quantum_seconds"])


@pytest.mark.parametrize("device, noise", [("ibm_fez", "none"), ("ibm_manila", "full")])
async def test_estimator_defaults(service: AsyncRuntimeService, device: str, noise: str) -> None:
    backend = await service.backend(device)
    isa = generate_preset_pass_manager(
        optimization_level=1, target=backend.target, seed_transpiler=7
    ).run(bell(measure=False))
    estimator = AsyncExecutorEstimatorV2(mode=backend, options={"default_shots": 1024})
    assert estimator.options.resilience_level == 1 and estimator.finalize_options().resilience
    assert estimator.finalize_options().resilience.measure_mitigation  # TREX, the default
    estimator.options.experimental = {"noise_level": noise}
    result = await (await estimator.run([(isa, observables(isa))]))
    evs, stds = result[0].data.evs, result[0].data.stds
    assert evs.shape == (3,)
    assert evs[:2] == pytest.approx([1.0, 1.0], abs=0.1)  # TREX undoes most readout error
    assert abs(evs[2]) < 0.15
    assert np.all(np.isfinite(stds)) and np.all(stds >= 0) and stds[2] > 0
    if noise == "full":  # the device's noise spreads every estimate
        assert np.all(stds > 0)
        assert result.metadata["options"]["resilience"]["measure_mitigation"]


async def test_executor_program_with_argument_sets(
    fez: AsyncBackend, pm: Any, isa_bell: QuantumCircuit
) -> None:
    theta = Parameter("θ")
    qc = QuantumCircuit(1)
    qc.ry(theta, 0)
    qc.measure_all()
    program = QuantumProgram(shots=64)
    angles = np.array([0.0, np.pi, np.pi, 0.0, np.pi, 0.0]).reshape(2, 3, 1)
    program.append_circuit_item(pm.run(qc), circuit_arguments=angles)
    program.append_circuit_item(isa_bell)
    job = await AsyncExecutor(fez, {"environment": {"job_tags": ["qp"]}}).run(program)
    result = await job
    assert isinstance(result, QuantumProgramResult)
    first, second = result
    assert first["meas"].shape == (2, 3, 64, 1) and first["meas"].dtype == bool
    assert np.array_equal(first["meas"][..., 0].all(axis=-1), angles[..., 0] == np.pi)
    assert np.array_equal(first["meas"][..., 0].any(axis=-1), angles[..., 0] == np.pi)
    assert np.all(second["meas"][:, 0] == second["meas"][:, 1])  # a Bell pair
    (chunk,) = result.metadata.chunk_timing
    assert [(part.idx_item, part.size) for part in chunk.parts] == [(0, 6), (1, 1)]
    assert job.tags == ["qp"] and (await job.inputs())["schema_version"] == "v2.0"


async def test_bad_input_is_refused_before_anything_is_sent(
    emulator: EmulatorThread, fez: AsyncBackend, isa_bell: QuantumCircuit
) -> None:
    before = len(emulator.requests)
    with pytest.raises(InputValueError, match="No pubs"):
        await AsyncExecutorSamplerV2(mode=fez).run([])
    with pytest.raises(InputValueError, match=r"(?i)noise model is missing"):
        options = {"resilience": {"pec_mitigation": True, "layer_noise_model": []}}
        plain = isa_bell.remove_final_measurements(inplace=False)
        await AsyncExecutorEstimatorV2(fez, options).run([(plain, "ZZ" + "I" * 154)])
    with pytest.raises(InputValueError):
        AsyncExecutorSamplerV2(mode=fez, options={"no_such_option": 1})
    assert len(emulator.requests) == before


async def test_timeout_and_cancel_as_for_any_job(
    emulator: EmulatorThread, service: AsyncRuntimeService
) -> None:
    manila = await service.backend("ibm_manila")
    isa = generate_preset_pass_manager(optimization_level=1, target=manila.target).run(bell())
    await in_thread(emulator.call, lambda: emulator.scheduler.pause("ibm_manila"))  # a gate
    try:
        job = await AsyncExecutorSamplerV2(mode=manila).run([isa], shots=10)
        assert await job.status() == "QUEUED"
        assert (await job.metrics())["position_in_queue"] == 1
        with pytest.raises(JobTimeoutError):  # the gate holds it: the timeout must expire
            await job.result(timeout=0.2)
        await job.cancel()
    finally:
        await in_thread(emulator.call, lambda: emulator.scheduler.resume("ibm_manila"))
    with pytest.raises(JobCancelledError):
        await job
    assert await job.status() == "CANCELLED" and await job.usage() == 0


# -- the CPU pool ----------------------------------------------------------------------------------


async def test_concurrent_runs_prepare_in_parallel(emulator: EmulatorThread, small_pm: Any) -> None:
    """Eight twirled runs at once: their preparations run in two worker processes at a time
    (counted by the pool), never on the event loop, and every job completes."""
    async with service_for(emulator, cpu_workers=2) as svc:
        backend = await svc.backend("ibm_manila")
        sampler = AsyncExecutorSamplerV2(backend, {"twirling": {"enable_gates": True}})
        isa = small_pm.run(bell())
        jobs = await asyncio.gather(*(sampler.run([isa], shots=64) for _ in range(8)))
        results = await asyncio.gather(*jobs)
        cpu = svc.statistics().cpu
    assert cpu.workers == 2 and svc.statistics().cpu.workers == 0  # stopped with the service
    assert all(set(r[0].data.meas.get_counts()) <= {"00", "11"} for r in results)
    assert cpu.kind == "process" and cpu.size == 2
    assert cpu.peak_running == 2, cpu  # two preparations (or decodings) at the same time
    assert cpu.calls == cpu.completed == 16 and cpu.thread_fallbacks == 0  # 8 prepare, 8 decode


async def test_light_sampler_runs_stay_in_this_process(
    emulator: EmulatorThread, small_pm: Any
) -> None:
    """A few short PUBs with nothing to twirl prepare and decode in this process (the CPU
    pool's round trip would cost more than the work): no call reaches the pool and no worker
    starts. Their results are the ones the pool decodes, and twirling, or more PUBs, sends
    the work to the pool again."""
    isa = small_pm.run(bell())
    async with service_for(emulator, cpu_workers=2) as svc:
        backend = await svc.backend("ibm_manila")
        sampler = AsyncExecutorSamplerV2(backend, {"simulator": {"seed_simulator": 3}})
        jobs = await asyncio.gather(*(sampler.run([isa], shots=64) for _ in range(3)))
        results = await asyncio.gather(*jobs)
        light = svc.statistics().cpu
        again = await (await svc.job(jobs[0].job_id()))  # a fetched handle: the pool decodes

        twirled = AsyncExecutorSamplerV2(backend, {"twirling": {"enable_measure": True}})
        await (await twirled.run([isa], shots=64))
        after_twirled = svc.statistics().cpu
        await (await sampler.run([isa] * 5, shots=8))  # more PUBs than small work has
        after_many = svc.statistics().cpu
    assert (light.calls, light.workers) == (0, 0), light
    assert all(r[0].data.meas.num_shots == 64 for r in results)
    assert all(set(r[0].data.meas.get_counts()) <= {"00", "11"} for r in results)
    assert again[0].data.meas.get_counts() == results[0][0].data.meas.get_counts()
    assert again[0].metadata == results[0][0].metadata and again.metadata == results[0].metadata
    assert after_twirled.calls == 3  # the fetched handle's decoding, then prepare and decode
    assert after_many.calls == 5 and after_many.thread_fallbacks == 0


# -- sessions, batches and dry runs ----------------------------------------------------------------


async def test_session_jobs_and_usage(
    emulator: EmulatorThread, service: AsyncRuntimeService, manila: AsyncBackend, small_pm: Any
) -> None:
    isa_bell = small_pm.run(bell())
    plain = isa_bell.remove_final_measurements(inplace=False)
    async with AsyncSession(manila) as session:
        first = await (await AsyncExecutorSamplerV2(mode=session).run([isa_bell], shots=32))
        await in_thread(emulator.advance, 30)  # the user thinks for 30 s: the QPU stays reserved
        estimator = AsyncExecutorEstimatorV2(options={"default_shots": 64})  # the open session
        job = await estimator.run([(plain, observables(plain, ("ZZ",)))])
        second = await job
    jobs = [j async for j in service.jobs(session_id=session.session_id, limit=None)]
    assert len(jobs) == 2 and {j.session_id for j in jobs} == {session.session_id}
    assert {j.primitive_id for j in jobs} == {"executor"}
    assert first[0].data.meas.num_shots == 32 and second[0].data.evs == pytest.approx(1.0)
    # a dedicated session bills its active window (model time, idle included): 30 s
    assert await session.usage() == pytest.approx(30.0)


async def test_batch_bills_the_sum_of_its_jobs(
    service: AsyncRuntimeService, manila: AsyncBackend, small_pm: Any
) -> None:
    isa_bell = small_pm.run(bell())
    before = (await service.usage())["usage_consumed_seconds"]
    async with AsyncBatch(manila) as batch:
        sampler = AsyncExecutorSamplerV2(mode=batch)
        program = QuantumProgram(shots=16)
        program.append_circuit_item(isa_bell)
        jobs = [
            *await asyncio.gather(*(sampler.run([isa_bell], shots=s) for s in (10, 20))),
            await AsyncExecutor(batch).run(program),
        ]
        results = await asyncio.gather(*jobs)
    assert {job.session_id for job in jobs} == {batch.session_id}
    assert [r[0].data.meas.num_shots for r in results[:2]] == [10, 20]
    usages = [await job.usage() for job in jobs]
    assert all(u > 2.0 for u in usages)  # each pays the per-job overhead
    assert await batch.usage() == pytest.approx(sum(usages))
    after = (await service.usage())["usage_consumed_seconds"]
    assert after - before == pytest.approx(sum(usages))


async def test_dry_run_is_costed_not_run_not_billed(
    service: AsyncRuntimeService, fez: AsyncBackend, isa_bell: QuantumCircuit
) -> None:
    consumed = (await service.usage())["usage_consumed_seconds"]
    jobs = [
        await AsyncExecutorSamplerV2(mode=fez).run([isa_bell], shots=300, dry_run=True),
        await AsyncSamplerV2(mode=fez).run([isa_bell], shots=300, dry_run=True),
    ]
    for job in jobs:
        result = await job
        assert job.backend_name == "mock_fez" and job.backend() is not None
        estimate = (await job.usage_estimation())["quantum_seconds"]
        assert estimate == pytest.approx(2.0 + 300 * (250e-6 + 9.5e-5), rel=0.05)
        assert await job.usage() == 0
        assert "qpu_start" not in (await job.metrics())["emulator"]["stages"]  # no QPU span
        assert result[0].data.meas.num_shots == 300  # the schema, with random bits
    assert (await service.usage())["usage_consumed_seconds"] == consumed
    assert (await jobs[0]).metadata["executor"].chunk_timing == []
    listed = {j.job_id() for j in await service.jobs(limit=None, include_mocks=True)}
    assert {j.job_id() for j in jobs} <= listed


async def test_dry_run_in_a_session_is_refused_by_the_server(
    fez: AsyncBackend, isa_bell: QuantumCircuit
) -> None:
    """As with the official client: the job keeps its session, whose device is not the twin."""
    async with AsyncSession(fez) as session:
        with pytest.raises(BadRequestError, match="mock_fez"):
            await AsyncExecutorSamplerV2(mode=session).run([isa_bell], shots=10, dry_run=True)


# -- PEC through the noise learner -----------------------------------------------------------------


async def test_pec_learns_the_noise_first_and_once(manila: AsyncBackend, small_pm: Any) -> None:
    qc = QuantumCircuit(3)
    qc.h(0)
    qc.cx(0, 1)
    qc.cx(1, 2)
    isa = small_pm.run(qc)
    obs = observables(isa, ("ZZI", "IZZ", "XXX"))
    estimator = AsyncExecutorEstimatorV2(
        manila,
        {
            "resilience": {"pec_mitigation": True},
            "default_shots": 1024,
            "twirling": {"num_randomizations": 64},
        },
    )
    result = await (await estimator.run([(isa, obs)]))
    # PEC inverts the device's noise on noiseless data, unbiased but noisy: each randomization
    # draws a sign (about 3% negative here, gamma 1.07), and one negative among 8 moved a value
    # by 0.27. With 64 the sign noise is about 0.05 per value: 0.3 is six of it.
    evs = result[0].data.evs
    assert evs == pytest.approx([1.0, 1.0, 1.0], abs=0.3), evs
    (learner,) = estimator.noise_learner_jobs
    assert learner.primitive_id == "noise-learner" and await learner.usage() > 60
    # an optimizer's next step: same layers, nothing more to learn
    again = await (await estimator.run([(isa, obs)]))
    assert len(estimator.noise_learner_jobs) == 1 and again[0].data.evs.shape == (3,)


# -- the wire: same requests as the official client ------------------------------------------------


def _official_executor_job(emulator: EmulatorThread, program: QuantumProgram) -> str:
    official = emulator.official_service()
    backend = official.backend("ibm_fez")
    _ = backend.target  # as a user transpiling for it (aioruntime loads the target at once)
    job = Executor(backend).run(program)
    job.result()
    return str(job.job_id())


async def _our_executor_job(emulator: EmulatorThread, program: QuantumProgram) -> str:
    async with service_for(emulator, preflight_checks=True, job_wait="poll") as svc:
        job = await AsyncExecutor(await svc.backend("ibm_fez")).run(program)
        await job
        return job.job_id()


async def test_requests_match_the_official_client(
    emulator: EmulatorThread, service: AsyncRuntimeService, isa_bell: QuantumCircuit
) -> None:
    program = QuantumProgram(shots=20)
    program.append_circuit_item(isa_bell)
    start = len(emulator.requests)
    theirs_id = await in_thread(_official_executor_job, emulator, program)
    middle = len(emulator.requests)
    ours_id = await _our_executor_job(emulator, program)
    end = len(emulator.requests)

    def submitted(records: list[dict[str, Any]]) -> dict[tuple[str, str], set[Any]]:
        out: dict[tuple[str, str], set[Any]] = {}
        for r in records:
            if r["path"].startswith(("/v3/resources", "/catalog", "/identity")):
                continue  # instance search and IAM: compared in test_client_e2e.py
            key = endpoint(r)
            out.setdefault(key, set()).add((tuple(r["query"]), tuple(r["body_keys"] or ())))
        return out

    theirs = submitted(emulator.requests[start:middle])
    ours = submitted(emulator.requests[middle:end])
    # the same routes; GET /backends lists mocks too, to find a dry run's twin
    assert set(theirs) == set(ours), set(theirs) ^ set(ours)
    for key in theirs:
        if key != ("GET", "/api/v1/backends"):
            assert ours[key] == theirs[key], key
    (post,) = ours[("POST", "/api/v1/jobs")]
    assert set(post[1]) == {
        *("backend", "log_level", "params", "program_id"),
        *("params.options", "params.quantum_program", "params.schema_version"),
    }
    # and the same job: the params the server stored are equal
    api = service.context.api
    bodies = [await api.get_json(p.path(p.JOB, job_id=i)) for i in (theirs_id, ours_id)]
    assert {body["program"]["id"] for body in bodies} == {"executor"}
    assert same_params(bodies[0]["params"], bodies[1]["params"])


def same_params(theirs: dict[str, Any], ours: dict[str, Any]) -> bool:
    """Equal params; the QPY blob compared as circuits. QPY writes a transpiled circuit's
    layout registers in set order, which follows the process's string-hash seed: the official
    client in another process (as our worker is) writes other bytes for the same circuit."""
    decoder = QUANTUM_PROGRAM_PARAMS_CONVERTERS["v2.0"]
    programs = [decoder.decoder(decoder.model.model_validate(x))[0] for x in (theirs, ours)]
    for a, b in zip(*(program.items for program in programs), strict=True):
        assert a.circuit == b.circuit
        assert a.circuit.layout.initial_index_layout() == b.circuit.layout.initial_index_layout()
        assert np.array_equal(a.circuit_arguments, b.circuit_arguments)
    blobs = [x["quantum_program"].pop("circuits") for x in (theirs, ours)]
    assert blobs[0].keys() == blobs[1].keys()
    return theirs == ours


# -- the example -----------------------------------------------------------------------------------


def load_example(name: str) -> Any:
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


async def test_concurrent_vqe_on_the_executor_estimator(service: AsyncRuntimeService) -> None:
    example = load_example("concurrent_vqe_executor")
    summary = await example.run_two_vqe(
        service, "ibm_manila", maxiter=6, shots=256, num_randomizations=4
    )
    optimizers = summary["optimizers"]
    assert set(optimizers) == {"COBYLA", "Nelder-Mead"}
    jobs = await service.jobs(session_id=summary["session_id"], limit=None)
    assert len(jobs) == summary["jobs"] == sum(o["nfev"] for o in optimizers.values())
    assert {j.primitive_id for j in jobs} == {"executor"}
    assert {tuple(j.tags) for j in jobs} == {("cobyla",), ("nelder-mead",)}
    for entry in optimizers.values():
        assert len(entry["history"]) == entry["nfev"] and np.isfinite(entry["energy"])
        assert entry["energy"] > summary["exact_energy"] - 0.3  # a variational bound, give or take
    quantum = sum([await j.usage() for j in jobs])
    assert summary["session_usage_s"] == pytest.approx(quantum)  # manual clock: no idle time
