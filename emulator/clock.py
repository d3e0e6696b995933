"""The emulator's one clock.

Two kinds of time (``timing-and-scheduling.md`` §2): *timestamps* are wall-clock datetimes
(:func:`utcnow`); *model durations* (quantum seconds, usage, TTLs) are read from a
:class:`Clock`. Every TTL, every QPU hold and every usage figure goes through the clock, so the
``instant``, ``scaled:K`` and ``realtime`` modes stay consistent and tests can drive time with a
:class:`ManualClock` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime

from .config import ClockSpec

__all__ = ["Clock", "InstantClock", "ManualClock", "ScaledClock", "make_clock", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Clock:
    """Model time. ``now()`` is monotonic model seconds; ``sleep_until`` waits for a model time.

    ``hold_s(quantum_s, aer_s)`` is the wall time the QPU must still hold a job after Aer took
    ``aer_s`` wall seconds to sample a job modelled at ``quantum_s``.
    """

    name = "clock"

    def now(self) -> float:
        raise NotImplementedError

    async def sleep_until(self, deadline: float) -> None:
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self.now() + seconds)

    def hold_s(self, quantum_s: float, aer_s: float) -> float:
        raise NotImplementedError

    def anchor(self) -> dict[str, float] | None:
        """What to persist so model time carries on across restarts (None: it does not)."""
        return None

    def resume(self, anchor: dict[str, float]) -> None:
        """Carry on from a persisted :meth:`anchor`, also if the scale changed meanwhile."""

    async def wait_for(self, event: asyncio.Event, deadline: float | None) -> bool:
        """Wait until ``event`` is set or model time reaches ``deadline``.

        Returns True if the event fired."""
        if event.is_set():
            return True
        if deadline is None:
            await event.wait()
            return True
        waiter = asyncio.ensure_future(event.wait())
        timer = asyncio.ensure_future(self.sleep_until(deadline))
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            timer.cancel()
        return event.is_set()


class ScaledClock(Clock):
    """One model second lasts ``scale`` wall seconds (``realtime`` is scale 1)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        # Model time is anchored to the wall clock so that it can continue after a restart.
        self._anchor_wall = time.time()
        self._anchor_model = 0.0
        self.name = "realtime" if scale == 1.0 else f"scaled:{scale:g}"

    def now(self) -> float:
        return self._anchor_model + (time.time() - self._anchor_wall) / self.scale

    def anchor(self) -> dict[str, float]:
        return {"wall": self._anchor_wall, "model": self._anchor_model, "scale": self.scale}

    def resume(self, anchor: dict[str, float]) -> None:
        wall = time.time()
        model = anchor["model"] + max(0.0, wall - anchor["wall"]) / anchor["scale"]
        self._anchor_wall, self._anchor_model = wall, model

    async def sleep_until(self, deadline: float) -> None:
        delay = (deadline - self.now()) * self.scale
        if delay > 0:
            await asyncio.sleep(delay)

    def hold_s(self, quantum_s: float, aer_s: float) -> float:
        return max(0.0, quantum_s * self.scale - aer_s)


class InstantClock(ScaledClock):
    """QPU holds last only as long as Aer computes; TTL timers run as in ``realtime``."""

    def __init__(self) -> None:
        super().__init__(1.0)
        self.name = "instant"

    def hold_s(self, quantum_s: float, aer_s: float) -> float:
        return 0.0


class ManualClock(Clock):
    """Model time moves only when :meth:`advance` is called; QPU holds are instant.

    Sleepers wake in deadline order as the clock passes their deadlines.
    """

    name = "manual"

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), fut))
        await fut

    def advance(self, seconds: float) -> None:
        """Move model time forward and wake every sleeper whose deadline has passed.

        Must be called on the event loop that owns the sleepers.
        """
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def hold_s(self, quantum_s: float, aer_s: float) -> float:
        return 0.0


def make_clock(spec: ClockSpec) -> Clock:
    if spec.mode == "instant":
        return InstantClock()
    if spec.mode == "manual":
        return ManualClock()
    return ScaledClock(spec.scale)
