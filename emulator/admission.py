"""Who gets a free lane: one backend's queue of ``Queued`` jobs (timing-and-scheduling §4).

A lane is a slot for a job in progress, held from its pre-processing to the end of its
post-processing; jobs without one are ``Queued``. Which queued job takes a free lane follows
the QPU's rules, so lanes never fill with jobs that cannot reach the QPU next:

1. the session that owns the QPU goes first: an active *dedicated* session that holds the QPU
   is the only one admitted (outsiders stay ``Queued`` until it lets go); a batch that holds
   the QPU only goes first;
2. otherwise IBM's fair share between instances: the instance that used the least QPU time
   recently (:class:`FairShare`, an exponentially decaying sum) goes first, FIFO within one.

Entries are removed lazily (a cancelled job is flagged and skipped when reached), so taking the
next job costs O(instances) and cancelling costs O(1), however long the queue is.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Admission", "FairShare", "Waiting"]


@dataclass(eq=False, slots=True)
class Waiting:
    """A queued job."""

    job_id: str
    seq: int
    instance: str
    session_id: str | None
    params_json: str | None = None
    #: Taken by a lane, cancelled, or failed: skipped when reached.
    gone: bool = False


class FairShare:
    """Recent QPU usage per instance: each charge decays with a half-life of model time."""

    def __init__(self, now: Callable[[], float], half_life_s: float) -> None:
        self._now = now
        self._rate = math.log(2) / half_life_s
        self._usage: dict[str, tuple[float, float]] = {}

    def charge(self, instance: str, seconds: float) -> None:
        self._usage[instance] = (self.recent(instance) + seconds, self._now())

    def recent(self, instance: str) -> float:
        value, at = self._usage.get(instance, (0.0, 0.0))
        return value * math.exp(-self._rate * max(0.0, self._now() - at)) if value else 0.0


class Admission:
    def __init__(self, fair: FairShare) -> None:
        self._fair = fair
        self._by_instance: dict[str, deque[Waiting]] = {}
        self._by_session: dict[str, deque[Waiting]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def push(self, waiting: Waiting) -> None:
        self._by_instance.setdefault(waiting.instance, deque()).append(waiting)
        if waiting.session_id is not None:
            self._by_session.setdefault(waiting.session_id, deque()).append(waiting)
        self._count += 1

    def remove(self, waiting: Waiting) -> None:
        """The job left the queue (cancelled, failed) before a lane took it."""
        if not waiting.gone:
            waiting.gone = True
            self._count -= 1

    def take(self, owner: str | None = None, *, exclusive: bool = False) -> Waiting | None:
        """The next job for a free lane (see the module docstring), or None."""
        if owner is not None:
            mine = _head(self._by_session, owner)
            if mine is not None or exclusive:
                return self._taken(mine)
        best: Waiting | None = None
        best_key: tuple[float, int] | None = None
        for instance in list(self._by_instance):
            head = _head(self._by_instance, instance)
            if head is None:
                continue
            key = (self._fair.recent(instance), head.seq)
            if best_key is None or key < best_key:
                best, best_key = head, key
        return self._taken(best)

    def _taken(self, waiting: Waiting | None) -> Waiting | None:
        if waiting is not None:
            waiting.gone = True
            self._count -= 1
        return waiting

    def __iter__(self) -> Iterator[Waiting]:
        """The queued jobs, in no particular order."""
        for queue in self._by_instance.values():
            yield from (w for w in queue if not w.gone)

    def position(self, waiting: Waiting) -> int:
        """1-based place in the queue, assuming no one else arrives: the jobs that the rules
        would admit before it (O(n); for metrics, not for scheduling)."""
        ahead = 0
        share = self._fair.recent(waiting.instance)
        for other in self:
            if other is waiting:
                continue
            other_share = self._fair.recent(other.instance)
            if (other_share, other.seq) < (share, waiting.seq):
                ahead += 1
        return ahead + 1


def _head(queues: dict[str, deque[Waiting]], key: str) -> Waiting | None:
    """The first entry still waiting (dropping those that are gone; empty queues go)."""
    queue = queues.get(key)
    while queue:
        if not queue[0].gone:
            return queue[0]
        queue.popleft()
    queues.pop(key, None)
    return None
