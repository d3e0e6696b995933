"""Error paths, timeouts and cancellation against the real emulator (one per module, with a
manual clock and only ibm_manila, so it starts quickly).

Jobs that must stay unfinished are held by the emulator's own rules instead of by sleeping: with
a manual clock, an active dedicated session owns the QPU until its interactive TTL runs out,
which never happens until the test advances the clock, so a job-mode job submitted meanwhile
stays RUNNING (classically pre-processed, waiting for the QPU) for as long as the test wants.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anyio.to_thread
import pytest
from circuits import bell
from client_helpers import endpoint, service_for
from conftest import emulator_config
from qiskit import QuantumCircuit
from qiskit.transpiler import generate_preset_pass_manager

from aioruntime import (
    AsyncBackend,
    AsyncRuntimeService,
    AsyncSamplerV2,
    AsyncSession,
    InputValueError,
    JobCancelledError,
    JobFailedError,
    JobMaxTimeoutError,
    JobNotFoundError,
    JobTimeoutError,
    ModeState,
    NotAuthorizedError,
)
from aioruntime import protocol as p
from emulator.testing import EmulatorThread

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    """This module's emulator: a manual clock, only ibm_manila, two lanes."""
    with EmulatorThread(emulator_config(clock="manual", backends="ibm_manila", lanes=2)) as server:
        yield server


@pytest.fixture(scope="module")
def isa(manila: AsyncBackend) -> QuantumCircuit:
    pm = generate_preset_pass_manager(optimization_level=1, target=manila.target, seed_transpiler=3)
    return pm.run(bell())


# -- failed jobs -----------------------------------------------------------------------------------


async def test_failed_job_raises_with_the_reason(manila: AsyncBackend, isa: QuantumCircuit) -> None:
    job = await AsyncSamplerV2(mode=manila).run([isa], shots=10**9)  # the server's limit is lower
    with pytest.raises(JobFailedError) as info:
        await job
    err = info.value
    assert not isinstance(err, JobMaxTimeoutError)
    assert err.job_id == job.job_id() and err.reason_code == p.ErrorCode.VALIDATION
    assert "shots" in (err.reason or "").lower()
    assert str(err).startswith("Unable to retrieve job result. Error code 1002;")
    assert await job.status() == "ERROR" and job.done()
    message = await job.error_message()
    assert message is not None and message.startswith(f"Job {job.job_id()} has failed:")


async def test_invalid_option_value_fails_the_job(
    manila: AsyncBackend, isa: QuantumCircuit
) -> None:
    sampler = AsyncSamplerV2(mode=manila, options={"execution": {"rep_delay": 1.0}})
    job = await sampler.run([isa], shots=10)
    with pytest.raises(JobFailedError, match="rep_delay"):
        await job.result(timeout=120)


async def test_ran_too_long_is_the_max_timeout_error(
    manila: AsyncBackend, isa: QuantumCircuit
) -> None:
    # one job costs ~2 s of modelled QPU time; allow 1 s
    sampler = AsyncSamplerV2(mode=manila, options={"max_execution_time": 1})
    job = await sampler.run([isa], shots=100)
    with pytest.raises(JobMaxTimeoutError) as info:
        await job
    assert info.value.reason_code == p.REASON_RAN_TOO_LONG == 1305
    assert info.value.job_id == job.job_id()
    assert await job.status() == "ERROR"  # CANCELLED + 1305 reads as ERROR, as in the official
    assert "ran longer than maximum execution time" in (await job.error_message() or "")


async def test_client_side_validation_sends_nothing(
    manila: AsyncBackend, emulator: EmulatorThread
) -> None:
    before = len(emulator.requests)
    with pytest.raises(InputValueError, match="target"):
        await AsyncSamplerV2(mode=manila).run([bell()])  # not ISA: refused before sending
    with pytest.raises(InputValueError):
        await AsyncSamplerV2(mode=manila, options={"environment": {"log_level": "LOUD"}}).run(
            [bell()]
        )
    with pytest.raises(InputValueError):
        AsyncSamplerV2(mode=manila, options={"no_such_option": 1})
    assert len(emulator.requests) == before


async def test_unknown_job_is_not_found(service: AsyncRuntimeService) -> None:
    with pytest.raises(JobNotFoundError) as info:
        await service.job("d00000000000000000000")
    assert info.value.status == 404 and info.value.code == p.ErrorCode.NOT_FOUND
    with pytest.raises(JobNotFoundError):
        await service.delete_job("d00000000000000000000")


async def test_bad_token_is_not_authorized(emulator: EmulatorThread) -> None:
    async with service_for(emulator, token="not-a-key") as svc:
        with pytest.raises(NotAuthorizedError) as info:
            await svc.backends()
        assert "IAM refused the API key" in str(info.value)


