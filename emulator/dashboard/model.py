"""What the dashboard shows, kept up to date from the scheduler's events.

:class:`DashboardModel` listens to :class:`~emulator.events.Events` and keeps, in memory and
bounded whatever the load:

* per backend, which job sits in which lane row and stage (a job holds its lane from
  pre-processing to the end of post-processing) and since when;
* the finished *spans* of the timeline — pre-processing, waiting for the QPU and
  post-processing on a lane row, the QPU span on the QPU row — as a numbered ring
  (:data:`SPAN_HISTORY`), so that each viewer asks only for those it has not seen;
* the latest jobs (:data:`JOBS_SHOWN`, most recently changed first) and the sessions and batches
  that are open or closed recently.

Listeners do O(1) work per event and never encode anything. :meth:`snapshot_json` encodes the
whole picture once per change (at most once per frame of the stream, shared by all viewers),
reading the scheduler's authoritative figures (queue, QPU owner, TTL clocks) at that moment.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aioruntime.protocol import SessionMode

from ..clock import ManualClock, ScaledClock
from ..events import Event, JobChanged, LaneReleased, SessionChanged, StageReached

if TYPE_CHECKING:
    from ..scheduler import BackendStatistics, Scheduler
    from ..store import JobRecord, SessionRecord

__all__ = ["JOBS_SHOWN", "SESSIONS_SHOWN", "SPAN_HISTORY", "DashboardModel"]

#: Finished spans kept for viewers that connect or fall behind (about the last 1,000 jobs),
#: and the oldest a new viewer is sent (the page's widest window is two minutes).
SPAN_HISTORY = 4000
SPAN_MAX_AGE_S = 130.0
#: Rows of the jobs table, and sessions listed (open ones first, then recently closed).
JOBS_SHOWN = 100
SESSIONS_SHOWN = 40
#: The row of the QPU in span tuples (lane rows are 0, 1, ...).
QPU_ROW = -1

#: The stage a job enters at each stamp, and the span that stamp closes (kind, opened by).
_ENTERS = {"pre_start": "pre", "pre_end": "wait", "qpu_start": "qpu", "qpu_end": "post"}
_CLOSES = {"pre_end": "pre", "qpu_start": "wait", "qpu_end": "qpu", "post_end": "post"}


def _epoch(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso).timestamp()


def job_mode(session: SessionRecord | None) -> str:
    """``job``, ``session`` or ``batch``: the execution mode, as IBM's docs name them."""
    if session is None:
        return "job"
    return "batch" if session.mode == SessionMode.BATCH else "session"


@dataclass(slots=True)
class _InLane:
    """A job in a lane, as the dashboard draws it."""

    job_id: str
    row: int
    mode: str
    session_id: str | None
    program: str
    stage: str
    since: float


class _BackendView:
    def __init__(self, name: str, width: int) -> None:
        self.name = name
        self.width = width
        self.rows: list[str | None] = [None] * width
        self.in_lane: dict[str, _InLane] = {}

    def take_row(self, job_id: str) -> int:
        self.free_row(job_id)
        for row, occupant in enumerate(self.rows):
            if occupant is None:
                self.rows[row] = job_id
                return row
        # Rare: a lane changed hands between two events; show an extra row, never overlap.
        self.rows.append(job_id)
        return len(self.rows) - 1

    def free_row(self, job_id: str) -> _InLane | None:
        job = self.in_lane.pop(job_id, None)
        if job is not None:
            self.rows[job.row] = None
            while len(self.rows) > self.width and self.rows[-1] is None:
                self.rows.pop()
        return job


