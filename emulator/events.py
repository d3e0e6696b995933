"""The in-process event publisher: what the scheduler and the session book tell observers.

The scheduler and the session book call :class:`Events` at the few places where state changes
(a job's change is committed, a job reaches a stage or gives back its lane, a session changes);
the dashboard (:mod:`emulator.dashboard`) and the Prometheus metrics (:mod:`emulator.metrics`)
subscribe. Publishing is synchronous and cheap on purpose: a listener runs inside the
publisher's call, so it sees every change in order and nothing is lost, and it must therefore
only update in-memory counters and indexes — O(1), no I/O, no awaiting. Anything slower (encoding
a snapshot, writing to a browser) happens later, on the observer's own schedule, from what the
listener recorded; so a slow browser can never slow the scheduler down.

A listener that raises is logged and skipped; it never breaks the publisher.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import JobRecord, SessionRecord

__all__ = [
    "Event",
    "Events",
    "JobChanged",
    "LaneReleased",
    "Listener",
    "SessionChanged",
    "StageReached",
]

log = logging.getLogger("emulator.events")


@dataclass(frozen=True, slots=True)
class JobChanged:
    """A job's change was committed. ``old_state`` is None for a new job and for changes that
    kept the state; ``job`` is the live index record (read it now, do not keep it)."""

    job: JobRecord
    old_state: str | None


@dataclass(frozen=True, slots=True)
class StageReached:
    """A running job reached ``stage`` (``pre_start`` … ``post_end``) at ``at`` (ISO, wall)."""

    job: JobRecord
    stage: str
    at: str


@dataclass(frozen=True, slots=True)
class LaneReleased:
    """A job gave back its classical lane (it finished, failed or was cancelled)."""

    job: JobRecord


@dataclass(frozen=True, slots=True)
class SessionChanged:
    """A session or batch was created or changed (state, TTL clocks, pending jobs)."""

    session: SessionRecord


Event = JobChanged | StageReached | LaneReleased | SessionChanged
Listener = Callable[[Event], None]


class Events:
    """Fan-out of state changes to synchronous listeners (see the module docstring)."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every event from now on; returns the unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def publish(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener %r failed on %s", listener, type(event).__name__)

    # -- the one-line hooks of the scheduler and the session book ---------------------------

    def job(self, job: JobRecord, old_state: str | None) -> None:
        if self._listeners:
            self.publish(JobChanged(job, old_state))

    def stage(self, job: JobRecord, stage: str, at: str) -> None:
        if self._listeners:
            self.publish(StageReached(job, stage, at))

    def lane_released(self, job: JobRecord) -> None:
        if self._listeners:
            self.publish(LaneReleased(job))

    def session(self, session: SessionRecord) -> None:
        if self._listeners:
            self.publish(SessionChanged(session))
