"""The transport seam: ``AsyncRuntimeService(transport=...)`` with an in-memory transport that
answers a few routes. No sockets, no emulator: the URLs point at a host that does not exist."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from circuits import bell
from client_helpers import INSTANCE, MemoryTransport
from qiskit.primitives.containers import PrimitiveResult
from qiskit.transpiler import generate_preset_pass_manager

import aioruntime
from aioruntime import (
    AsyncRuntimeService,
    AsyncSamplerV2,
    BackendNotFoundError,
    ConnectError,
    RateLimitError,
    ServiceClosedError,
)
from aioruntime._transport import Request

URL = "http://runtime.invalid/api/v1"


def memory_service(transport: MemoryTransport, **kwargs: Any) -> AsyncRuntimeService:
    values: dict[str, Any] = {
        "url": URL,
        "token": "memory-key",
        "instance": INSTANCE,
        "iam_url": "http://iam.invalid",
        "transport": transport,
        "backoff_s": 0.001,
    }
    values.update(kwargs)
    return AsyncRuntimeService(**values)


@pytest.fixture
async def memory() -> AsyncIterator[tuple[AsyncRuntimeService, MemoryTransport]]:
    transport = MemoryTransport()
    async with memory_service(transport) as service:
        yield service, transport


async def test_a_service_runs_on_an_in_memory_transport(
    memory: tuple[AsyncRuntimeService, MemoryTransport],
) -> None:
    service, transport = memory
    assert (await service.usage())["usage_remaining_seconds"] == 9
    manila = await service.backend("ibm_manila")
    isa = generate_preset_pass_manager(optimization_level=1, target=manila.target).run(bell())
    job = await AsyncSamplerV2(mode=manila).run([isa], shots=10)
    assert isinstance(await job, PrimitiveResult) and job.last_status == "DONE"
    assert transport.routes() == [
        ("POST", "/identity/token"),
        ("GET", "/api/v1/instances/usage"),
        ("GET", "/api/v1/backends"),
        ("GET", "/api/v1/backends/ibm_manila/configuration"),
        ("GET", "/api/v1/backends/ibm_manila/properties"),
        ("POST", "/api/v1/jobs"),
        ("GET", "/api/v1/aioruntime/capabilities"),  # 404: no long-poll, poll instead
        ("GET", "/api/v1/jobs/{id}"),
        ("GET", "/api/v1/jobs/{id}/results"),
    ]
    headers = transport.sent[-1].headers
    assert headers["Service-CRN"] == INSTANCE and headers["Authorization"].startswith("Bearer ")


async def test_the_service_closes_the_transport_it_was_given() -> None:
    transport = MemoryTransport()
    async with memory_service(transport) as service:
        await service.usage()
    assert transport.closed
    with pytest.raises(ServiceClosedError):
        await service.usage()


async def test_one_job_from_run_to_result_never_calls_back_into_the_service(
    memory: tuple[AsyncRuntimeService, MemoryTransport],
) -> None:
    """The handles work on their context: between ``run()`` and the result, no code of
    ``service.py`` runs (on the loop's thread; the codec's worker threads run no aioruntime
    code but ``protocol``)."""
    service, _ = memory
    manila = await service.backend("ibm_manila")
    isa = generate_preset_pass_manager(optimization_level=1, target=manila.target).run(bell())
    package = Path(aioruntime.__file__).parent
    entered: set[str] = set()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        path = Path(frame.f_code.co_filename)
        if event == "call" and path.parent == package:
            entered.add(path.name)

    sys.setprofile(profile)
    try:
        job = await AsyncSamplerV2(mode=manila).run([isa], shots=10)
        await job
    finally:
        sys.setprofile(None)
    assert "service.py" not in entered
    assert {"primitives.py", "_context.py", "_http.py", "job.py", "_wait.py"} <= entered


async def test_jobs_is_a_list_when_awaited_and_pages_when_iterated(
    memory: tuple[AsyncRuntimeService, MemoryTransport],
) -> None:
    service, transport = memory
    for i in range(25):
        transport.add_job(f"listed-{i}", "ibm_manila")
    start = len(transport.sent)
    jobs = await service.jobs(limit=None)
    assert isinstance(jobs, list) and len(jobs) == 25
    assert [j.job_id() for j in jobs[:2]] == ["listed-24", "listed-23"]  # newest first
    pages = [r for r in transport.sent[start:] if r.url.endswith("/jobs")]
    assert [dict(r.params or {})["limit"] for r in pages] == ["20", "20"]
    start = len(transport.sent)
    seen = []
    async for job in service.jobs(limit=None):
        seen.append(job)
        if len(seen) == 3:
            break
    assert len([r for r in transport.sent[start:] if r.url.endswith("/jobs")]) == 1
    assert [j.job_id() for j in await service.jobs(limit=2, skip=1)] == ["listed-23", "listed-22"]


@pytest.mark.parametrize("listed", [True, False], ids=["from-the-list", "from-the-status-route"])
async def test_least_busy_picks_the_shortest_queue(listed: bool) -> None:
    transport = MemoryTransport({"ibm_busy": 7, "ibm_idle": 1, "ibm_mid": 3})
    transport.list_queues = listed
    async with memory_service(transport) as service:
        start = len(transport.sent)
        assert (await service.least_busy()).name == "ibm_idle"
        routes = transport.routes()[start:]
        configurations = [r for r in routes if r[1].endswith("/configuration")]
        assert configurations == [("GET", "/api/v1/backends/ibm_idle/configuration")]
        assert any(r[1].endswith("/status") for r in routes) is not listed
        transport.queues["ibm_idle"] = 9  # read afresh on every call
        assert (await service.least_busy(min_num_qubits=5)).name == "ibm_mid"
        assert (await service.least_busy(filters=lambda b: b.name != "ibm_mid")).name == "ibm_busy"
        with pytest.raises(BackendNotFoundError, match="No backend matches"):
            await service.least_busy(min_num_qubits=6)  # manila has 5


def refuse(times: int | None) -> Any:
    """A ``before_send`` hook: the next ``times`` requests (all, with None) find no server."""
    left = [times]

    def hook(request: Request) -> None:
        if left[0] is None or left[0] > 0:
            left[0] = None if left[0] is None else left[0] - 1
            raise ConnectError(f"cannot connect for {request.method} {request.url}: refused")

    return hook


async def test_a_server_never_reached_is_not_retried() -> None:
    transport = MemoryTransport()
    transport.before_send = refuse(None)
    async with memory_service(transport) as service:
        with pytest.raises(ConnectError, match=r"http://iam\.invalid/identity/token.*refused"):
            await service.usage()
    assert len(transport.sent) == 1


async def test_a_server_that_answered_before_is_retried_when_it_refuses() -> None:
    transport = MemoryTransport()
    async with memory_service(transport, connect_retries=3) as service:
        await service.usage()
        start = len(transport.sent)
        transport.before_send = refuse(2)  # e.g. restarting
        await service.usage()
        assert len(transport.sent) - start == 3
        start = len(transport.sent)
        transport.before_send = refuse(None)  # gone for good: 1 + connect_retries attempts
        with pytest.raises(ConnectError):
            await service.usage()
        assert len(transport.sent) - start == 4


async def test_retry_after_is_honoured_for_idempotent_requests_only(
    memory: tuple[AsyncRuntimeService, MemoryTransport],
) -> None:
    service, transport = memory
    usage = ("GET", "/api/v1/instances/usage")
    transport.answers[usage] = [(429, {"Retry-After": "0"}), (503, {})]
    await service.usage()  # 429 with Retry-After, then 503: both retried
    assert transport.routes().count(usage) == 3
    transport.answers[usage] = [(429, {})]  # no Retry-After: not retried
    with pytest.raises(RateLimitError):
        await service.usage()
    manila = await service.backend("ibm_manila")
    isa = generate_preset_pass_manager(optimization_level=1, target=manila.target).run(bell())
    transport.answers[("POST", "/api/v1/jobs")] = [(429, {"Retry-After": "0"})]
    with pytest.raises(RateLimitError) as info:  # POST: never retried on 429, as the official
        await AsyncSamplerV2(mode=manila).run([isa])
    assert info.value.retry_after == 0
    assert transport.routes().count(("POST", "/api/v1/jobs")) == 1


async def test_a_job_knows_its_backend_even_before_anything_was_loaded(
    memory: tuple[AsyncRuntimeService, MemoryTransport],
) -> None:
    service, transport = memory
    transport.add_job("on-manila", "ibm_manila")
    transport.add_job("on-retired", "ibm_retired")  # a device the server no longer lists
    job = await service.job("on-manila")
    backend = job.backend()
    assert backend is not None and backend.name == "ibm_manila"
    assert backend is await service.backend("ibm_manila")
    listed = {j.job_id(): j for j in await service.jobs(backend_name="ibm_manila")}
    assert listed["on-manila"].backend() is backend
    retired = await service.job("on-retired")  # still usable, without a backend object
    assert retired.backend() is None and retired.backend_name == "ibm_retired"
    assert retired.last_status == "DONE"


async def test_usage_estimation_reads_the_servers_estimate(
    memory: tuple[AsyncRuntimeService, MemoryTransport],
) -> None:
    service, transport = memory
    transport.add_job("estimated", "ibm_manila", estimate=2.5)
    transport.add_job("not-yet", "ibm_manila", estimate=None)
    job = await service.job("estimated")
    start = len(transport.sent)
    assert await job.usage_estimation() == {"quantum_seconds": 2.5}
    assert len(transport.sent) == start  # the body service.job() read carried it
    pending = await service.job("not-yet")
    assert await pending.usage_estimation() == {"quantum_seconds": None}
    transport.jobs["not-yet"]["estimated_running_time_seconds"] = 4
    assert await pending.usage_estimation() == {"quantum_seconds": 4.0}  # asked again
    sent = len(transport.sent)
    assert await pending.usage_estimation() == {"quantum_seconds": 4.0}
    assert len(transport.sent) == sent  # then kept
