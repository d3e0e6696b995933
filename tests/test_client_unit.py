"""aioruntime without the emulator: public surface, errors, configuration, IAM token handling,
retries, and the waiting machinery against an in-loop fake server (no sleeps, no emulator)."""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from client_helpers import API_KEY, INSTANCE, FakeRuntime
from qiskit.primitives.containers import PrimitiveResult

import aioruntime
from aioruntime import (
    AioRuntimeError,
    ApiError,
    AsyncRuntimeJob,
    AsyncRuntimeService,
    ConnectError,
    InputValueError,
    InvalidStateError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobMaxTimeoutError,
    JobNotFoundError,
    JobTimeoutError,
    NotAuthorizedError,
    ServerError,
    ServiceClosedError,
    ServiceState,
    TransportError,
    UsageError,
)
from aioruntime import errors as errors_module
from aioruntime import protocol as p
from aioruntime._http import ClientConfig, TokenManager
from aioruntime.session import parse_max_time

# -- public surface --------------------------------------------------------------------------------

PROMISED = {
    "AsyncRuntimeService", "AsyncBackend", "AsyncSession", "AsyncBatch", "AsyncSamplerV2",
    "AsyncEstimatorV2", "AsyncRuntimeJob", "AioRuntimeError", "TransportError", "ApiError",
    "JobError", "UsageError", "JobFailedError", "JobMaxTimeoutError", "JobCancelledError",
    "JobTimeoutError", "JobNotFoundError", "NotAuthorizedError", "SessionClosedError",
}  # fmt: skip


def test_public_names_are_exported_and_sorted() -> None:
    assert aioruntime.__all__ == sorted(aioruntime.__all__)
    assert PROMISED <= set(aioruntime.__all__)
    for name in aioruntime.__all__:
        assert getattr(aioruntime, name) is not None, name
    assert set(errors_module.__all__) - {"api_error_class"} <= set(aioruntime.__all__)