class DashboardModel:
    """The dashboard's state; subscribe :meth:`on_event` to the scheduler's events."""

    def __init__(self) -> None:
        self._scheduler: Scheduler | None = None
        self._backends: dict[str, _BackendView] = {}
        #: (seq, backend, row, kind, start, end, job id, mode) of finished spans.
        self._spans: deque[tuple[int, str, int, str, float, float, str, str]] = deque(
            maxlen=SPAN_HISTORY
        )
        self._span_seq = 0
        self._jobs: OrderedDict[str, JobRecord] = OrderedDict()
        self._open_sessions: dict[str, SessionRecord] = {}
        self._closed_sessions: OrderedDict[str, SessionRecord] = OrderedDict()
        self.version = 0
        self._waiter: asyncio.Future[None] | None = None
        self._cache: tuple[int, str] | None = None
        self.closing = False

    # -- wiring ------------------------------------------------------------------------------

    def attach(self, scheduler: Scheduler) -> None:
        """Read from ``scheduler`` from now on; shows what the store already holds."""
        self._scheduler = scheduler
        for name, backend in scheduler.backends.items():
            if not backend.device.mock:  # mock twins (dry runs) have no QPU to watch
                self._backends[name] = _BackendView(name, backend.width)
        for session in scheduler.store.sessions():
            self._session_changed(session)
        for job in list(scheduler.store.jobs())[-JOBS_SHOWN:]:
            self._jobs[job.id] = job
        self._bump()

    def detach(self) -> None:
        self._scheduler = None
        self.close()

    def close(self) -> None:
        """Streams end (the server shuts down)."""
        self.closing = True
        self._bump()

    # -- events (O(1) each; see emulator.events) ---------------------------------------------

    def on_event(self, event: Event) -> None:
        if isinstance(event, StageReached):
            self._stage(event.job, event.stage, event.at)
        elif isinstance(event, LaneReleased):
            self._released(event.job)
        elif isinstance(event, JobChanged):
            self._jobs[event.job.id] = event.job
            self._jobs.move_to_end(event.job.id)
            if len(self._jobs) > JOBS_SHOWN:
                self._jobs.popitem(last=False)
        elif isinstance(event, SessionChanged):
            self._session_changed(event.session)
        self._bump()

    def _stage(self, rec: JobRecord, stage: str, at_iso: str) -> None:
        view = self._backends.get(rec.backend)
        if view is None:
            return
        at = _epoch(at_iso) or time.time()
        job = view.in_lane.get(rec.id)
        if stage == "pre_start" or job is None:
            session = self._session_of(rec)
            job = _InLane(
                rec.id,
                view.take_row(rec.id),
                job_mode(session),
                rec.session_id,
                rec.program_id,
                "pre",
                at,
            )
            view.in_lane[rec.id] = job
        if (kind := _CLOSES.get(stage)) is not None and job.stage == kind:
            self._add_span(view.name, QPU_ROW if kind == "qpu" else job.row, kind, job, at)
        if (entered := _ENTERS.get(stage)) is not None:
            job.stage, job.since = entered, at
        elif stage == "post_start":
            job.since = at
        elif stage == "post_end":
            job.stage = "done"

    def _released(self, rec: JobRecord) -> None:
        view = self._backends.get(rec.backend)
        job = view.free_row(rec.id) if view is not None else None
        if view is not None and job is not None and job.stage != "done":
            # failed or cancelled mid-stage: its open span ends here
            kind = job.stage
            self._add_span(view.name, QPU_ROW if kind == "qpu" else job.row, kind, job, time.time())

    def _add_span(self, backend: str, row: int, kind: str, job: _InLane, end: float) -> None:
        self._span_seq += 1
        span = (self._span_seq, backend, row, kind, job.since, end, job.job_id, job.mode)
        self._spans.append(span)

    def _session_changed(self, rec: SessionRecord) -> None:
        if rec.closed:
            self._open_sessions.pop(rec.id, None)
            self._closed_sessions[rec.id] = rec
            self._closed_sessions.move_to_end(rec.id)
            if len(self._closed_sessions) > SESSIONS_SHOWN:
                self._closed_sessions.popitem(last=False)
        else:
            self._open_sessions[rec.id] = rec

    def _session_of(self, rec: JobRecord) -> SessionRecord | None:
        if rec.session_id is None or self._scheduler is None:
            return None
        return self._scheduler.store.session(rec.session_id)

    # -- change notification -----------------------------------------------------------------

    def _bump(self) -> None:
        self.version += 1
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._waiter = None

    async def changed(self, seen: int) -> None:
        """Return once :attr:`version` differs from ``seen`` (or the model is closing)."""
        while self.version == seen and not self.closing:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)

    # -- what viewers get --------------------------------------------------------------------

    def spans_since(self, cursor: int) -> tuple[list[list[Any]], int]:
        """Finished spans numbered above ``cursor`` (the oldest kept, if it fell behind), and
        the new cursor."""
        if not self._spans or cursor >= self._span_seq:
            return [], self._span_seq
        first = self._spans[0][0]
        start = max(0, cursor + 1 - first)
        oldest = time.time() - SPAN_MAX_AGE_S
        out = [list(s) for s in itertools.islice(self._spans, start, None) if s[5] >= oldest]
        return out, self._span_seq

    def snapshot_json(self) -> str:
        """The live picture as JSON text, encoded at most once per change."""
        if self._cache is None or self._cache[0] != self.version:
            self._cache = (self.version, json.dumps(self.snapshot(), separators=(",", ":")))
        return self._cache[1]

    def snapshot(self) -> dict[str, Any]:
        scheduler = self._scheduler
        out: dict[str, Any] = {"now": time.time(), "backends": [], "sessions": [], "jobs": []}
        if scheduler is None:
            return out
        clock = scheduler.clock
        out["clock"] = {
            "name": clock.name,
            # model seconds per wall second: how TTL clocks count down between frames
            "rate": 0.0 if isinstance(clock, ManualClock) else 1.0 / _scale(clock),
        }
        out["backends"] = [
            self._backend_json(b)
            for b in scheduler.statistics().backends
            if b.backend in self._backends
        ]
        owners = {b["qpu"]["owner"] for b in out["backends"]}
        # open ones, newest first, then the most recently closed
        shown = list(self._open_sessions.values())[-SESSIONS_SHOWN:]
        if (room := SESSIONS_SHOWN - len(shown)) > 0:
            shown = list(self._closed_sessions.values())[-room:] + shown
        out["sessions"] = [self._session_json(s, s.id in owners) for s in reversed(shown)]
        out["jobs"] = [self._job_json(j) for j in reversed(self._jobs.values())]
        return out

    def _backend_json(self, stats: BackendStatistics) -> dict[str, Any]:
        assert self._scheduler is not None
        view = self._backends[stats.backend]
        on_qpu = view.in_lane.get(stats.qpu_job) if stats.qpu_job else None
        owner = self._scheduler.store.session(stats.qpu_owner) if stats.qpu_owner else None
        return {
            "name": stats.backend,
            "width": stats.lanes.width,
            "busy": stats.lanes.busy,
            "queued": stats.queued,
            "qpu_waiting": stats.qpu_ready,
            "running": stats.running,
            "completed": stats.completed,
            "failed": stats.failed,
            "cancelled": stats.cancelled,
            "paused": stats.paused,
            "rows": len(view.rows),
            "lanes": [_lane_json(j) for j in sorted(view.in_lane.values(), key=lambda j: j.row)],
            "qpu": {
                "job": stats.qpu_job,
                "since": on_qpu.since if on_qpu and on_qpu.stage == "qpu" else None,
                "mode": on_qpu.mode if on_qpu else None,
                "owner": stats.qpu_owner,
                "owner_mode": job_mode(owner) if owner else None,
            },
        }

    def _session_json(self, rec: SessionRecord, owns_qpu: bool) -> dict[str, Any]:
        assert self._scheduler is not None
        book = self._scheduler.sessions
        return {
            "id": rec.id,
            "backend": rec.backend,
            "mode": job_mode(rec),
            "state": rec.state,
            "reason": rec.state_reason,
            "accepting_jobs": rec.accepting_jobs,
            "pending": book.pending(rec.id),
            "owns_qpu": owns_qpu,
            "interactive_ttl": rec.interactive_ttl,
            "interactive_left": book.interactive_left(rec),
            "max_ttl": rec.max_ttl,
            "max_left": book.active_ttl(rec),
            "usage": book.elapsed(rec),
            "created": _epoch(rec.created_at or None),
        }

    def _job_json(self, rec: JobRecord) -> dict[str, Any]:
        view = self._backends.get(rec.backend)
        lane = view.in_lane.get(rec.id) if view is not None else None
        return {
            "id": rec.id,
            "backend": rec.backend,
            "program": rec.program_id,
            "mode": job_mode(self._session_of(rec)),
            "session": rec.session_id,
            "state": rec.state,
            "stage": lane.stage if lane is not None and not rec.terminal else None,
            "reason": rec.reason,
            "created": _epoch(rec.created),
            "running": _epoch(rec.running),
            "finished": _epoch(rec.finished),
        }


def _lane_json(job: _InLane) -> dict[str, Any]:
    return {
        "row": job.row,
        "job": job.job_id,
        "stage": job.stage,
        "since": job.since,
        "mode": job.mode,
        "session": job.session_id,
        "program": job.program,
    }


def _scale(clock: object) -> float:
    """Wall seconds per model second (the instant clock runs TTLs in real time)."""
    return clock.scale if isinstance(clock, ScaledClock) else 1.0
