"""Sessions and batches: the state machine, their TTLs and their usage.

States (spec 3.3): ``open`` → ``active`` ⇄ ``inactive`` → ``closed``, with ``accepting_jobs``.

* A session becomes ``active`` when one of its jobs takes the QPU. While active it *owns* the QPU
  (:meth:`SessionBook.holds_qpu`): as long as it has unfinished jobs, and then for its
  interactive TTL (60 s for a dedicated session, 1 s for a batch, model time) after its last job
  ended. A job submitted inside that window keeps the reservation; when the window runs out the
  session goes ``inactive`` and the QPU is free for others.
* Close (``accepting_jobs=false``): no new jobs; when none is left, the session closes at once.
* Cancel: no new jobs from the moment it is asked; the scheduler cancels the jobs that have not
  reached the QPU; the session closes.
* The max TTL counts from the first activation; at expiry the scheduler lets the job on the QPU
  (and any past it) finish, fails the others, and the session closes.
* A session with no job for 30 minutes (model time) closes (IBM closes idle sessions too).

Usage (timing §3), billed through the store's one atomic path: a dedicated session is billed
its active windows in model time, idle TTL time included, each window when it closes, in the
same transaction that saves the session. A batch is billed nothing itself: each of its jobs bills
its quantum seconds when it ends (the batch's usage is their sum). Under the ``instant`` clock a
window is only as long as Aer took, so at close a dedicated session is topped up to its jobs'
quantum seconds — in the same single amount — and it is never billed more than its max TTL.

Persistence. Changes a client asks for (create, close, cancel) are committed before they are
applied and answered (so a 204 is durable, and a failed write changes nothing). Changes the
emulator makes on its own (activation at a QPU grant, deactivation and expiry on a timer) are
applied at once — the QPU's decisions depend on them — and written in order right after, by
supervised tasks. Deadlines are kept in a heap, so idle or closed sessions cost nothing per tick.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import secrets
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from aioruntime.protocol import ErrorCode, SessionMode, SessionState

from .clock import Clock, utcnow
from .config import Config
from .errors import Refused
from .events import Events
from .store import SessionRecord, Store
from .supervise import Supervisor

__all__ = ["SessionBook"]

log = logging.getLogger("emulator.sessions")


def _iso() -> str:
    return utcnow().isoformat()


class SessionBook:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        supervisor: Supervisor,
        *,
        events: Events | None = None,
    ) -> None:
        self._store = store
        self.events = events or Events()  # observers: the dashboard, the metrics
        self._clock = clock
        self._config = config
        self._supervisor = supervisor
        #: Unfinished jobs per session (rebuilt from the store at start).
        self._pending: Counter[str] = Counter()
        #: Submissions between admission and their commit (a cancel waits for them).
        self._admitting: Counter[str] = Counter()
        self._admitted = asyncio.Event()
        #: Sessions that refuse new jobs from now on (closing, cancelling or closed).
        self._gate: set[str] = set()
        #: Model time the session's last unfinished job ended (start of the idle window).
        self._idle_since: dict[str, float] = {}
        #: Model time of the last submission or job end (idle auto-close).
        self._last_activity: dict[str, float] = {}
        #: Σ usage of a batch's finished jobs; Σ quantum seconds of any session's.
        self._batch_usage: defaultdict[str, float] = defaultdict(float)
        self._quantum: defaultdict[str, float] = defaultdict(float)
        self._locks: dict[str, asyncio.Lock] = {}
        #: (deadline, seq, session id, version): the earliest timer of each open session.
        self._heap: list[tuple[float, int, str, int]] = []
        self._version: Counter[str] = Counter()
        self._seq = itertools.count()
        self.changed = asyncio.Event()

    # -- lookup and creation -----------------------------------------------------------------

    def get(self, session_id: str, instance: str) -> SessionRecord:
        """The session, or a 404 when it does not exist *for this instance* (ids don't leak)."""
        rec = self._store.session(session_id)
        if rec is None or rec.instance != instance:
            raise Refused(404, ErrorCode.NOT_FOUND, f"Session {session_id} not found.")
        return rec

    async def create(
        self, *, instance: str, backend: str, mode: str, max_ttl: float | None
    ) -> SessionRecord:
        is_batch = mode == SessionMode.BATCH
        rec = SessionRecord(
            id=secrets.token_hex(10),
            instance=instance,
            backend=backend,
            mode=mode,
            interactive_ttl=(
                self._config.batch_interactive_ttl_s
                if is_batch
                else self._config.session_interactive_ttl_s
            ),
            max_ttl=float(max_ttl) if max_ttl else self._config.session_max_ttl_s,
            created_at=_iso(),
            timestamps=[{"status": SessionState.OPEN, "timestamp": _iso()}],
        )
        rec = await self._store.save_session(rec)
        self._last_activity[rec.id] = self._clock.now()
        self._reschedule(rec)
        return rec

    @contextmanager
    def admitting(self, session_id: str, instance: str, backend: str) -> Iterator[SessionRecord]:
        """Admit one job into the session for the duration of its submission (until its
        commit); raises :class:`Refused` when the session takes no new jobs. A cancel waits for
        the submissions inside this block, so none slips past it."""
        rec = self.get(session_id, instance)
        if rec.closed or session_id in self._gate:
            raise Refused(409, ErrorCode.SESSION_NOT_ACCEPTING, f"Session {session_id} is closed.")
        if not rec.accepting_jobs:
            raise Refused(
                409,
                ErrorCode.SESSION_NOT_ACCEPTING,
                f"Session {session_id} is not accepting new jobs (it was closed by the user).",
            )
        if rec.backend != backend:
            raise Refused(
                400,
                ErrorCode.VALIDATION,
                f"Session {session_id} runs on {rec.backend}; the job asked for {backend}.",
            )
        self._admitting[session_id] += 1
        try:
            yield rec
        finally:
            self._admitting[session_id] -= 1
            if not self._admitting[session_id]:
                del self._admitting[session_id]
            self._admitted.set()

    async def _admissions_done(self, session_id: str) -> None:
        while self._admitting[session_id]:
            self._admitted.clear()
            await self._admitted.wait()

    # -- job events (called by the scheduler) ------------------------------------------------

    def job_added(self, rec: SessionRecord) -> None:
        self._pending[rec.id] += 1
        self._idle_since.pop(rec.id, None)
        self._last_activity[rec.id] = self._clock.now()
        self._reschedule(rec)

    def _activate(self, rec: SessionRecord) -> None:
        """One of the session's jobs takes the QPU (applied now, saved right after)."""
        now = self._clock.now()
        changes: dict[str, object] = {"last_job_started": _iso()}
        if rec.state != SessionState.ACTIVE:
            changes.update(state=SessionState.ACTIVE, window_opened_model=now)
            changes["activated_at"] = changes["last_job_started"]
            changes["timestamps"] = [*rec.timestamps, _stamp(SessionState.ACTIVE)]
            if rec.first_activated_model is None:
                changes.update(first_activated_model=now, started_at=changes["activated_at"])
        self._apply_now(rec, changes, bill=0.0)

    def job_ended(self, rec: SessionRecord, charged_s: float) -> None:
        """One of the session's jobs is final (called as its final state is committed, before
        anyone is woken); ``charged_s`` is what the job itself was charged (its quantum seconds
        if it used the QPU). A batch's jobs bill themselves. A session that stopped accepting
        jobs closes when its last one ends."""
        self._pending[rec.id] -= 1
        left = self._pending[rec.id]
        if left <= 0:
            del self._pending[rec.id]
        now = self._clock.now()
        self._last_activity[rec.id] = now
        self._quantum[rec.id] += charged_s
        if rec.mode == SessionMode.BATCH:
            self._batch_usage[rec.id] += charged_s
        if left <= 0:
            self._idle_since[rec.id] = now
        if charged_s and not rec.closed:
            self._apply_now(rec, {"last_job_completed": _iso()}, bill=0.0)
        self._reschedule(rec)
        if left <= 0 and not rec.accepting_jobs and not rec.closed:
            self._supervisor.spawn(
                self._close(rec, "closed by the user; all jobs finished"),
                name=f"close-session-{rec.id}",
            )

    def pending(self, session_id: str) -> int:
        return self._pending[session_id]

    # -- the QPU reservation (the QPU's :class:`~emulator.qpu.OwnerPolicy`) ---------------------

    def activate(self, session_id: str) -> bool:
        """A job of ``session_id`` takes the QPU; False when the session is unknown or closed."""
        rec = self._store.session(session_id)
        if rec is None or rec.closed:
            return False
        self._activate(rec)
        return True

    def holds(self, session_id: str) -> bool:
        """Whether ``session_id`` still owns the QPU while none of its jobs is ready."""
        rec = self._store.session(session_id)
        return rec is not None and self.holds_qpu(rec)

    def exclusive(self, session_id: str) -> bool:
        """Whether the owner keeps everyone else off the lanes too (a dedicated session that
        holds the QPU; a batch only goes first)."""
        rec = self._store.session(session_id)
        return rec is not None and rec.mode == SessionMode.DEDICATED and self.holds_qpu(rec)

    def holds_qpu(self, rec: SessionRecord) -> bool:
        """Whether an active session still owns the QPU while it has no job ready for it."""
        if rec.state != SessionState.ACTIVE:
            return False
        if self.pending(rec.id) > 0:
            return True
        idle_since = self._idle_since.get(rec.id)
        return idle_since is not None and self._clock.now() < idle_since + rec.interactive_ttl

    # -- client requests ---------------------------------------------------------------------

    async def stop_accepting(self, rec: SessionRecord) -> None:
        """``PATCH accepting_jobs=false``: durable when this returns; the session closes once
        its last job ends (at once when it has none)."""
        if rec.closed or not rec.accepting_jobs:
            return
        async with self._lock(rec.id):
            self._gate.add(rec.id)
            try:
                await self._admissions_done(rec.id)
                if self.pending(rec.id) == 0:
                    await self._close_locked(rec, "closed by the user")
                else:
                    await self._commit(rec, {"accepting_jobs": False})
            except BaseException:
                if not rec.closed and rec.accepting_jobs:
                    self._gate.discard(rec.id)
                raise

    async def begin_cancel(self, rec: SessionRecord) -> None:
        """``DELETE …/close``: refuse new jobs from now on and wait for the submissions already
        admitted, so that the scheduler's cancel sees every job of the session."""
        self._gate.add(rec.id)
        await self._admissions_done(rec.id)

    async def finish_cancel(self, rec: SessionRecord) -> None:
        """Close a cancelled session (durable when this returns)."""
        try:
            await self._close(rec, "cancelled by the user")
        except BaseException:
            if not rec.closed:
                self._gate.discard(rec.id)
            raise

    # -- timers ------------------------------------------------------------------------------

    async def keep_time(
        self,
        on_max_ttl: Callable[[SessionRecord], Awaitable[None]],
        moved: Callable[[], None],
    ) -> None:
        """The timekeeper (run supervised): apply deadlines as model time passes. For a session
        whose max TTL ran out, ``on_max_ttl`` fails its jobs that have not reached the QPU,
        then the session closes."""
        while True:
            self.changed.clear()
            for rec in await self.expire():
                await on_max_ttl(rec)
                await self.close_expired(rec)
            moved()
            await self._clock.wait_for(self.changed, self.next_deadline())

    def _deadlines(self, rec: SessionRecord) -> dict[str, float]:
        out: dict[str, float] = {}
        pending = self.pending(rec.id)
        if rec.state == SessionState.ACTIVE and pending == 0:
            idle_since = self._idle_since.get(rec.id)
            if idle_since is not None:
                out["inactive"] = idle_since + rec.interactive_ttl
        if rec.first_activated_model is not None:
            out["max_ttl"] = rec.first_activated_model + rec.max_ttl
        if pending == 0 and (last := self._last_activity.get(rec.id)) is not None:
            out["idle_close"] = last + self._config.session_idle_close_s
        return out

    def _reschedule(self, rec: SessionRecord) -> None:
        self._version[rec.id] += 1
        if not rec.closed and (deadlines := self._deadlines(rec)):
            when = min(deadlines.values())
            heapq.heappush(self._heap, (when, next(self._seq), rec.id, self._version[rec.id]))
        if rec.closed:
            del self._version[rec.id]
        self.changed.set()
        self.events.session(rec)

    def _live_top(self) -> tuple[float, str] | None:
        while self._heap:
            when, _, sid, version = self._heap[0]
            if self._version.get(sid) == version:
                return when, sid
            heapq.heappop(self._heap)  # stale: the session changed since
        return None

    def next_deadline(self) -> float | None:
        top = self._live_top()
        return None if top is None else top[0]

    async def expire(self) -> list[SessionRecord]:
        """Apply every deadline that has passed (O(log n) per due session). Returns the
        sessions whose max TTL ran out (the scheduler fails their jobs that are not past the
        QPU, and closes them with :meth:`close_expired`)."""
        now = self._clock.now()
        max_ttl_hit: list[SessionRecord] = []
        while (top := self._live_top()) is not None and top[0] <= now:
            heapq.heappop(self._heap)
            rec = self._store.session(top[1])
            self._version.pop(top[1], None)
            if rec is None or rec.closed:
                continue
            due = {k for k, t in self._deadlines(rec).items() if t <= now}
            if "max_ttl" in due:
                self._gate.add(rec.id)
                max_ttl_hit.append(rec)
                continue
            if "inactive" in due:
                self._deactivate(rec, at=self._idle_since[rec.id] + rec.interactive_ttl)
            elif "idle_close" in due:
                await self._close(rec, "no jobs for 30 minutes")
            self._reschedule(rec)
        return max_ttl_hit

    async def close_expired(self, rec: SessionRecord) -> None:
        assert rec.first_activated_model is not None
        await self._close(rec, "max TTL reached", at=rec.first_activated_model + rec.max_ttl)

    # -- transitions -------------------------------------------------------------------------

    def _window_bill(self, rec: SessionRecord, at: float) -> float:
        """Model seconds of the open active window up to ``at`` (0 for a batch)."""
        if rec.mode != SessionMode.DEDICATED or rec.window_opened_model is None:
            return 0.0
        return max(0.0, at - rec.window_opened_model)

    def _deactivate(self, rec: SessionRecord, *, at: float) -> None:
        bill = self._window_bill(rec, at)
        self._idle_since.pop(rec.id, None)
        self._apply_now(
            rec,
            {
                "state": SessionState.INACTIVE,
                "window_opened_model": None,
                "elapsed_time": rec.elapsed_time + bill,
                "timestamps": [*rec.timestamps, _stamp(SessionState.INACTIVE)],
            },
            bill=bill,
        )
        log.info("session %s inactive", rec.id)

    async def _close(self, rec: SessionRecord, reason: str, *, at: float | None = None) -> None:
        async with self._lock(rec.id):
            await self._close_locked(rec, reason, at=at)

    async def _close_locked(
        self, rec: SessionRecord, reason: str, *, at: float | None = None
    ) -> None:
        if rec.closed:
            return
        self._gate.add(rec.id)
        at = self._clock.now() if at is None else at
        elapsed = rec.elapsed_time + self._window_bill(rec, at)
        if rec.mode == SessionMode.DEDICATED:
            # instant clock: a window can be shorter than the modelled QPU time it held
            elapsed = min(max(elapsed, self._quantum[rec.id]), rec.max_ttl)
        await self._commit(
            rec,
            {
                "state": SessionState.CLOSED,
                "accepting_jobs": False,
                "state_reason": reason,
                "closed_at": _iso(),
                "window_opened_model": None,
                "elapsed_time": elapsed,
                "timestamps": [*rec.timestamps, _stamp(SessionState.CLOSED)],
            },
            bill=max(0.0, elapsed - rec.elapsed_time),
        )
        self._idle_since.pop(rec.id, None)
        self._last_activity.pop(rec.id, None)
        self._reschedule(rec)
        log.info("session %s closed: %s", rec.id, reason)

    # -- persistence -------------------------------------------------------------------------

    def _lock(self, session_id: str) -> asyncio.Lock:
        return self._locks.setdefault(session_id, asyncio.Lock())

    async def _commit(
        self, rec: SessionRecord, changes: dict[str, object], *, bill: float = 0.0
    ) -> None:
        """Commit ``changes`` (and ``bill``), then apply them: durable before visible."""
        new = replace(rec, **changes)  # type: ignore[arg-type]
        await self._store.save_session(new, bill=bill, apply=False)
        for name, value in changes.items():
            setattr(rec, name, value)
        self.changed.set()
        self.events.session(rec)

    def _apply_now(self, rec: SessionRecord, changes: dict[str, object], *, bill: float) -> None:
        """Apply an emulator-made change now and write it, in order, right after."""
        for name, value in changes.items():
            setattr(rec, name, value)
        # The bill reaches the usage index when its write commits (the store's one path).
        self._supervisor.spawn(
            self._store.save_session(replace(rec), bill=bill, apply=False),
            name=f"save-session-{rec.id}",
        )
        self._reschedule(rec)

    # -- reporting ---------------------------------------------------------------------------

    def elapsed(self, rec: SessionRecord) -> float:
        """Usage so far, in model seconds, including the open window."""
        if rec.mode == SessionMode.BATCH:
            return self._batch_usage[rec.id]
        total = rec.elapsed_time + self._window_bill(rec, self._clock.now())
        if not rec.closed:
            total = max(total, self._quantum[rec.id])
        return min(total, rec.max_ttl)

    def interactive_left(self, rec: SessionRecord) -> float | None:
        """Model seconds left of the interactive TTL while an active session has no job left
        (its QPU reservation runs out then); None when that clock is not running."""
        idle_since = self._idle_since.get(rec.id)
        if rec.state != SessionState.ACTIVE or self.pending(rec.id) or idle_since is None:
            return None
        return max(0.0, idle_since + rec.interactive_ttl - self._clock.now())

    def active_ttl(self, rec: SessionRecord) -> float | None:
        """Model seconds left of the max TTL, once started."""
        if rec.first_activated_model is None:
            return None
        return max(0.0, rec.first_activated_model + rec.max_ttl - self._clock.now())

    def restore(self) -> None:
        """After a restart: count unfinished jobs and usage from the store; active windows end
        where they were lost (the session comes back inactive)."""
        now = self._clock.now()
        for job in self._store.jobs():
            if job.session_id is None:
                continue
            if not job.terminal:
                self._pending[job.session_id] += 1
            elif job.usage_seconds:
                self._quantum[job.session_id] += job.usage_seconds
                session = self._store.session(job.session_id)
                if session is not None and session.mode == SessionMode.BATCH:
                    self._batch_usage[job.session_id] += job.usage_seconds
        for rec in self._store.sessions():
            if rec.closed:
                self._gate.add(rec.id)
                continue
            if rec.state == SessionState.ACTIVE:
                self._deactivate(rec, at=min(now, rec.window_opened_model or now))
            self._last_activity[rec.id] = now
            self._reschedule(rec)


def _stamp(status: str) -> dict[str, str]:
    return {"status": status, "timestamp": _iso()}
