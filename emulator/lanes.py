"""The classical lanes and the worker processes behind them.

A backend has ``width`` lanes (5 by default, as on IBM's stack): at most that many of its jobs
are in classical processing at once. Post-processing is served before pre-processing when both
wait, so a job that has left the QPU is never stuck behind a queue of new arrivals.

All CPU work (decoding, validation, binding, Aer, encoding) runs in worker processes through
:class:`WorkerPool`: a crashed worker fails only the call running in it, its process is replaced
on the next call, and cancelling the awaiting task kills the worker so a cancelled job stops
computing at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["LaneStatistics", "Lanes", "WorkerDied", "WorkerPool"]

T = TypeVar("T")

log = logging.getLogger("emulator.lanes")

_SPARE_ATTEMPTS = 4
#: What handing a call to an already dead worker looks like.
_DEAD_BEFORE_CALL = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.DelimiterNotFound,
    OSError,
)

#: Priorities: lower is served first.
POST = 0
PRE = 1


@dataclass(frozen=True, slots=True)
class LaneStatistics:
    width: int
    busy: int
    waiting: int
    peak_busy: int


class Lanes:
    """``width`` slots; ``async with lanes.slot(priority=PRE): ...`` holds one.

    Waiters are served by priority, then in arrival order. A waiter cancelled before it got a
    slot leaves the queue; one cancelled after it was granted gives the slot back.
    """

    def __init__(self, width: int) -> None:
        if width < 1:
            raise ValueError("a backend needs at least one lane")
        self.width = width
        self._busy = 0
        self._peak = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        #: Waiters neither granted nor gone (cancelled ones stay in the heap until popped).
        self._waiting = 0
        self._seq = itertools.count()
        self._paused = False

    def pause(self) -> None:
        """Grant no new slot until :meth:`resume` (a gate for tests and fault injection)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._grant()

    @asynccontextmanager
    async def slot(self, *, priority: int = PRE) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        if not self._paused and self._busy < self.width and not self._waiting:
            self._take()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        self._waiting += 1
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._release()  # granted as we were cancelled: hand it on
            else:
                fut.cancel()  # left before its turn: dropped from the heap when popped
                self._waiting -= 1
            raise

    def _take(self) -> None:
        self._busy += 1
        self._peak = max(self._peak, self._busy)

    def _release(self) -> None:
        self._busy -= 1
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._busy < self.width and not self._paused:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                self._waiting -= 1
                self._take()
                fut.set_result(None)

    def statistics(self) -> LaneStatistics:
        return LaneStatistics(self.width, self._busy, self._waiting, self._peak)


class WorkerDied(Exception):
    """The worker process running a call died during it (killed, crashed, out of memory)."""


@dataclass(eq=False, slots=True)
class _Worker:
    process: Process
    stdout: BufferedByteReceiveStream

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


class WorkerPool:
    """Runs module-level functions in worker processes (``python -m emulator.worker``).

    At most ``size`` calls run at once (the lanes, not this pool, decide who runs). ``nice``
    lowers the workers' CPU priority: lane workers run at a lower priority than the QPU's, so on a
    small machine the one serialized QPU is not starved by five lanes of classical work (on IBM's
    stack they do not share CPUs either). Idle workers are reused, most recent first. A call
    whose task is cancelled kills its worker, so a cancelled job stops computing at once; a
    worker that dies during a call raises :class:`WorkerDied` for that call only, and a fresh
    worker replaces it.
    """

    def __init__(self, size: int, *, nice: int = 0, memory_mb: int = 0) -> None:
        self._limiter = anyio.CapacityLimiter(size)
        self._nice = nice
        self._memory_mb = memory_mb
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._closed = False

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` in a worker; its exceptions are re-raised here."""
        request = pickle.dumps((func, args), pickle.HIGHEST_PROTOCOL)
        async with self._limiter:
            for _ in range(_SPARE_ATTEMPTS):
                worker = await self._checkout()
                try:
                    await worker.process.stdin.send(b"%d\n" % len(request) + request)  # type: ignore[union-attr]
                    ack = await worker.stdout.receive_until(b"\n", 16)
                except BaseException as exc:
                    await self._discard(worker)
                    if not isinstance(exc, _DEAD_BEFORE_CALL):
                        raise  # cancellation, or a bug
                    # No acknowledgement: the worker had died (e.g. killed while idle) before
                    # it read the call, so nothing ran. Another worker takes the call.
                    log.warning("a worker process had died while idle; it was replaced")
                    continue
                if ack != b"ACK":
                    await self._discard(worker)
                    raise WorkerDied(f"a worker process answered {ack!r} instead of ACK")
                return await self._answer(worker)  # type: ignore[no-any-return]
            raise WorkerDied("no worker process could be started")

    async def _answer(self, worker: _Worker) -> Any:
        try:
            header = await worker.stdout.receive_until(b"\n", 64)
            tag, length = header.split(b" ")
            payload = await worker.stdout.receive_exactly(int(length))
        except BaseException as exc:
            await self._discard(worker)
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
            raise WorkerDied(f"the worker process died during the call ({exc!r})") from exc
        self._idle.append(worker)
        result = pickle.loads(payload)
        if tag == b"EXC":
            raise result
        return result

    async def _checkout(self) -> _Worker:
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        while self._idle:
            worker = self._idle.pop()
            if worker.alive:
                return worker
            await self._discard(worker)
        # --parent: the worker dies with this process (see emulator.worker); --memory-mb: what
        # one job stage may add to its address space.
        process = await anyio.open_process(
            [
                *(sys.executable, "-u", "-m", "emulator.worker", "--nice", str(self._nice)),
                *("--parent", str(os.getpid()), "--memory-mb", str(self._memory_mb)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        worker = _Worker(process, BufferedByteReceiveStream(process.stdout))  # type: ignore[arg-type]
        self._all.add(worker)
        try:
            with anyio.fail_after(120):
                ready = await worker.stdout.receive_until(b"\n", 16)
            if ready != b"READY":
                raise WorkerDied(f"unexpected greeting from a worker: {ready!r}")
        except BaseException:
            await self._discard(worker)
            raise
        return worker

    async def _discard(self, worker: _Worker) -> None:
        self._all.discard(worker)
        with anyio.CancelScope(shield=True):
            if worker.alive:
                worker.process.kill()
            await worker.process.aclose()

    async def warm(self, func: Callable[..., Any], *args: Any, count: int) -> None:
        """Start ``count`` workers at once and run ``func`` in each (imports, device caches)."""
        async with anyio.create_task_group() as tg:
            for _ in range(min(count, int(self._limiter.total_tokens))):
                tg.start_soon(self.run, func, *args)

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._all if w.alive]

    async def aclose(self) -> None:
        """Stop every worker (closing stdin lets idle ones exit; busy ones are killed)."""
        self._closed = True
        workers, self._idle = list(self._all), []
        for worker in workers:
            await self._discard(worker)
