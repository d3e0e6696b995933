"""One backend's QPU: who waits for it, who is on it, which session owns it.

A job asks for a :class:`Turn` once its pre-processing is done and awaits ``turn.granted``. Whenever
something changes (a turn is asked for or given back, a session's state moves, a pause ends) the
scheduler calls :meth:`QPU.dispatch`, which grants the next turn by the rules of timing §4:

1. an active session that owns the QPU gets it for its own jobs, and keeps it while
   :class:`OwnerPolicy.holds` says so (jobs of its still in flight, or its interactive TTL not yet
   run out) even when none of its jobs is ready;
2. otherwise the oldest ready job goes next; if it belongs to a session or batch, that session
   becomes the owner (:meth:`OwnerPolicy.activate`).

Waiting turns are kept in heaps (oldest first, overall and per session) with lazy removal, so a
dispatch costs O(log n) however many jobs wait; a session's heap goes when its last waiting
turn does, so finished sessions cost nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from .clock import utcnow

__all__ = ["QPU", "OwnerPolicy", "Turn"]


class OwnerPolicy(Protocol):
    def activate(self, session_id: str) -> bool:
        """A job of ``session_id`` takes the QPU; False when the session is unknown or closed."""

    def holds(self, session_id: str) -> bool:
        """Whether ``session_id`` still owns the QPU while none of its jobs is ready."""


@dataclass(eq=False, slots=True)
class Turn:
    """One job's claim on the QPU; ``seq`` orders jobs by submission."""

    seq: int
    job_id: str
    session_id: str | None
    granted: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    #: Kept apart from ``granted``: cancelling the awaiting task also cancels that future.
    waiting: bool = True
    #: The job's QPU span, each end as ``(wall clock, time.monotonic())``: ``start`` is set
    #: when the turn is granted, ``end`` by the job when it leaves the QPU (None if it failed).
    start: tuple[datetime, float] | None = None
    end: tuple[datetime, float] | None = None


class QPU:
    def __init__(self, name: str, policy: OwnerPolicy) -> None:
        self.name = name
        self._policy = policy
        self._all: list[tuple[int, int, Turn]] = []
        self._by_session: dict[str, list[tuple[int, int, Turn]]] = {}
        self._session_waiting: Counter[str] = Counter()
        self._waiting = 0
        self._tiebreak = itertools.count()
        self.current: Turn | None = None
        self.owner: str | None = None
        self.paused = False
        #: How many turns were granted and not given back, at most, ever: must stay 1.
        self.peak = 0
        self._on = 0
        #: The end of the span of the turn just given back, for the next grant.
        self._handover: tuple[datetime, float] | None = None

    @property
    def ready(self) -> int:
        """Turns waiting for the QPU."""
        return self._waiting

    def request(self, seq: int, job_id: str, session_id: str | None) -> Turn:
        turn = Turn(seq, job_id, session_id)
        tiebreak = next(self._tiebreak)  # never compare two Turns (a job re-run: same seq)
        heapq.heappush(self._all, (seq, tiebreak, turn))
        if session_id is not None:
            heapq.heappush(self._by_session.setdefault(session_id, []), (seq, tiebreak, turn))
            self._session_waiting[session_id] += 1
        self._waiting += 1
        return turn

    def _stopped_waiting(self, turn: Turn) -> None:
        turn.waiting = False  # dropped lazily from the heaps
        self._waiting -= 1
        if (sid := turn.session_id) is not None:
            self._session_waiting[sid] -= 1
            if self._session_waiting[sid] <= 0:
                del self._session_waiting[sid]
                self._by_session.pop(sid, None)

    def withdraw(self, turn: Turn) -> None:
        """The turn's job went away (cancelled, failed) while waiting or on the QPU."""
        if turn.waiting:
            self._stopped_waiting(turn)
            turn.granted.cancel()
        else:
            self.release(turn)

    def release(self, turn: Turn) -> None:
        if self.current is turn:
            self.current = None
            self._on -= 1
            self._handover = turn.end

    def dispatch(self) -> Turn | None:
        """Grant the next turn if the QPU is free; returns the granted turn.

        A turn granted as another is given back (the scheduler dispatches right after a
        release) starts when that one's span ended: the QPU goes from job to job with no gap.
        Stamped when the job's task next ran, each hand-over put the event loop's latency
        (0.2-0.5 ms on the 2-core machine running the lanes, more when busier) into the QPU's
        idle time and the batch's wall time; stamped when the dispatch ran, still 0.03-0.35 ms
        of synchronous work and preemption after the last span's stop. The job's hold counts
        from its start, so the latency is absorbed whenever Aer finishes within the modelled
        time."""
        handover, self._handover = self._handover, None
        if self.current is not None or self.paused:
            return None
        turn = self._next()
        if turn is None:
            return None
        self._stopped_waiting(turn)
        self.current = turn
        self._on += 1
        self.peak = max(self.peak, self._on)
        if turn.session_id is not None and self._policy.activate(turn.session_id):
            self.owner = turn.session_id
        else:
            self.owner = None
        turn.start = handover or (utcnow(), time.monotonic())
        turn.granted.set_result(None)
        return turn

    def _next(self) -> Turn | None:
        if self.owner is not None:
            mine = _pop_waiting(self._by_session.get(self.owner, []))
            if mine is not None:
                return mine
            if self._policy.holds(self.owner):
                return None  # reserved for the owner until its interactive TTL runs out
            self.owner = None
        # a turn granted from one heap stays in the other and is dropped there lazily
        return _pop_waiting(self._all)


def _pop_waiting(heap: list[tuple[int, int, Turn]]) -> Turn | None:
    """Pop the oldest turn still waiting, dropping entries that no longer are."""
    while heap:
        turn = heapq.heappop(heap)[2]
        if turn.waiting:
            return turn
    return None
