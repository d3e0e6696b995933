"""The worker-plane contract, on both planes: local processes and Ray actors.

Every test runs once per plane (``plane`` is parametrized over ``process`` and ``ray``). Calls
that must be caught mid-way stop at a :class:`gates.Gate`: the test knows, without polling or
sleeping, that the call runs and in which process; it lets the call through, or kills that
process, or cancels the call and sees the connection drop when the process is gone (the
computation stopped, not just the awaiting task).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import AsyncIterator, Sequence

import click
import plane_funcs
import psutil
import pytest
import pytest_asyncio
from gates import WAIT_S, Gate

from emulator.validation import JobInputError
from emulator.workers import LANE_NICENESS, ProcessPlane, WorkerDied, WorkerPlane, WorkerPool
from emulator.zygote import Zygote, shared_zygote

QPU = "ibm_manila"


@pytest_asyncio.fixture(params=["process", "ray"])
async def plane(request: pytest.FixtureRequest) -> AsyncIterator[WorkerPlane]:
    """Two lanes and one QPU (``ibm_manila``), workers started on first use."""
    made: WorkerPlane
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
        from emulator.rayplane import RayPlane

        made = RayPlane(backends={QPU: "manila"}, lanes=2)
    else:
        # conftest puts this directory on the workers' PYTHONPATH (plane_funcs)
        made = ProcessPlane(backends=1, lanes=2)
    try:
        yield made
    finally:
        await made.aclose()


def worker_pids(plane: WorkerPlane) -> list[int]:
    return [pid for pid, _ in worker_roles(plane)]


def worker_roles(plane: WorkerPlane) -> list[tuple[int, bool]]:
    """``(pid, is a lane worker)`` of every worker of ``plane``."""
    if isinstance(plane, ProcessPlane):
        return [(p, True) for p in plane.lane_pool.pids] + [(p, False) for p in plane.qpu_pool.pids]
    return [(a["pid"], a["role"] == "lane") for a in plane.statistics()["actors"]]


async def test_calls_run_on_workers_two_lanes_at_once(plane: WorkerPlane) -> None:
    assert await plane.lane(plane_funcs.add, 2, 3) == 5
    assert await plane.qpu(QPU, plane_funcs.add, 1, 1) == 2
    assert await plane.lane(plane_funcs.pid) != os.getpid()
    async with Gate() as gate:
        calls = [
            asyncio.ensure_future(plane.lane(plane_funcs.wait_at_gate, gate.port, tag))
            for tag in ("a", "b")
        ]
        arrivals = [await gate.next(), await gate.next()]  # both run before either may finish
        assert arrivals[0].pid != arrivals[1].pid
        for arrival in arrivals:
            arrival.release()
        assert await asyncio.gather(*calls) == ["a", "b"]


async def test_exceptions_propagate_as_raised_and_the_worker_stays(plane: WorkerPlane) -> None:
    first = await plane.lane(plane_funcs.pid)
    with pytest.raises(ValueError, match=r"^boom$") as info:
        await plane.lane(plane_funcs.fail, "boom")
    assert type(info.value) is ValueError
    with pytest.raises(JobInputError) as refused:
        await plane.qpu(QPU, plane_funcs.refuse, 1234, "no such thing")
    assert (refused.value.code, refused.value.message) == (1234, "no such thing")
    assert await plane.lane(plane_funcs.pid) == first  # an exception is not a dead worker


async def test_cancelling_a_call_stops_its_computation(plane: WorkerPlane) -> None:
    async with Gate() as gate:
        # a lane call whose task is cancelled (a job cancel)
        call = asyncio.ensure_future(plane.lane(plane_funcs.wait_at_gate, gate.port, "lane"))
        arrival = await gate.next()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await arrival.gone()
        # a QPU call stopped by a timeout (the scheduler's --sim-budget)
        timeouts: list[asyncio.Timeout] = []

        async def budgeted() -> str:
            async with asyncio.timeout(None) as timeout:
                timeouts.append(timeout)
                return await plane.qpu(QPU, plane_funcs.wait_at_gate, gate.port, "qpu")

        call = asyncio.ensure_future(budgeted())
        stopped = await gate.next()
        timeouts[0].reschedule(asyncio.get_running_loop().time())
        with pytest.raises(TimeoutError):
            await call
        await stopped.gone()
    # both were replaced: the next calls run, in other processes
    assert await plane.lane(plane_funcs.pid) not in (arrival.pid, stopped.pid)
    assert await plane.qpu(QPU, plane_funcs.pid) not in (arrival.pid, stopped.pid)


async def test_a_worker_killed_mid_call_fails_only_that_call(plane: WorkerPlane) -> None:
    async with Gate() as gate:
        calls = {
            tag: asyncio.ensure_future(plane.lane(plane_funcs.wait_at_gate, gate.port, tag))
            for tag in ("a", "b")
        }
        doomed, survivor = await gate.next(), await gate.next()
        os.kill(doomed.pid, signal.SIGKILL)
        with pytest.raises(WorkerDied) as died:
            await calls[doomed.tag]
        assert str(died.value)  # with a reason
        survivor.release()
        assert await calls[survivor.tag] == survivor.tag
        assert await plane.lane(plane_funcs.add, 1, 2) == 3  # a replacement serves

        call = asyncio.ensure_future(plane.qpu(QPU, plane_funcs.wait_at_gate, gate.port, "q"))
        arrival = await gate.next()
        os.kill(arrival.pid, signal.SIGKILL)
        with pytest.raises(WorkerDied):
            await call
    assert await plane.qpu(QPU, plane_funcs.pid) != arrival.pid


async def test_start_up_warms_the_workers_and_shutdown_stops_them(plane: WorkerPlane) -> None:
    await plane.warm(("manila",))
    stats = plane.statistics()
    assert stats["kind"] == plane.kind
    # The QPU worker is up; lane workers: Ray starts the pool, the process plane forks one and
    # the rest on demand (milliseconds each, from its zygote).
    assert stats["qpu_workers"] == 1 and 1 <= stats["lane_workers"] <= 2
    assert stats["alive"] == stats["lane_workers"] + stats["qpu_workers"]
    pids = worker_pids(plane)
    assert len(pids) == stats["alive"]
    assert await plane.lane(plane_funcs.pid) in pids
    assert await plane.qpu(QPU, plane_funcs.pid) in pids
    # Both planes run the QPU worker at this process's priority and the lanes below it (Ray
    # alone would put its actors at niceness 15, under everything else on the machine).
    base = os.getpriority(os.PRIO_PROCESS, 0)
    for pid, lane in worker_roles(plane):
        assert psutil.Process(pid).nice() == base + (LANE_NICENESS if lane else 0), (pid, lane)
    await plane.aclose()
    assert plane.statistics()["alive"] == 0
    procs = [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)]
    _, alive = await asyncio.to_thread(psutil.wait_procs, procs, WAIT_S)
    assert not alive, alive
    with pytest.raises(RuntimeError, match="closed"):
        await plane.lane(plane_funcs.add, 1, 1)


async def test_cpu_slots_bound_the_lane_calls_at_once_and_the_rest_wait_in_order() -> None:
    """Process plane only (Ray places calls on the cluster's CPUs itself): three lanes, one CPU
    slot. One call runs in one lane worker; the two others wait, not in workers, and run in the
    order they came once the one before them finishes."""
    plane = ProcessPlane(backends=1, lanes=3, cpu_slots=1)
    try:
        async with Gate() as gate:
            calls = {}
            for tag in ("a", "b", "c"):
                calls[tag] = asyncio.ensure_future(
                    plane.lane(plane_funcs.wait_at_gate, gate.port, tag)
                )
                await asyncio.sleep(0)  # each call queues before the next is made
            first = await gate.next()
            assert first.tag == "a"
            # b and c queued before a reached its worker (a fork and a gate connection later)
            stats = plane.statistics()
            assert stats["cpu_slots"] == 1 and stats["lane_calls_waiting"] == 2
            assert len(plane.lane_pool.busy_pids) == 1 and stats["lane_workers"] == 1
            for expected in ("b", "c"):
                first.release()
                assert await calls[first.tag] == first.tag
                first = await gate.next()
                assert first.tag == expected
            first.release()
            assert await calls["c"] == "c"
        assert plane.lane_pool.pids == [first.pid]  # one slot: one lane worker ever started
    finally:
        await plane.aclose()


def test_the_emulator_takes_one_cpu_slot_per_cpu_unless_told() -> None:
    """``--cpu-slots`` (or ``AIORUNTIME_EMULATOR_CPU_SLOTS``); 0, the default, is one per CPU
    this process may use, never more than the lanes of the backends served."""
    from emulator.backends import resolve_devices
    from emulator.config import from_args
    from emulator.workers import available_cpus, create_plane

    devices = resolve_devices("ibm_fez,ibm_manila")  # 2 backends x 5 lanes
    plane = create_plane(from_args([]), devices)
    assert isinstance(plane, ProcessPlane)
    assert plane.statistics()["cpu_slots"] == min(10, available_cpus())
    plane = create_plane(from_args(["--cpu-slots", "3"]), devices)
    assert isinstance(plane, ProcessPlane) and plane.statistics()["cpu_slots"] == 3
    plane = create_plane(from_args(["--cpu-slots", "64", "--lanes", "2"]), devices)
    assert isinstance(plane, ProcessPlane) and plane.statistics()["cpu_slots"] == 4
    with pytest.raises(click.UsageError) as bad:
        from_args(["--cpu-slots", "-1"])
    assert "'--cpu-slots'" in bad.value.format_message()


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc")
def test_a_forked_worker_limits_its_own_address_space() -> None:
    """A job stage's memory limit starts from the worker's own size. The size is read from a
    ``/proc/self/statm`` kept open; a worker forked after its parent opened it (as every worker
    is, from the zygote) must read its own file, not the parent's."""
    import mmap

    from emulator import worker

    def fresh() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")

    parent = worker._address_space()  # the parent's file is now open
    assert abs(parent - fresh()) < 64 * 2**20
    reserved = 2**30
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: reserve 1 GiB of address space (untouched), then report
        code = 1
        try:
            os.close(read)
            region = mmap.mmap(-1, reserved)
            os.write(write, b"%d %d" % (worker._address_space(), fresh()))
            region.close()
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        child, child_fresh = map(int, answer.read().split())
    assert os.waitpid(pid, 0)[1] == 0
    assert abs(child - child_fresh) < 64 * 2**20  # its own file ...
    assert child >= parent + reserved - 64 * 2**20  # ... with its 1 GiB, which the parent lacks
    assert abs(worker._address_space() - fresh()) < 64 * 2**20  # the parent's still reads right


async def test_a_prestarted_zygote_loads_its_devices_while_its_caller_goes_on() -> None:
    """``python -m emulator`` starts the workers' zygote, with the served devices to load, before
    importing its own server: ``prestart`` returns at once, the first request waits for the
    zygote's imports and devices, and every worker forked from it holds them. A prestarted
    zygote that dies before it is ready is replaced by the first request."""
    zygote = Zygote()
    pool = WorkerPool(1, zygote=zygote)
    try:
        zygote.prestart(["fez", "dry-run:manila"])
        assert zygote.pid is not None and not zygote._ready  # returned before its imports
        await pool.warm(("fez",), count=1)
        assert zygote._warm == {"fez", "dry-run:manila"}
        assert await pool.run(plane_funcs.targets_loaded) == 2  # fez and manila, from the zygote
    finally:
        await pool.aclose()
        zygote.close()
    dying = Zygote()
    try:
        dying.prestart(["fez"])
        first = dying.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        dying._proc.wait()  # type: ignore[union-attr]
        dying.warm(["manila"])  # a new zygote, ready, with what was asked of it now
        assert dying.pid not in (None, first) and dying._warm == {"manila"}
    finally:
        dying.close()


class _GatedZygote(Zygote):
    """The shared zygote, each fork held until ``release`` is set (``entered``: one waits);
    ``forked`` lists the pids forked."""

    def __init__(self) -> None:
        super().__init__()
        self.real = shared_zygote()
        self.entered, self.release = threading.Event(), threading.Event()
        self.forked: list[int] = []

    def warm(self, sources: Sequence[str]) -> None:
        self.real.warm(sources)

    def fork(self, argv: Sequence[str]) -> tuple[int, int, int]:
        self.entered.set()
        self.release.wait(WAIT_S)
        pid, to_child, from_child = self.real.fork(argv)
        self.forked.append(pid)
        return pid, to_child, from_child


async def _warming_while_forking() -> tuple[WorkerPool, _GatedZygote, asyncio.Task[None]]:
    """A one-worker pool warming up, its first fork under way and held."""
    zygote = _GatedZygote()
    pool = WorkerPool(1, zygote=zygote)
    warming = asyncio.create_task(pool.warm((), count=1))
    assert await asyncio.to_thread(zygote.entered.wait, WAIT_S)
    return pool, zygote, warming


async def test_a_worker_forked_while_its_pool_closes_is_not_kept() -> None:
    """A pool closed while one of its workers is being forked (the emulator stopping while its
    workers warm) does not keep that worker: it is killed when it arrives, and the warm-up
    ends. Kept, it lived as long as the shared zygote, and its pipe was left open."""
    pool, zygote, warming = await _warming_while_forking()
    closing = asyncio.ensure_future(pool.aclose())  # while the fork is under way ...
    await asyncio.sleep(0)  # it runs up to waiting for the fork
    assert pool._closed
    zygote.release.set()  # ... which then ends, and finds the pool closed
    await closing
    await warming  # ends: the pool is closed
    assert pool.pids == [] and not pool._idle and len(zygote.forked) == 1
    psutil.Process(zygote.forked[0]).wait(WAIT_S)  # killed (its zygote reaps it)


async def test_a_warm_up_cancelled_mid_fork_keeps_or_kills_its_worker() -> None:
    """The emulator cancels its warm-up when it stops: a worker whose fork was under way is
    still seen by the pool, and stopped when the pool closes, never left running unseen."""
    pool, zygote, warming = await _warming_while_forking()
    warming.cancel()
    zygote.release.set()
    with pytest.raises(asyncio.CancelledError):
        await warming
    await pool.aclose()  # waits for the fork, then stops its worker with the others
    assert len(zygote.forked) == 1 and pool.pids == []
    psutil.Process(zygote.forked[0]).wait(WAIT_S)
