"""The scheduler's guarantees under races, driven by gates and a manual clock (no sleeps).

The rig is the real :class:`Scheduler` and :class:`Store` with the real stage functions (real
Aer), on a worker plane that runs them in threads behind a gate per stage, so a test can stop a
job exactly before pre-processing, sampling or post-processing, or hold a store write in flight,
and then race a cancel, a TTL or a session cancel against it.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import pytest_asyncio
from circuits import bell, sampler_params, to_isa

from aioruntime.protocol import DEFAULT_INSTANCE, SessionMode
from emulator.backends import resolve_devices
from emulator.clock import ManualClock
from emulator.config import ClockSpec, Config
from emulator.errors import Refused
from emulator.scheduler import Scheduler
from emulator.store import JobRecord, Store

BACKEND = "ibm_manila"
OTHER = "crn:v1:bluemix:public:quantum-computing:us-east:a/other::"


@functools.cache
def bell_params() -> str:
    return sampler_params([(to_isa(bell(), "manila"),)], {"default_shots": 10})


class GatedPlane:
    """The worker plane in threads, with an optional gate before each stage."""

    kind = "gated"

    def __init__(self) -> None:
        self._gates: dict[str, asyncio.Event] = {}
        self.entered: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.calls: Counter[str] = Counter()

    def hold(self, stage: str) -> None:
        self._gates[stage] = asyncio.Event()

    def release(self, stage: str) -> None:
        self._gates.pop(stage).set()

    async def _call(self, func: Callable[..., Any], args: Sequence[Any]) -> Any:
        stage = func.__name__
        self.calls[stage] += 1
        self.entered[stage].set()
        if (gate := self._gates.get(stage)) is not None:
            await gate.wait()
        return await asyncio.to_thread(func, *args)

    async def warm(self, sources: tuple[str, ...]) -> None:
        pass

    async def lane(self, func: Callable[..., Any], *args: Any) -> Any:
        return await self._call(func, args)

    async def qpu(self, backend: str, func: Callable[..., Any], *args: Any) -> Any:
        return await self._call(func, args)

    def statistics(self) -> dict[str, Any]:
        return {"kind": self.kind, "alive": 0}

    async def aclose(self) -> None:
        for gate in self._gates.values():
            gate.set()


class CommitGate:
    """Holds store writes whose SQL arguments contain ``needle`` until released."""

    def __init__(self, store: Store, needle: str) -> None:
        self.entered = asyncio.Event()
        self._release = asyncio.Event()
        original = store._commit

        async def gated(ops: Sequence[tuple[str, Sequence[Any]]]) -> None:
            if not self._release.is_set() and any(needle in f"{q} {a}" for q, a in ops):
                self.entered.set()
                await self._release.wait()
            await original(ops)

        store._commit = gated  # type: ignore[method-assign]

    def release(self) -> None:
        self._release.set()


class Rig:
    def __init__(self, scheduler: Scheduler, store: Store, clock: ManualClock) -> None:
        self.s, self.store, self.clock = scheduler, store, clock
        self.plane: GatedPlane = scheduler.plane  # type: ignore[assignment]

    async def submit(
        self, *, session_id: str | None = None, instance: str = DEFAULT_INSTANCE
    ) -> JobRecord:
        return await self.s.submit(
            instance=instance,
            backend=BACKEND,
            program_id="sampler",
            params_json=bell_params(),
            session_id=session_id,
        )

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(60):
            await self.s.until(predicate)

    async def final(self, rec: JobRecord) -> str:
        async with asyncio.timeout(60):
            done = await self.store.wait_final(rec.id)
        assert done is not None
        return done.state

    def lanes(self) -> Any:
        return self.s.statistics().backend(BACKEND).lanes

    async def idle(self) -> None:
        await self.until(lambda: not self.s._live and not self.s._queued)
        assert self.lanes().busy == 0

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        for _ in range(10):  # let the timekeeper run what the clock woke
            await asyncio.sleep(0)


@pytest_asyncio.fixture
async def make_rig() -> AsyncIterator[Callable[..., Any]]:
    stack: list[tuple[Store, Scheduler]] = []

    async def make(lanes: int = 2, **overrides: Any) -> Rig:
        # The stages one by one (the fast path runs them in one call; its own test says so).
        overrides.setdefault("fast_path", False)
        config = Config(lanes=lanes, clock=ClockSpec.parse("manual"), **overrides)
        clock = ManualClock()
        store = Store(":memory:")
        await store.open()
        scheduler = Scheduler(
            config=config,
            store=store,
            clock=clock,
            devices=resolve_devices(BACKEND),
            plane=GatedPlane(),
        )
        await scheduler.__aenter__()
        stack.append((store, scheduler))
        return Rig(scheduler, store, clock)

    yield make
    for store, scheduler in reversed(stack):
        await scheduler.aclose()
        await store.aclose()


async def test_cancel_while_queued(make_rig: Callable[..., Any]) -> None:
    rig: Rig = await make_rig()
    rig.s.pause(BACKEND)
    rec = await rig.submit()
    assert rig.lanes().waiting == 1 and rec.state == "Queued"
    assert await rig.s.cancel(rec) is True
    assert await rig.final(rec) == "Cancelled" and rec.running is None
    rig.s.resume(BACKEND)
    await rig.idle()
    assert rig.plane.calls["preprocess"] == 0
    assert await rig.s.cancel(rec) is False  # already final: the handler answers 409


async def test_cancel_while_its_running_state_is_being_saved(make_rig: Callable[..., Any]) -> None:
    """The original bug: a lane granted while the cancel awaited its write, and the pipeline
    overwrote Cancelled with Running for ever. Now the final state wins whatever the order."""
    rig: Rig = await make_rig()
    gate = CommitGate(rig.store, '"state":"Running"')
    rec = await rig.submit()
    await asyncio.wait_for(gate.entered.wait(), 60)
    cancel = asyncio.ensure_future(rig.s.cancel(rec))
    await asyncio.sleep(0)
    gate.release()
    assert await cancel is True
    assert await rig.final(rec) == "Cancelled"
    await rig.idle()
    assert rig.plane.calls["preprocess"] == 0
    assert rig.store.job(rec.id).state == "Cancelled"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("stage", "billed"), [("preprocess", False), ("sample", False), ("postprocess", True)]
)
async def test_cancel_at_each_stage(make_rig: Callable[..., Any], stage: str, billed: bool) -> None:
    rig: Rig = await make_rig()
    rig.plane.hold(stage)
    rec = await rig.submit()
    await asyncio.wait_for(rig.plane.entered[stage].wait(), 60)
    assert rec.state == "Running"
    assert await rig.s.cancel(rec) is True
    assert await rig.final(rec) == "Cancelled"
    rig.plane.release(stage)
    await rig.idle()
    done = rig.store.job(rec.id)
    assert done is not None and done.reason == "cancelled by the user"
    # A job cancelled in post-processing used its QPU time, and is billed for it.
    assert (done.usage_seconds or 0.0) > 0 if billed else done.usage_seconds == 0.0
    assert rig.store.usage(DEFAULT_INSTANCE) == pytest.approx(done.usage_seconds)


async def test_cancel_while_waiting_for_the_qpu(make_rig: Callable[..., Any]) -> None:
    rig: Rig = await make_rig()
    rig.s.pause(BACKEND, lanes=False, qpu=True)
    rec = await rig.submit()
    await rig.until(lambda: rig.s.qpus[BACKEND].ready == 1)
    assert await rig.s.cancel(rec) is True
    assert await rig.final(rec) == "Cancelled"
    assert rig.s.qpus[BACKEND].ready == 0
    rig.s.resume(BACKEND)
    await rig.idle()
    assert rig.plane.calls["sample"] == 0


async def test_cancel_racing_completion_loses_cleanly(make_rig: Callable[..., Any]) -> None:
    rig: Rig = await make_rig()
    gate = CommitGate(rig.store, '"state":"Completed"')
    rec = await rig.submit()
    await asyncio.wait_for(gate.entered.wait(), 60)
    cancel = asyncio.ensure_future(rig.s.cancel(rec))
    await asyncio.sleep(0)
    gate.release()
    assert await cancel is False  # completed first: the handler answers 409
    assert await rig.final(rec) == "Completed"
    await rig.idle()
    done = rig.store.job(rec.id)
    assert done is not None and done.usage_seconds
    assert rig.store.usage(DEFAULT_INSTANCE) == pytest.approx(done.usage_seconds)  # billed once


async def test_resume_and_cancel_back_to_back_leave_nothing_stuck(
    make_rig: Callable[..., Any],
) -> None:
    rig: Rig = await make_rig(lanes=1)
    rig.s.pause(BACKEND)
    jobs = [await rig.submit() for _ in range(8)]
    # No job gets past its pre-processing while the cancels run (without the gate, a job
    # given the lane could complete during the store writes of the cancels before it).
    rig.plane.hold("preprocess")
    rig.s.resume(BACKEND)  # grants a lane at once, synchronously
    results = [await rig.s.cancel(rec) for rec in jobs]
    assert results == [True] * 8
    assert [await rig.final(rec) for rec in jobs] == ["Cancelled"] * 8
    rig.plane.release("preprocess")
    await rig.idle()
    assert rig.plane.calls["sample"] == 0


async def test_at_most_lanes_jobs_run_and_the_rest_queue_in_order(
    make_rig: Callable[..., Any],
) -> None:
    rig: Rig = await make_rig(lanes=2)
    rig.plane.hold("sample")
    jobs = [await rig.submit() for _ in range(6)]
    await rig.until(lambda: rig.s.statistics().backend(BACKEND).running == 2)
    states = [rig.store.job(j.id).state for j in jobs]  # type: ignore[union-attr]
    assert states == ["Running"] * 2 + ["Queued"] * 4
    positions = [rig.s.queue_info(j.id) for j in jobs]
    assert positions[:2] == [None, None]
    assert [p[0] for p in positions[2:] if p] == [1, 2, 3, 4]
    stats = rig.s.statistics().backend(BACKEND)
    assert stats.pending == 6 and stats.lanes.busy == 2
    rig.plane.release("sample")
    assert [await rig.final(j) for j in jobs] == ["Completed"] * 6
    assert rig.s.statistics().backend(BACKEND).lanes.peak_busy == 2


async def test_fair_share_puts_the_quiet_instance_first(make_rig: Callable[..., Any]) -> None:
    rig: Rig = await make_rig(lanes=1, instances=(DEFAULT_INSTANCE, OTHER))
    first = await rig.submit()  # A uses the QPU: it is now the busier instance
    assert await rig.final(first) == "Completed"
    rig.s.pause(BACKEND)
    busy = [await rig.submit() for _ in range(3)]
    quiet = await rig.submit(instance=OTHER)
    assert rig.s.queue_info(quiet.id)[0] == 1  # type: ignore[index]
    order: list[str] = []
    rig.store.on_job_change = lambda rec, old: (
        order.append(rec.id) if rec.state == "Running" and old == "Queued" else None
    )
    rig.s.resume(BACKEND)
    for rec in [*busy, quiet]:
        await rig.final(rec)
    assert order[0] == quiet.id and order[1:] == [r.id for r in busy]


async def test_max_ttl_lets_jobs_past_the_qpu_finish(make_rig: Callable[..., Any]) -> None:
    rig: Rig = await make_rig(lanes=1)
    session = await rig.s.sessions.create(
        instance=DEFAULT_INSTANCE, backend=BACKEND, mode=SessionMode.DEDICATED, max_ttl=10
    )
    rig.plane.hold("postprocess")
    past = await rig.submit(session_id=session.id)
    waiting = await rig.submit(session_id=session.id)  # no lane (lanes=1): has not run
    await asyncio.wait_for(rig.plane.entered["postprocess"].wait(), 60)
    await rig.advance(11)  # the max TTL runs out while `past` is in post-processing
    assert await rig.final(waiting) == "Failed"
    assert "maximum time to live" in (rig.store.job(waiting.id).reason or "")  # type: ignore[union-attr]
    rig.plane.release("postprocess")
    assert await rig.final(past) == "Completed"
    done = rig.store.job(past.id)
    assert done is not None and done.usage_seconds and done.usage_seconds > 0
    await rig.until(lambda: session.closed)
    assert session.state_reason == "max TTL reached"
    # Billed the session's window, never more than its max TTL.
    assert 0 < rig.store.usage(DEFAULT_INSTANCE) <= 10


async def test_session_cancel_waits_for_submissions_in_flight(
    make_rig: Callable[..., Any],
) -> None:
    rig: Rig = await make_rig()
    session = await rig.s.sessions.create(
        instance=DEFAULT_INSTANCE, backend=BACKEND, mode=SessionMode.DEDICATED, max_ttl=None
    )
    rig.plane.hold("preprocess")
    gate = CommitGate(rig.store, "INSERT INTO jobs")
    inflight = asyncio.ensure_future(rig.submit(session_id=session.id))
    await asyncio.wait_for(gate.entered.wait(), 60)
    cancel = asyncio.ensure_future(rig.s.cancel_session(session))
    await asyncio.sleep(0)
    with pytest.raises(Refused) as refused:  # admission stopped before anything else
        await rig.submit(session_id=session.id)
    assert refused.value.status == 409
    assert not cancel.done()  # it waits for the submission already admitted
    gate.release()
    rec = await inflight
    await asyncio.wait_for(cancel, 60)
    assert await rig.final(rec) == "Cancelled"
    assert session.closed and rig.plane.calls["sample"] == 0
    rig.plane.release("preprocess")
    await rig.idle()


async def test_usage_counts_every_job_once(make_rig: Callable[..., Any]) -> None:
    # (no batch TTL: under the manual clock it would hold the QPU until the test moves time)
    rig: Rig = await make_rig(lanes=3, batch_interactive_ttl_s=0.0)
    batch = await rig.s.sessions.create(
        instance=DEFAULT_INSTANCE, backend=BACKEND, mode=SessionMode.BATCH, max_ttl=None
    )
    jobs = await asyncio.gather(
        *(rig.submit(session_id=batch.id if n % 2 else None) for n in range(24))
    )
    assert [await rig.final(j) for j in jobs] == ["Completed"] * 24

    def usage(rec: JobRecord) -> float:
        done = rig.store.job(rec.id)
        assert done is not None
        return done.usage_seconds or 0.0

    total = sum(usage(j) for j in jobs)
    assert total > 0
    assert rig.store.usage(DEFAULT_INSTANCE) == pytest.approx(total)
    in_batch = sum(usage(j) for j in jobs[1::2])
    assert rig.s.sessions.elapsed(batch) == pytest.approx(in_batch)


async def test_a_crashed_timekeeper_is_restarted(make_rig: Callable[..., Any]) -> None:
    rig: Rig = await make_rig()
    book = rig.s.sessions
    original = book.expire
    calls = 0
    restarted = asyncio.Event()

    async def flaky() -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        restarted.set()
        return await original()

    book.expire = flaky  # type: ignore[method-assign]
    book.changed.set()
    await asyncio.wait_for(restarted.wait(), 60)
    assert rig.s.supervisor.crashes >= 1
    session = await book.create(
        instance=DEFAULT_INSTANCE, backend=BACKEND, mode=SessionMode.DEDICATED, max_ttl=None
    )
    assert await rig.final(await rig.submit(session_id=session.id)) == "Completed"
    assert session.state == "active"
    await rig.advance(61)  # TTLs are still enforced
    await rig.until(lambda: session.state == "inactive")


async def test_idle_and_closed_sessions_cost_the_timers_nothing(
    make_rig: Callable[..., Any],
) -> None:
    rig: Rig = await make_rig()
    book = rig.s.sessions
    sessions = await asyncio.gather(
        *(
            book.create(
                instance=DEFAULT_INSTANCE, backend=BACKEND, mode=SessionMode.BATCH, max_ttl=None
            )
            for _ in range(500)
        )
    )
    assert await book.expire() == []  # nothing due: nothing scanned
    await rig.advance(30 * 60 + 1)  # IBM closes sessions without jobs after 30 minutes
    await rig.until(lambda: all(s.closed for s in sessions))
    assert book.next_deadline() is None and not book._version


async def test_the_fast_path_runs_the_stages_in_one_call_and_can_be_cancelled(
    make_rig: Callable[..., Any],
) -> None:
    """A job that finds the QPU free under the instant/manual clock runs pre-processing,
    sampling and post-processing in one call on the QPU worker; the result and the bill are
    those of the three stages, and cancelling it stops that call."""
    rig: Rig = await make_rig(fast_path=True)
    rec = await rig.submit()
    assert await rig.final(rec) == "Completed"
    assert rig.plane.calls["run_whole"] == 1 and rig.plane.calls["preprocess"] == 0
    done = rig.store.job(rec.id)
    assert done is not None and done.usage_seconds and done.usage_seconds > 2.0
    stages = list(done.stages)
    assert stages == ["pre_start", "pre_end", "qpu_start", "qpu_end", "post_start", "post_end"]
    assert rig.store.usage(DEFAULT_INSTANCE) == pytest.approx(done.usage_seconds)
    assert await rig.store.result(rec.id)

    rig.plane.hold("run_whole")
    rig.plane.entered["run_whole"] = asyncio.Event()  # (the first job set it)
    held = await rig.submit()
    await asyncio.wait_for(rig.plane.entered["run_whole"].wait(), 60)
    assert rig.s.qpus[BACKEND].current is not None  # it holds the QPU throughout
    assert await rig.s.cancel(held) is True
    assert await rig.final(held) == "Cancelled"
    rig.plane.release("run_whole")
    await rig.idle()
    assert rig.s.qpus[BACKEND].current is None
