"""Who gets a lane and who gets the QPU.

Each accepted job runs one pipeline task (:meth:`Scheduler._pipeline`)::

    lane (pre-process) ──► wait for the QPU turn ──► QPU (Aer + hold) ──► lane (post-process)

Per backend there are ``lanes`` classical slots (:class:`~emulator.lanes.Lanes`) and one QPU
(:class:`QPU`); all CPU work runs in worker processes. The QPU's turn order follows
timing-and-scheduling §4: an active session owns the QPU (see :mod:`emulator.sessions`);
otherwise the oldest ready job goes next, and a session becomes active when its job takes the QPU.

The scheduler is an async context manager: it starts the timekeeper and restarts unfinished jobs
found in the store on entry; :meth:`aclose` cancels every pipeline (their jobs stay in the store
as they were, so a restart re-queues them), :meth:`drain` waits for them instead.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aioruntime.protocol import ErrorCode, JobState

from . import classical, worker
from .backends import Device
from .clock import Clock, utcnow
from .config import Config
from .errors import Refused
from .faults import Faults
from .lanes import POST, PRE, Lanes, LaneStatistics, WorkerDied, WorkerPool
from .qpu import QPU, Turn
from .sessions import SessionBook
from .store import JobRecord, SessionRecord, Store
from .timing import TimingParams

__all__ = ["BackendStatistics", "Scheduler", "Statistics"]

log = logging.getLogger("emulator.scheduler")

#: CPU niceness of the lane workers relative to the QPU workers (see WorkerPool).
LANE_NICENESS = 5


@dataclass(frozen=True, slots=True)
class BackendStatistics:
    backend: str
    lanes: LaneStatistics
    qpu_busy: bool
    qpu_job: str | None
    qpu_owner: str | None
    qpu_peak: int
    qpu_ready: int
    queued: int
    running: int
    completed: int
    failed: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class Statistics:
    backends: tuple[BackendStatistics, ...]

    def backend(self, name: str) -> BackendStatistics:
        for b in self.backends:
            if b.backend == name:
                return b
        raise KeyError(name)


@dataclass(eq=False, slots=True)
class _Live:
    """A job the scheduler is working on."""

    rec: JobRecord
    params_json: str | None
    task: asyncio.Task[None] | None = None
    turn: Turn | None = None


class _Ownership:
    """The session book seen by a QPU (:class:`emulator.qpu.OwnerPolicy`)."""

    def __init__(self, store: Store, sessions: SessionBook) -> None:
        self._store, self._sessions = store, sessions

    def activate(self, session_id: str) -> bool:
        session = self._store.session(session_id)
        if session is None or session.closed:
            return False
        self._sessions.activate(session)
        return True

    def holds(self, session_id: str) -> bool:
        session = self._store.session(session_id)
        return session is not None and self._sessions.holds_qpu(session)


class Scheduler:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        clock: Clock,
        devices: list[Device],
        faults: Faults | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.devices = {d.name: d for d in devices}
        self.lanes = {d.name: Lanes(config.lanes) for d in devices}

        #: Classical lanes and QPUs get separate worker processes (one QPU worker per backend).
        self.lane_workers = WorkerPool(
            size=len(devices) * config.lanes, nice=LANE_NICENESS, memory_mb=config.worker_memory_mb
        )
        self.qpu_workers = WorkerPool(size=len(devices), memory_mb=config.worker_memory_mb)
        self.timing = TimingParams()
        self.sessions = SessionBook(store, clock, config, self._spawn)
        ownership = _Ownership(store, self.sessions)
        self.qpus = {d.name: QPU(d.name, ownership) for d in devices}
        self.faults = faults or Faults()
        self._live: dict[str, _Live] = {}
        self._live_per_instance: Counter[str] = Counter()
        #: (instance, Idempotency-Key) → job id, so a retried submission is not a second job.
        self._idempotency = {
            (r.instance, r.idempotency_key): r.id for r in store.jobs() if r.idempotency_key
        }
        self._background: set[asyncio.Task[Any]] = set()
        self._timekeeper: asyncio.Task[None] | None = None
        self._accepting = True
        self._progress = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Scheduler:
        pending: dict[str, int] = {}
        for rec in self.store.jobs():
            if rec.terminal:
                continue
            if rec.backend not in self.devices:
                await self._finish(
                    rec,
                    JobState.FAILED,
                    ErrorCode.BACKEND_NOT_FOUND,
                    f"backend {rec.backend} is no longer served by the emulator",
                )
                continue
            if rec.session_id:
                pending[rec.session_id] = pending.get(rec.session_id, 0) + 1
            rec.state, rec.running = JobState.QUEUED, None
            rec.logs += "re-queued after an emulator restart\n"
            await self.store.save_job(rec)
            self._start(rec, None)
        self.sessions.restore(pending)
        self._timekeeper = asyncio.create_task(self._keep_time(), name="timekeeper")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def warm(self) -> None:
        """Start the worker processes and load the served devices into them."""
        sources = tuple(sorted({d.source for d in self.devices.values()}))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.lane_workers.warm(worker.warm, sources, count=self.config.lanes))
            tg.create_task(self.qpu_workers.warm(worker.warm, sources, count=len(self.devices)))

    async def drain(self) -> None:
        """Stop accepting jobs and wait for every job in flight to finish."""
        self._accepting = False
        while self._live:
            await asyncio.gather(
                *(j.task for j in list(self._live.values()) if j.task), return_exceptions=True
            )

    async def aclose(self) -> None:
        """Cancel everything; unfinished jobs stay as stored and are re-queued on restart."""
        self._accepting = False
        tasks = [j.task for j in self._live.values() if j.task]
        if self._timekeeper:
            tasks.append(self._timekeeper)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.lane_workers.aclose()
        await self.qpu_workers.aclose()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, re-checking whenever a job moves (no polling);
        bound it with ``asyncio.timeout``."""
        while not predicate():
            self._progress.clear()
            await self._progress.wait()

    def _moved(self) -> None:
        self._progress.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- submission and cancellation ---------------------------------------------------------

    async def submit(
        self,
        *,
        instance: str,
        backend: str,
        program_id: str,
        params_json: str,
        session_id: str | None = None,
        tags: list[str] | None = None,
        cost: float | None = None,
        private: bool = False,
        log_level: str = "WARNING",
        runtime: str = "",
        idempotency_key: str | None = None,
    ) -> JobRecord:
        """Create, persist and start a job. Raises :class:`Refused` when refused.

        With an ``idempotency_key`` already used by this instance, the earlier job is returned
        and nothing new is created.
        """
        if idempotency_key and (known := self._idempotency.get((instance, idempotency_key))):
            if (earlier := self.store.job(known)) is not None:
                return earlier
        if not self._accepting:
            raise Refused(503, ErrorCode.BACKEND_NOT_AVAILABLE, "The emulator is shutting down.")
        pending = self._live_per_instance[instance]
        if pending >= self.config.max_pending_jobs_per_instance:
            raise Refused(
                429,
                ErrorCode.TOO_MANY_JOBS,
                f"The instance has {pending} pending jobs, the limit is "
                f"{self.config.max_pending_jobs_per_instance}. Wait for some to finish.",
            )
        session = self.sessions.admit(session_id, instance, backend) if session_id else None
        rec = JobRecord(
            id="d" + secrets.token_hex(10),
            seq=self.store.next_seq(),
            instance=instance,
            backend=backend,
            program_id=program_id,
            created=utcnow().isoformat(),
            session_id=session_id,
            tags=list(tags or []),
            cost=cost,
            private=private,
            log_level=log_level,
            runtime=runtime,
            idempotency_key=idempotency_key,
        )
        if idempotency_key:
            self._idempotency[(instance, idempotency_key)] = rec.id
        await self.store.add_job(rec, params_json)
        if session is not None:
            self.sessions.job_added(session)
        self._start(rec, params_json)
        return rec

    def _start(self, rec: JobRecord, params_json: str | None) -> None:
        live = _Live(rec, params_json)
        self._live[rec.id] = live
        self._live_per_instance[rec.instance] += 1
        live.task = asyncio.create_task(self._pipeline(live), name=f"job-{rec.id}")

    async def cancel(self, rec: JobRecord, *, reason: str = "cancelled by the user") -> bool:
        """Cancel a job that is not final. False when it already is."""
        if rec.terminal:
            return False
        live = self._live.get(rec.id)
        await self._finish(rec, JobState.CANCELLED, None, reason)
        if live and live.task:
            live.task.cancel()
        return True

    async def cancel_session(self, session: SessionRecord) -> None:
        """``DELETE /sessions/{id}/close``: cancel jobs that have not reached the QPU; close."""
        for live in list(self._live.values()):
            if live.rec.session_id == session.id and not self._on_qpu(live):
                await self.cancel(live.rec, reason="the session was cancelled")
        self.sessions.close(session, "cancelled by the user")
        self._dispatch()

    def close_session(self, session: SessionRecord) -> None:
        """``PATCH accepting_jobs=false``."""
        self.sessions.stop_accepting(session)
        self._dispatch()

    # -- the pipeline ------------------------------------------------------------------------

    async def _pipeline(self, live: _Live) -> None:
        rec = live.rec
        device = self.devices[rec.backend]
        lanes = self.lanes[rec.backend]
        try:
            params = live.params_json
            if params is None:
                params = await self.store.params(rec.id) or "{}"
            async with lanes.slot(priority=PRE):
                rec.state, rec.running = JobState.RUNNING, utcnow().isoformat()
                rec.stages["pre_start"] = rec.running
                self._moved()
                await self.store.save_job(rec)
                prepared = await self.lane_workers.run(
                    worker.preprocess,
                    rec.program_id,
                    params,
                    device.source,
                    self.timing,
                    self.config.max_executions_per_job,
                    self.faults.plan.worker_delay_ms / 1000,
                )
                rec.stages["pre_end"] = utcnow().isoformat()
            live.params_json = None  # the prepared job replaces it
            if self.faults.fail_job():
                await self._finish(
                    rec,
                    JobState.FAILED,
                    ErrorCode.EMULATOR_FAULT,
                    "Injected fault: the job failed on purpose (admin fault plan).",
                )
                return
            rec.quantum_seconds = prepared.quantum_seconds
            limit = min(
                rec.cost or self.config.job_max_execution_s, self.config.job_max_execution_s
            )
            async with self._qpu_turn(live):
                span_start = utcnow()
                rec.stages["qpu_start"] = span_start.isoformat()
                if prepared.quantum_seconds > limit:
                    await asyncio.sleep(self.clock.hold_s(limit, 0.0))
                    rec.stages["qpu_end"] = utcnow().isoformat()
                    await self._finish(
                        rec,
                        JobState.CANCELLED,
                        ErrorCode.RAN_TOO_LONG,
                        f"Ran too long: the job needs {prepared.quantum_seconds:.3f} s of QPU "
                        f"time, more than its maximum execution time of {limit:g} s.",
                        charged=limit,
                    )
                    return
                t0 = time.monotonic()
                sampled = await self.qpu_workers.run(worker.sample, prepared, self.config.noise)
                aer_s = time.monotonic() - t0
                hold = self.clock.hold_s(prepared.quantum_seconds, aer_s)
                if hold > 0:
                    await asyncio.sleep(hold)
                span_stop = utcnow()
                rec.stages["qpu_end"] = span_stop.isoformat()
                rec.emulator_lag_s = (
                    max(0.0, aer_s - self.clock.hold_s(prepared.quantum_seconds, 0.0))
                    if self.clock.name not in ("instant", "manual")
                    else 0.0
                )
            # Let the next job's task take the QPU before this one does its own synchronous
            # work (pickling the post-processing call): the QPU is the bottleneck, a lane is not.
            await asyncio.sleep(0)
            async with lanes.slot(priority=POST):
                rec.stages["post_start"] = utcnow().isoformat()
                result = await self.lane_workers.run(
                    worker.postprocess, prepared, sampled, span_start, span_stop
                )
                rec.stages["post_end"] = utcnow().isoformat()
            await self._finish(
                rec, JobState.COMPLETED, None, None, charged=prepared.quantum_seconds, result=result
            )
        except classical.JobInputError as exc:
            await self._finish(rec, JobState.FAILED, exc.code, exc.message)
        except WorkerDied:
            await self._finish(
                rec,
                JobState.FAILED,
                ErrorCode.EMULATOR_FAULT,
                "The emulator's worker process running this job died; the worker was replaced. "
                "Submit the job again.",
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: fail the job, keep the emulator up
            log.exception("job %s failed unexpectedly", rec.id)
            await self._finish(
                rec,
                JobState.FAILED,
                ErrorCode.INTERNAL,
                f"Internal error in the emulator: {type(exc).__name__}: {exc}",
            )
        finally:
            if self._live.pop(rec.id, None) is not None:
                self._live_per_instance[rec.instance] -= 1

    async def _finish(
        self,
        rec: JobRecord,
        state: JobState,
        code: int | None,
        reason: str | None,
        *,
        charged: float = 0.0,
        result: str | None = None,
    ) -> None:
        if rec.terminal:
            return
        rec.state, rec.reason_code, rec.reason = state, code, reason
        rec.finished = utcnow().isoformat()
        rec.usage_seconds = charged
        if reason:
            rec.logs += f"{rec.finished} {state}: {reason}\n"
        if rec.session_id and (session := self.store.session(rec.session_id)):
            self.sessions.job_ended(session, charged, rec.quantum_seconds or 0.0)
        elif charged:
            self._spawn(self.store.add_usage(rec.instance, charged))
        await self.store.save_job(rec, result_json=result)
        self._dispatch()

    # -- the QPU -----------------------------------------------------------------------------

    @asynccontextmanager
    async def _qpu_turn(self, live: _Live) -> AsyncIterator[None]:
        """Hold the QPU of the job's backend; waits for the turn the QPU's rules give it."""
        qpu = self.qpus[live.rec.backend]
        turn = live.turn = qpu.request(live.rec.seq, live.rec.id, live.rec.session_id)
        self._dispatch()
        try:
            await turn.granted
        except BaseException:
            qpu.withdraw(turn)
            live.turn = None
            self._dispatch()
            raise
        try:
            yield
        finally:
            qpu.release(turn)
            live.turn = None
            self._dispatch()

    def _on_qpu(self, live: _Live) -> bool:
        return live.turn is not None and self.qpus[live.rec.backend].current is live.turn

    def pause(self, backend: str, *, lanes: bool = True, qpu: bool = True) -> None:
        """Stop granting lanes and/or the QPU of ``backend`` (running work goes on)."""
        if lanes:
            self.lanes[backend].pause()
        if qpu:
            self.qpus[backend].paused = True

    def resume(self, backend: str) -> None:
        self.lanes[backend].resume()
        self.qpus[backend].paused = False
        self._dispatch()

    def _dispatch(self) -> None:
        """Give each idle QPU its next job (see :mod:`emulator.qpu`)."""
        self._moved()
        for qpu in self.qpus.values():
            qpu.dispatch()

    async def _keep_time(self) -> None:
        """Apply session deadlines (interactive TTL, max TTL, idle close) as model time passes."""
        changed = self.sessions.changed
        while True:
            changed.clear()
            for session in self.sessions.expire():
                for live in list(self._live.values()):
                    if live.rec.session_id == session.id and not self._on_qpu(live):
                        await self._finish(
                            live.rec,
                            JobState.FAILED,
                            ErrorCode.SESSION_NOT_ACCEPTING,
                            "The session's maximum time to live was reached before this job ran.",
                        )
                        if live.task:
                            live.task.cancel()
            self._dispatch()
            await self.clock.wait_for(changed, self.sessions.next_deadline())

    # -- statistics --------------------------------------------------------------------------

    def statistics(self) -> Statistics:
        """A snapshot per backend; O(backends), cheap enough for every status request."""
        out = []
        for name, qpu in self.qpus.items():
            count = self.store.count
            out.append(
                BackendStatistics(
                    backend=name,
                    lanes=self.lanes[name].statistics(),
                    qpu_busy=qpu.current is not None,
                    qpu_job=qpu.current.job_id if qpu.current else None,
                    qpu_owner=qpu.owner,
                    qpu_peak=qpu.peak,
                    qpu_ready=qpu.ready,
                    queued=count(name, JobState.QUEUED),
                    running=count(name, JobState.RUNNING),
                    completed=count(name, JobState.COMPLETED),
                    failed=count(name, JobState.FAILED),
                    cancelled=count(name, JobState.CANCELLED),
                )
            )
        return Statistics(tuple(out))