def _runtime_imports(tree: ast.Module) -> set[str]:
    """Modules a module imports when it runs (``if TYPE_CHECKING:`` blocks left out)."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                visit(node.orelse)
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found.add(node.module or "")
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])

    visit(tree.body)
    return found


def test_handles_reach_the_service_only_through_its_context() -> None:
    """No module touches AsyncRuntimeService's private members, and only ``__init__`` imports
    ``service`` at run time: backends, jobs, sessions and primitives hold a ClientContext."""
    package = Path(aioruntime.__file__).parent
    for path in sorted(package.glob("*.py")):
        text = path.read_text()
        assert not re.search(r"service\)?\._[a-z]", text), f"{path.name} reaches into service"
        if path.name != "__init__.py":
            assert "service" not in _runtime_imports(ast.parse(text)), path.name
    assert "_context" not in {
        name for path in package.glob("_*.py") if path.name != "_context.py"
        for name in _runtime_imports(ast.parse(path.read_text()))
    }  # fmt: skip


def test_exception_tree_families_do_not_mix() -> None:
    families = [errors_module.TransportError, ApiError, JobError, UsageError]
    families.append(errors_module.WorkerDiedError)  # the client's own worker processes
    classes = [
        obj
        for obj in vars(errors_module).values()
        if inspect.isclass(obj) and issubclass(obj, AioRuntimeError) and obj is not AioRuntimeError
    ]
    for cls in classes:
        assert sum(issubclass(cls, fam) for fam in families) == 1, cls
        assert cls.__name__ in (errors_module.__doc__ or ""), f"{cls.__name__} not in the tree"
    assert issubclass(JobMaxTimeoutError, JobFailedError)
    assert issubclass(JobTimeoutError, TimeoutError)
    assert issubclass(InputValueError, ValueError)
    assert issubclass(errors_module.RequestTimeoutError, TimeoutError)
    assert errors_module.api_error_class(401) is NotAuthorizedError
    assert errors_module.api_error_class(409) is InvalidStateError
    assert errors_module.api_error_class(503) is ServerError
    err = JobNotFoundError("gone", job_id="j1", code=1291)
    assert (err.status, err.code, err.job_id) == (404, 1291, "j1")
    assert "HTTP 404" in str(err) and "1291" in str(err)


# -- configuration ---------------------------------------------------------------------------------


def test_config_reads_the_official_environment_variables() -> None:
    env = {
        "QISKIT_IBM_TOKEN": "key-from-env",
        "QISKIT_IBM_URL": "http://127.0.0.1:9/api/v1/",
        "QISKIT_IBM_INSTANCE": INSTANCE,
        "IAM_URL": "http://127.0.0.1:9/identity/token",
    }
    config = ClientConfig.build(environ=env)
    assert config.token == "key-from-env"
    assert config.runtime_url == "http://127.0.0.1:9/api/v1"  # verbatim, no resolver
    assert config.instance == INSTANCE
    assert config.iam_url == "http://127.0.0.1:9"
    assert "key-from-env" not in repr(config)
    # arguments win over the environment
    assert ClientConfig.build(token="arg", environ=env).token == "arg"


def test_config_defaults_and_friendly_errors() -> None:
    eu = "crn:v1:bluemix:public:quantum-computing:eu-de:a/abc::"
    config = ClientConfig.build(token="k", instance=eu, environ={})
    assert config.runtime_url == "https://eu-de.quantum.cloud.ibm.com/api/v1"
    assert config.iam_url == "https://iam.cloud.ibm.com"
    with pytest.raises(InputValueError, match="QISKIT_IBM_TOKEN"):
        ClientConfig.build(instance=eu, environ={})
    with pytest.raises(InputValueError, match="QISKIT_IBM_INSTANCE"):
        ClientConfig.build(token="k", environ={})
    with pytest.raises(InputValueError, match="max_connections"):
        ClientConfig.build(token="k", instance=eu, environ={}, max_connections=10)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), (600, 600), ("2h 30m", 9000), ("1d 1s", 86401), ("25m", 1500)],
)
def test_max_time_accepts_the_official_forms(value: Any, seconds: int | None) -> None:
    assert parse_max_time(value) == seconds


@pytest.mark.parametrize("value", ["soon", "", 0, -5, True, 1.5])
def test_max_time_rejects_nonsense(value: Any) -> None:
    with pytest.raises(InputValueError):
        parse_max_time(value)


def test_official_status_names() -> None:
    assert p.client_job_status("Completed", None) == "DONE"
    assert p.client_job_status("Failed", 1002) == "ERROR"
    assert p.client_job_status("Cancelled", 1305) == "ERROR"
    assert p.client_job_status("Cancelled", None) == "CANCELLED"


# -- IAM tokens ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_token_refresh_is_single_flight_and_proactive() -> None:
    clock = FakeClock()
    calls = 0
    gate = asyncio.Event()

    async def fetch() -> tuple[str, float]:
        nonlocal calls
        calls += 1
        await gate.wait()
        return f"token-{calls}", 100.0

    tokens = TokenManager(fetch, clock=clock)
    waiters = [asyncio.create_task(tokens.get()) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    assert set(await asyncio.gather(*waiters)) == {"token-1"}
    assert calls == 1

    # before 80 % of the lifetime: no refresh at all
    clock.now += 79
    assert await tokens.get() == "token-1" and calls == 1
    # past 80 %: callers keep the valid token while ONE refresh runs in the background
    gate.clear()
    clock.now += 2
    assert await asyncio.gather(*(tokens.get() for _ in range(20))) == ["token-1"] * 20
    assert calls == 2
    gate.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert await tokens.get() == "token-2" and calls == 2
    # expired (10 s early): callers wait for the refresh, still only one
    clock.now += 95
    gate.clear()
    waiters = [asyncio.create_task(tokens.get()) for _ in range(10)]
    await asyncio.sleep(0)
    gate.set()
    assert set(await asyncio.gather(*waiters)) == {"token-3"} and calls == 3
    assert tokens.refreshes == 3
    await tokens.aclose()


async def test_cancelled_caller_does_not_cancel_the_shared_refresh() -> None:
    gate = asyncio.Event()

    async def fetch() -> tuple[str, float]:
        await gate.wait()
        return "t", 100.0

    tokens = TokenManager(fetch)
    first = asyncio.create_task(tokens.get())
    second = asyncio.create_task(tokens.get())
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    assert await second == "t"


@pytest.fixture
async def fake() -> AsyncIterator[FakeRuntime]:
    server = FakeRuntime()
    await server.start()
    yield server
    await server.close()


async def test_iam_exchange_and_headers(fake: FakeRuntime) -> None:
    async with fake.service() as service:
        assert await service.usage() == {
            "usage_consumed_seconds": 1,
            "usage_limit_seconds": 10,
            "usage_remaining_seconds": 9,
        }
        await service.usage()
    assert fake.iam_calls == 1
    assert fake.iam_forms[0] == {
        "grant_type": p.IAM_GRANT_TYPE,
        "apikey": API_KEY,
        "response_type": "cloud_iam",
    }


async def test_bad_api_key_is_not_authorized(fake: FakeRuntime) -> None:
    async with fake.service(token="wrong") as service:
        with pytest.raises(NotAuthorizedError, match="API key"):
            await service.usage()


async def test_revoked_token_is_renewed_once_then_refused(fake: FakeRuntime) -> None:
    async with fake.service() as service:
        await service.usage()
        first = service.context.api.tokens._token
        assert first is not None
        fake.revoked.add(first.value)
        await service.usage()  # 401 → one new token → success
        assert fake.iam_calls == 2
        fake.reject_all_tokens = True
        with pytest.raises(NotAuthorizedError) as info:
            await service.usage()
        assert info.value.status == 401 and info.value.code == 1201
        assert fake.iam_calls == 3  # one more try with a fresh token, then give up


async def test_5xx_is_retried_like_the_official_client(fake: FakeRuntime) -> None:
    async with fake.service(retries=5) as service:
        fake.fail_next = [503, 502, 500]
        await service.usage()
        assert service.statistics().transport.retries == 3
        fake.fail_next = [503] * 6
        with pytest.raises(ServerError) as info:
            await service.usage()
        assert info.value.status == 503 and info.value.code == 1000


async def test_lifecycle_misuse_is_explained(fake: FakeRuntime) -> None:
    service = fake.service()
    assert service.state.value == "unopened"
    with pytest.raises(ServiceClosedError, match="not open yet"):
        await service.backends()
    assert await service.open() is service  # `service = await AsyncRuntimeService(...).open()`
    assert await service.open() is service  # idempotent while open
    async with service:
        assert service.state.value == "open"
    assert service.state is ServiceState.CLOSED
    with pytest.raises(ServiceClosedError, match="closed"):
        await service.job("x")
    with pytest.raises(ServiceClosedError, match="cannot be reopened"):
        await service.open()


async def test_unreachable_server_fails_at_once_with_the_url_and_the_cause() -> None:
    with socket.socket() as probe:  # a port nobody listens on: bound, then released
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    service = AsyncRuntimeService(url=base + "/api/v1", token="k", instance=INSTANCE, iam_url=base)
    async with service:
        with pytest.raises(ConnectError) as info:
            await service.usage()
        stats = service.statistics().transport
    assert (stats.requests_sent, stats.retries) == (1, 0)  # one attempt, no silent retries
    assert isinstance(info.value, TransportError) and info.value.url == base + p.IAM_TOKEN
    assert base + p.IAM_TOKEN in str(info.value) and "never answered" in str(info.value)
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectorError)
    assert str(info.value.__cause__) in str(info.value)


# -- waiting ---------------------------------------------------------------------------------------


def _job(service: AsyncRuntimeService, job_id: str) -> AsyncRuntimeJob:
    return AsyncRuntimeJob(context=service.context, job_id=job_id, program_id="sampler")


async def _until(predicate: Any) -> None:
    """Yield to the loop until ``predicate()`` holds (bounded by the test timeout). The
    predicates read client or fake-server state that changes within a few loop iterations."""
    while not predicate():  # noqa: ASYNC110 - no event to wait on for client-internal state
        await asyncio.sleep(0.001)


EMPTY_RESULT = p.dumps(PrimitiveResult([], metadata={"version": 2}))


async def test_many_awaiters_of_one_job_share_one_waiter(fake: FakeRuntime) -> None:
    async with fake.service() as service:
        handles = [_job(service, "j1") for _ in range(5)]  # different handles, same job
        awaiters = [asyncio.create_task(h.result()) for h in handles for _ in range(40)]
        await _until(lambda: fake.waits_in_flight == 1)
        assert service.statistics().waits.waiters == 1
        fake.finish("j1", result_text=EMPTY_RESULT)
        results = await asyncio.gather(*awaiters)
        assert all(isinstance(r, PrimitiveResult) for r in results)
        assert fake.wait_requests == 1
        assert fake.paths("GET").count("/api/v1/aioruntime/capabilities") == 1
        assert all(h.done() and h.last_status == "DONE" for h in handles)


@pytest.mark.slow
async def test_ten_thousand_waiters_are_bounded_by_the_limiter(fake: FakeRuntime) -> None:
    n, slots = 10_000, 32
    async with fake.service(max_concurrent_waits=slots, max_connections=64) as service:
        waits = [asyncio.create_task(_job(service, f"j{i}").wait()) for i in range(n)]
        await _until(lambda: fake.waits_in_flight == slots)
        stats = service.statistics().waits
        assert (stats.waiters, stats.slots_busy, stats.queued) == (n, slots, n - slots)
        for i in range(n):
            fake.finish(f"j{i}")
        assert set(await asyncio.gather(*waits)) == {"DONE"}
        assert fake.max_waits_in_flight == slots
        assert fake.wait_requests == n  # one answered long-poll per job, no storm
        assert service.statistics().waits.waiters == 0


async def test_long_polls_rotate_round_robin(fake: FakeRuntime) -> None:
    async with fake.service(max_concurrent_waits=2, wait_slice_s=0.05) as service:
        waits = [asyncio.create_task(_job(service, f"r{i}").wait()) for i in range(6)]
        # every waiter gets a turn although none of the jobs ends
        await _until(
            lambda: len({path for _, path, _ in fake.requests if path.endswith("/wait")}) == 6
        )
        assert fake.max_waits_in_flight <= 2
        for i in range(6):
            fake.finish(f"r{i}")
        await asyncio.gather(*waits)


async def test_polling_fallback_backs_off(fake: FakeRuntime) -> None:
    fake.wait_extension = False
    async with fake.service(poll_rate=1000) as service:
        job = _job(service, "p1")
        waiter = asyncio.create_task(job.result())
        await _until(lambda: fake.paths("GET").count("/api/v1/jobs/p1") >= 4)
        fake.finish("p1", result_text=EMPTY_RESULT)
        assert isinstance(await waiter, PrimitiveResult)
        polls = [q for m, path, q in fake.requests if path == "/api/v1/jobs/p1"]
        assert all(q == {"exclude_params": "true"} for q in polls)
        assert service.statistics().waits.mode == "poll"
        assert not [path for path in fake.paths() if path.endswith("/wait")]


async def test_timeout_leaves_the_job_running(fake: FakeRuntime) -> None:
    async with fake.service() as service:
        job = _job(service, "t1")
        with pytest.raises(JobTimeoutError) as info:
            await job.result(timeout=0.05)
        assert info.value.job_id == "t1" and isinstance(info.value, TimeoutError)
        assert fake.cancels == [] and not job.done()
        await _until(lambda: service.statistics().waits.waiters == 0)  # the waiter stopped
        assert await job.status() == "RUNNING"


async def test_cancelling_the_awaiting_task_does_not_cancel_the_job(fake: FakeRuntime) -> None:
    async with fake.service() as service:
        job = _job(service, "c1")
        task = asyncio.create_task(job.result())
        await _until(lambda: fake.waits_in_flight == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _until(lambda: service.statistics().waits.waiters == 0)
        assert fake.cancels == []
        assert await job.status() == "RUNNING"
        # job.cancel() does cancel it; awaiting it then raises JobCancelledError
        await job.cancel()
        assert fake.cancels == ["c1"] and job.last_status == "CANCELLED" and job.done()
        with pytest.raises(JobCancelledError):
            await job
        with pytest.raises(InvalidStateError) as info:
            await job.cancel()  # already final: 409
        assert info.value.job_id == "c1"


async def test_one_awaiter_cancelled_others_keep_waiting(fake: FakeRuntime) -> None:
    async with fake.service() as service:
        job = _job(service, "k1")
        quitter = asyncio.create_task(job.result())
        stayer = asyncio.create_task(job.result())
        await _until(lambda: fake.waits_in_flight == 1)
        quitter.cancel()
        await asyncio.gather(quitter, return_exceptions=True)
        fake.finish("k1", result_text=EMPTY_RESULT)
        assert isinstance(await stayer, PrimitiveResult)
        assert fake.wait_requests == 1


@pytest.mark.parametrize(
    ("status", "code", "exc"),
    [("Failed", 1517, JobFailedError), ("Cancelled", 1305, JobMaxTimeoutError)],
)
async def test_outcomes_map_to_the_error_tree(
    fake: FakeRuntime, status: str, code: int, exc: type[JobError]
) -> None:
    async with fake.service() as service:
        job = _job(service, "f1")
        fake.finish("f1", status, reason="it broke", reason_code=code)
        with pytest.raises(exc) as info:
            await job
        assert info.value.job_id == "f1"
        assert isinstance(info.value, JobFailedError) and info.value.reason_code == code
        assert f"Error code {code}; it broke" in str(info.value)
        assert await job.status() == "ERROR"


async def test_unknown_job_is_not_found(fake: FakeRuntime) -> None:
    async with fake.service() as service:
        with pytest.raises(JobNotFoundError) as info:
            await _job(service, "missing-1").result()
        assert info.value.job_id == "missing-1" and info.value.code == 1291


async def test_closing_the_service_stops_waiters_with_a_clear_error(fake: FakeRuntime) -> None:
    service = fake.service()
    await service.open()
    task = asyncio.create_task(_job(service, "z1").result())
    await _until(lambda: fake.waits_in_flight == 1)
    await service.aclose()
    with pytest.raises(ServiceClosedError, match="closed while waiting"):
        await task


def test_faulty_qubits_are_checked_with_the_official_code_once_per_backend() -> None:
    from qiskit import QuantumCircuit
    from qiskit_ibm_runtime.ibm_backend import IBMBackend

    from aioruntime.backend import _FaultyProperties

    qc = QuantumCircuit(2)
    qc.x(0)
    qc.cx(0, 1)
    IBMBackend.check_faulty(_FaultyProperties([5], []), qc)  # qubit 5 unused: fine
    with pytest.raises(ValueError, match="faulty qubit 0"):
        IBMBackend.check_faulty(_FaultyProperties([0], []), qc)


# -- small work on the loop ------------------------------------------------------------------------


def test_the_inline_budget_caps_the_loops_share() -> None:
    from aioruntime._context import InlineBudget

    budget = InlineBudget(window_s=3600, share_s=0.001)  # one window for the whole test
    assert budget.allows()
    budget.charge(0.0004)
    assert budget.allows()
    budget.charge(0.0007)  # 1.1 ms spent: the rest of this window goes to threads
    assert not budget.allows() and not budget.allows()
    assert (budget.inlined, budget.deferred) == (2, 2)
    fresh = InlineBudget(window_s=0.0, share_s=0.001)  # every call opens a new window
    fresh.charge(1.0)
    assert fresh.allows()


def test_only_few_short_pubs_are_small() -> None:
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter
    from qiskit.quantum_info import SparsePauliOp

    from aioruntime.primitives import _is_small

    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    theta = Parameter("t")
    ansatz = QuantumCircuit(1)
    ansatz.ry(theta, 0)
    long = QuantumCircuit(1)
    for _ in range(65):
        long.x(0)

    class Dense:
        def __array__(self, *args: Any) -> Any:
            raise AssertionError("never converted")

    assert _is_small([bell]) and _is_small([(bell, None, 100)])
    assert _is_small([(ansatz, SparsePauliOp("Z"), [0.5])])
    assert not _is_small([bell] * 5)
    assert not _is_small([long])
    assert not _is_small([(ansatz, [[0.1]] * 65)])  # nested values: not looked into
    assert not _is_small([(ansatz, list(range(65)))])
    assert not _is_small([(ansatz, [SparsePauliOp("Z")] * 2, [0.5])])
    assert not _is_small([(ansatz, Dense(), [0.5])])
    assert not _is_small(["not a circuit"])
    dynamic = QuantumCircuit(1, 1)
    with dynamic.if_test((dynamic.clbits[0], 1)):
        for _ in range(100):
            dynamic.x(0)
    assert len(dynamic.data) == 1 and not _is_small([dynamic])


async def test_small_results_decode_on_the_loop_unless_a_thread_decodes(
    fake: FakeRuntime,
) -> None:
    """A small body decodes on the loop; while another thread holds the decoder's lock the
    loop never waits for it, the body goes to a thread; a big body always does."""
    import threading

    async with fake.service() as service:
        context = service.context
        inline = context.inline
        before = inline.inlined
        result = await context.decode(EMPTY_RESULT)
        assert isinstance(result, PrimitiveResult) and inline.inlined == before + 1

        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with p._DECODE_LOCK:
                held.set()
                release.wait(30)

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait(30)
        waiting = asyncio.create_task(context.decode(EMPTY_RESULT))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()  # in a thread, behind the lock; the loop still runs
        release.set()
        assert isinstance(await waiting, PrimitiveResult)
        holder.join(30)
        assert inline.inlined == before + 1

        big = p.dumps({"padding": "x" * 20_000})
        assert (await context.decode(big))["padding"] == "x" * 20_000
        assert inline.inlined == before + 1


def test_datetimes_decode_as_the_official_decoder_reads_them() -> None:
    """A result's datetimes (its execution spans) are read without dateutil's parser when they
    are what ``RuntimeEncoder`` writes, and come out as the official decoder's: the same instant
    and UTC offset (its ``tzinfo`` type varies with the machine's zone; ours is the standard
    library's). Other spellings, and errors, are the official decoder's own."""
    import datetime as dt
    import json

    from dateutil import tz
    from qiskit_ibm_runtime.execution_span import DoubleSliceSpan, ExecutionSpans
    from qiskit_ibm_runtime.json import RuntimeDecoder

    moments = [
        dt.datetime(2026, 11, 27, 15, 4, 5, 123456, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 27, 15, 4, 5, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 27, 15, 4, 5, 7, tzinfo=dt.timezone(dt.timedelta(hours=5.5))),
        dt.datetime(2026, 11, 27, 15, 4, 5, tzinfo=dt.timezone(-dt.timedelta(hours=8))),
        dt.datetime(2026, 11, 27, 15, 4, 5, 120000),  # naive
    ]
    spelled = ["2026-11-27T15:04:05Z", "2026-11-27T15:04:05+0100", "27 Nov 2026 15:04"]
    spelled += ["2026-11-27 15:04:05"]
    values = [{"__type__": "datetime", "__value__": m.isoformat()} for m in moments]
    values += [{"__type__": "datetime", "__value__": text} for text in spelled]
    text = json.dumps(values)
    ours, official = p.loads(text), json.loads(text, cls=RuntimeDecoder)
    assert ours == official
    for mine, theirs in zip(ours, official, strict=True):
        assert mine.utcoffset() == theirs.utcoffset() and mine.isoformat() == theirs.isoformat()
    assert ours[4].tzinfo is None and official[4].tzinfo is None
    # "Z" and "+0100": read by dateutil, with its tzinfo types
    assert all(isinstance(v.tzinfo, tz.tzutc | tz.tzlocal | tz.tzoffset) for v in ours[5:7])
    assert p._iso_datetime(moments[0].isoformat()) is not None  # the fast reading was taken
    assert all(p._iso_datetime(t) is None for t in spelled)  # and these went to dateutil
    week_date = json.dumps({"__type__": "datetime", "__value__": "2026-W48-5"})
    with pytest.raises(ValueError, match="Unknown string format"):  # as the official decoder
        p.loads(week_date)
    # And in a whole result, as the client decodes it: the spans are the official decoder's.
    start, stop = moments[0], moments[0] + dt.timedelta(seconds=1)
    slices = {0: ((1, 10), slice(0, 1), slice(0, 10))}
    spans = ExecutionSpans([DoubleSliceSpan(start, stop, slices)])
    body = p.dumps({"metadata": {"execution": {"execution_spans": spans}}})
    done, decoded = p.loads_nowait(body)
    assert done
    assert decoded == json.loads(body, cls=RuntimeDecoder)
    span = decoded["metadata"]["execution"]["execution_spans"][0]
    assert span.start == start and span.stop == stop and span.start.utcoffset() == dt.timedelta(0)


def test_a_circuit_is_compressed_once_and_a_changed_one_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The request codec remembers the compressed text of the circuits it wrote last, by their
    QPY: each text is what the official encoder writes (it decodes, with the official decoder,
    to the same circuit); a circuit sent again is not compressed again; a circuit changed in
    place since is written anew, never as its old text; the memory is bounded."""
    import base64
    import json
    import zlib

    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime.json import RuntimeDecoder, RuntimeEncoder

    from emulator.backends import device_target

    theta = Parameter("θ")
    bell = QuantumCircuit(2, 2, metadata={"experiment": "bell", "n": 2})
    bell.h(0)
    bell.cx(0, 1)
    bell.measure([0, 1], [0, 1])
    ansatz = QuantumCircuit(2)
    ansatz.ry(theta, 0)
    ansatz.rzz(theta * 2, 0, 1)
    ansatz.measure_all()
    dynamic = QuantumCircuit(2, 1)
    dynamic.h(0)
    dynamic.measure(0, 0)
    with dynamic.if_test((dynamic.clbits[0], 1)):
        dynamic.x(1)
    pm = generate_preset_pass_manager(optimization_level=1, target=device_target("fez"))
    isa = pm.run(bell)  # a 156-qubit layout
    for circuit in (bell, ansatz, dynamic, isa):
        ours = p.dumps({"pubs": [[circuit, None, 10]]})
        official = json.dumps({"pubs": [[circuit, None, 10]]}, cls=RuntimeEncoder)
        assert json.loads(ours, cls=RuntimeDecoder) == json.loads(official, cls=RuntimeDecoder)
        assert json.loads(ours, cls=RuntimeDecoder)["pubs"][0][0] == circuit
    # Sent again: no compression. (QPY writes a layout's registers in the order of a set, so the
    # 156-qubit circuit has two QPY texts in practice, each compressed once.)
    compressed: list[bytes] = []
    compress = zlib.compress

    def counted(data: bytes) -> bytes:
        compressed.append(data)
        return compress(data)

    monkeypatch.setattr(zlib, "compress", counted)
    for _ in range(10):
        for circuit in (bell, ansatz, dynamic, isa):
            assert json.loads(p.dumps(circuit), cls=RuntimeDecoder) == circuit
    assert len(compressed) <= 1  # at most the ISA circuit's other text
    texts = p._PACKED._local.circuits
    assert isa.num_qubits == 156 and any(b"bell" in qpy for qpy in texts)
    value = json.loads(p.dumps(bell))["__value__"]
    qpy = zlib.decompress(base64.standard_b64decode(value))
    assert texts[qpy] == value  # remembered by the QPY bytes it compressed

    grown = QuantumCircuit(2, name="grown")
    grown.h(0)
    first = p.dumps(grown)
    grown.cx(0, 1)  # changed in place after it was sent
    second = p.dumps(grown)
    assert second != first and json.loads(second, cls=RuntimeDecoder) == grown
    for k in range(40):
        p.dumps(QuantumCircuit(1, name=f"c{k}"))
    assert len(texts) == p._PACKED_ENTRIES
