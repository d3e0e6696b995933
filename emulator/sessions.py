"""Sessions and batches: the state machine, their TTLs and their usage.

States (spec 3.3): ``open`` → ``active`` ⇄ ``inactive`` → ``closed``, with ``accepting_jobs``.

* A session becomes ``active`` when one of its jobs takes the QPU. While active it *owns* the QPU
  (see :meth:`SessionBook.holds_qpu`): as long as it has unfinished jobs, and then for its
  interactive TTL (60 s for a dedicated session, 1 s for a batch, model time) after its last job
  ended. A job submitted inside that window keeps the reservation; when the window runs out the
  session goes ``inactive`` and the QPU is free for others.
* Close (``accepting_jobs=false``): no new jobs; when none is left, the session closes at once.
* The max TTL counts from the first activation; at expiry the scheduler lets the job on the QPU
  finish, fails the others, and the session closes.
* A session with no job for 30 minutes (model time) closes.

Usage (timing §3): a dedicated session is billed its active windows in model time, idle TTL time
included; a batch is billed the sum of its jobs' quantum seconds. Under the ``instant`` clock a
window is only as long as Aer took, so a session is never billed less than its jobs' quantum
seconds.

Nothing here sleeps or touches the QPU: the scheduler asks :meth:`SessionBook.next_deadline`,
sleeps on the clock, and calls :meth:`SessionBook.expire`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from aioruntime.protocol import ErrorCode, SessionMode, SessionState

from .clock import Clock, utcnow
from .config import Config
from .errors import Refused
from .store import SessionRecord, Store

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
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._store = store
        self._clock = clock
        self._config = config
        self._spawn = spawn
        #: Unfinished jobs per session (rebuilt from the store at start).
        self._pending: dict[str, int] = {}
        #: Model time the session's last unfinished job ended (start of the idle window).
        self._idle_since: dict[str, float] = {}
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
            last_activity_model=self._clock.now(),
        )
        self._stamp(rec, SessionState.OPEN)
        await self._store.save_session(rec)
        return rec

    def admit(self, session_id: str, instance: str, backend: str) -> SessionRecord:
        """Check that a job may join the session; raises :class:`Refused` otherwise."""
        rec = self.get(session_id, instance)
        if rec.closed:
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
        return rec

    # -- job events (called by the scheduler) ------------------------------------------------

    def job_added(self, rec: SessionRecord) -> None:
        self._pending[rec.id] = self._pending.get(rec.id, 0) + 1
        self._idle_since.pop(rec.id, None)
        rec.last_activity_model = self._clock.now()
        self.changed.set()

    def activate(self, rec: SessionRecord) -> None:
        """One of the session's jobs takes the QPU."""
        now = self._clock.now()
        if rec.state != SessionState.ACTIVE:
            rec.state = SessionState.ACTIVE
            rec.window_opened_model = now
            rec.activated_at = _iso()
            if rec.first_activated_model is None:
                rec.first_activated_model = now
                rec.started_at = rec.activated_at
            self._stamp(rec, SessionState.ACTIVE)
        rec.last_job_started = _iso()
        self._save(rec)

    def job_ended(self, rec: SessionRecord, charged_s: float, quantum_s: float) -> None:
        """One of the session's jobs is final; ``charged_s`` is what the job itself was billed."""
        left = self._pending.get(rec.id, 1) - 1
        self._pending[rec.id] = left
        now = self._clock.now()
        rec.last_activity_model = now
        if quantum_s:
            rec.last_job_completed = _iso()
        rec.quantum_seconds += charged_s
        if rec.mode == SessionMode.BATCH:
            rec.elapsed_time += charged_s
            self._bill(rec, charged_s)
        if left <= 0:
            self._idle_since[rec.id] = now
            if not rec.accepting_jobs and not rec.closed:
                self.close(rec, "closed by the user; all jobs finished")
        self._save(rec)
        self.changed.set()

    def pending(self, session_id: str) -> int:
        return self._pending.get(session_id, 0)

    # -- the QPU reservation -----------------------------------------------------------------

    def holds_qpu(self, rec: SessionRecord) -> bool:
        """Whether an active session still owns the QPU while it has no job ready for it."""
        if rec.state != SessionState.ACTIVE:
            return False
        if self.pending(rec.id) > 0:
            return True
        idle_since = self._idle_since.get(rec.id)
        return idle_since is not None and self._clock.now() < idle_since + rec.interactive_ttl

    # -- timers ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines: list[float] = []
        for rec in self._store.sessions():
            if rec.closed:
                continue
            deadlines.extend(self._deadlines(rec).values())
        return min(deadlines, default=None)

    def _deadlines(self, rec: SessionRecord) -> dict[str, float]:
        out: dict[str, float] = {}
        if rec.state == SessionState.ACTIVE and self.pending(rec.id) == 0:
            idle_since = self._idle_since.get(rec.id)
            if idle_since is not None:
                out["inactive"] = idle_since + rec.interactive_ttl
        if rec.first_activated_model is not None:
            out["max_ttl"] = rec.first_activated_model + rec.max_ttl
        if self.pending(rec.id) == 0 and rec.last_activity_model is not None:
            out["idle_close"] = rec.last_activity_model + self._config.session_idle_close_s
        return out

    def expire(self) -> list[SessionRecord]:
        """Apply every deadline that has passed. Returns the sessions whose max TTL ran out
        (the scheduler fails their remaining jobs)."""
        now = self._clock.now()
        max_ttl_hit: list[SessionRecord] = []
        for rec in self._store.sessions():
            if rec.closed:
                continue
            due = {k for k, t in self._deadlines(rec).items() if t <= now}
            if "max_ttl" in due:
                self.close(rec, "max TTL reached", at=rec.first_activated_model + rec.max_ttl)  # type: ignore[operator]
                max_ttl_hit.append(rec)
            elif "inactive" in due:
                self._deactivate(rec, at=self._idle_since[rec.id] + rec.interactive_ttl)
            elif "idle_close" in due:
                self.close(rec, "no jobs for 30 minutes")
        return max_ttl_hit

    # -- transitions -------------------------------------------------------------------------

    def _close_window(self, rec: SessionRecord, at: float) -> None:
        if rec.window_opened_model is not None:
            length = max(0.0, at - rec.window_opened_model)
            rec.window_opened_model = None
            if rec.mode == SessionMode.DEDICATED:
                rec.elapsed_time += length
                self._bill(rec, length)

    def _deactivate(self, rec: SessionRecord, *, at: float) -> None:
        self._close_window(rec, at)
        rec.state = SessionState.INACTIVE
        self._idle_since.pop(rec.id, None)
        self._stamp(rec, SessionState.INACTIVE)
        self._save(rec)
        self.changed.set()
        log.info("session %s inactive", rec.id)

    def stop_accepting(self, rec: SessionRecord) -> None:
        """``PATCH accepting_jobs=false``: the session closes once its last job ends."""
        if rec.closed:
            return
        rec.accepting_jobs = False
        if self.pending(rec.id) == 0:
            self.close(rec, "closed by the user")
        else:
            self._save(rec)
        self.changed.set()

    def close(self, rec: SessionRecord, reason: str, *, at: float | None = None) -> None:
        if rec.closed:
            return
        at = self._clock.now() if at is None else at
        self._close_window(rec, at)
        if rec.mode == SessionMode.DEDICATED and rec.quantum_seconds > rec.elapsed_time:
            # instant clock: the window was shorter than the modelled QPU time
            self._bill(rec, rec.quantum_seconds - rec.elapsed_time)
            rec.elapsed_time = rec.quantum_seconds
        rec.state = SessionState.CLOSED
        rec.accepting_jobs = False
        rec.state_reason = reason
        rec.closed_at = _iso()
        self._idle_since.pop(rec.id, None)
        self._stamp(rec, SessionState.CLOSED)
        self._save(rec)
        self.changed.set()
        log.info("session %s closed: %s", rec.id, reason)

    # -- reporting ---------------------------------------------------------------------------

    def elapsed(self, rec: SessionRecord) -> float:
        """Usage so far, in model seconds, including the open window."""
        total = rec.elapsed_time
        if rec.mode == SessionMode.DEDICATED:
            if rec.window_opened_model is not None:
                total += max(0.0, self._clock.now() - rec.window_opened_model)
            total = max(total, rec.quantum_seconds)
        return total

    def active_ttl(self, rec: SessionRecord) -> float | None:
        """Model seconds left of the max TTL, once started."""
        if rec.first_activated_model is None:
            return None
        return max(0.0, rec.first_activated_model + rec.max_ttl - self._clock.now())

    # -- persistence helpers -----------------------------------------------------------------

    def _stamp(self, rec: SessionRecord, status: str) -> None:
        rec.timestamps.append({"status": status, "timestamp": _iso()})

    def _bill(self, rec: SessionRecord, seconds: float) -> None:
        if seconds > 0:
            self._spawn(self._store.add_usage(rec.instance, seconds))

    def _save(self, rec: SessionRecord) -> None:
        self._spawn(self._store.save_session(rec))

    def restore(self, pending: dict[str, int]) -> None:
        """After a restart: count unfinished jobs; active windows end where we lost them."""
        self._pending = dict(pending)
        now = self._clock.now()
        for rec in self._store.sessions():
            if rec.closed:
                continue
            if rec.state == SessionState.ACTIVE:
                self._deactivate(rec, at=min(now, rec.window_opened_model or now))
            rec.last_activity_model = now