async def test_foreign_instance_is_not_authorized(emulator: EmulatorThread) -> None:
    foreign = "crn:v1:bluemix:public:quantum-computing:us-east:a/someone-else::"
    async with service_for(emulator, instance=foreign) as svc:
        with pytest.raises(NotAuthorizedError) as info:
            await svc.usage()
        assert info.value.status == 401 and info.value.code == p.ErrorCode.NOT_AUTHORIZED


# -- timeouts and cancellation (manual clock) ------------------------------------------------------


@pytest.fixture(scope="module")
def held(
    emulator: EmulatorThread,
    service: AsyncRuntimeService,
    manila: AsyncBackend,
    isa: QuantumCircuit,
) -> tuple[EmulatorThread, AsyncRuntimeService, AsyncBackend, QuantumCircuit]:
    return emulator, service, manila, isa


async def _hold_the_qpu(session: AsyncSession, isa: QuantumCircuit) -> None:
    """Run one session job: the session becomes active and owns the QPU (manual clock: for
    good, until the test advances past the interactive TTL)."""
    await (await AsyncSamplerV2(mode=session).run([isa], shots=10))


async def test_timeout_raises_and_the_job_keeps_running(held: Any) -> None:
    emulator, _, backend, isa = held
    job_mode = AsyncSamplerV2(mode=backend)  # built outside the block: job mode
    async with AsyncSession(backend) as session:
        await _hold_the_qpu(session, isa)
        job = await job_mode.run([isa], shots=10)
        with pytest.raises(JobTimeoutError) as info:
            await job.result(timeout=0.3)
        assert info.value.job_id == job.job_id() and info.value.timeout == 0.3
        assert isinstance(info.value, TimeoutError)
        # the session owns the QPU: a job-mode job gets no lane and stays Queued (timing §4)
        assert await job.status() == "QUEUED"
        with pytest.raises(JobTimeoutError):
            await job.wait(timeout=0.1)
        # the job was not cancelled: once the session's interactive TTL runs out, it runs
        await anyio.to_thread.run_sync(emulator.advance, 61)
        result = await job.result(timeout=120)
        assert result[0].data.meas.num_shots == 10 and await job.status() == "DONE"


async def test_cancelling_the_awaiter_leaves_the_job_then_cancel_stops_it(held: Any) -> None:
    emulator, svc, backend, isa = held
    cancelled_before = (
        (await anyio.to_thread.run_sync(emulator.statistics)).backend("ibm_manila").cancelled
    )
    job_mode = AsyncSamplerV2(mode=backend)  # built outside the block: job mode
    async with AsyncSession(backend) as session:
        await _hold_the_qpu(session, isa)
        job = await job_mode.run([isa], shots=10)
        awaiter = asyncio.create_task(job.result())
        while svc.statistics().waits.slots_busy == 0:  # noqa: ASYNC110 - our own long-poll
            await asyncio.sleep(0)
        awaiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await awaiter
        assert await job.status() == "QUEUED"
        assert (await svc.job(job.job_id())).last_status == "QUEUED"
        # many awaiters, one waiter; job.cancel() wakes them all with JobCancelledError
        awaiters = [asyncio.create_task(job.result()) for _ in range(20)]
        while svc.statistics().waits.slots_busy == 0:  # noqa: ASYNC110
            await asyncio.sleep(0)
        assert svc.statistics().waits.waiters == 1
        await job.cancel()
        outcomes = await asyncio.gather(*awaiters, return_exceptions=True)
        assert all(isinstance(o, JobCancelledError) for o in outcomes)
        assert (await svc.job(job.job_id())).last_status == "CANCELLED"
        stats = await anyio.to_thread.run_sync(emulator.statistics)
        assert stats.backend("ibm_manila").cancelled == cancelled_before + 1


async def test_cancelled_session_block_still_closes(held: Any) -> None:
    emulator, _, backend, isa = held
    entered = asyncio.Event()
    session_ref: list[AsyncSession] = []

    job_mode = AsyncSamplerV2(mode=backend)

    async def work() -> None:
        async with AsyncSession(backend) as session:
            session_ref.append(session)
            await _hold_the_qpu(session, isa)
            blocked = await job_mode.run([isa], shots=10)
            entered.set()
            await blocked  # never finishes while the session holds the QPU

    task = asyncio.create_task(work())
    await entered.wait()
    start = len(emulator.requests)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (session,) = session_ref
    assert session.state is ModeState.CLOSED
    assert ("PATCH", "/api/v1/sessions/{id}") in [endpoint(r) for r in emulator.requests[start:]]
    assert await session.status() in {"Closed", "In progress, not accepting new jobs"}
