"""The classical lanes and the worker processes behind them.

A backend has ``width`` lanes (5 by default, as on IBM's stack): at most that many of its jobs
are in classical processing at once. Post-processing is served before pre-processing when both
wait, so a job that has left the QPU is never stuck behind a queue of new arrivals.

All CPU work (decoding, validation, binding, Aer, encoding) runs in worker processes through
:func:`run_in_worker` (``anyio.to_process``): a crashed worker fails only the call running in it,
its process is replaced on the next call, and cancelling the awaiting task kills the worker so a
cancelled job stops computing at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_process

__all__ = ["LaneStatistics", "Lanes", "WorkerPool"]

T = TypeVar("T")

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
        if not self._paused and self._busy < self.width and not self._live_waiters():
            self._take()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._release()  # granted as we were cancelled: hand it on
            else:
                fut.cancel()
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
                self._take()
                fut.set_result(None)

    def _live_waiters(self) -> int:
        return sum(1 for _, _, f in self._waiters if not f.done())

    def statistics(self) -> LaneStatistics:
        return LaneStatistics(self.width, self._busy, self._live_waiters(), self._peak)


class WorkerPool:
    """Runs module-level functions in worker processes (``anyio.to_process``).

    ``size`` bounds how many worker processes run at once; it is sized by the scheduler to the
    sum of lanes and QPUs, so the lanes, not this pool, decide who runs.
    """

    def __init__(self, size: int) -> None:
        self._limiter = anyio.CapacityLimiter(size)

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        return await anyio.to_process.run_sync(
            func, *args, cancellable=True, limiter=self._limiter
        )

    async def warm(self, func: Callable[..., Any], *args: Any, count: int) -> None:
        """Start ``count`` workers at once and run ``func`` in each (imports, device caches)."""
        async with anyio.create_task_group() as tg:
            for _ in range(min(count, int(self._limiter.total_tokens))):
                tg.start_soon(self.run, func, *args)
