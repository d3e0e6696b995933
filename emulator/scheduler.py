"""Who gets a lane, who gets the QPU, and the one pipeline every job runs.

A job is ``Queued`` until one of its backend's lanes takes it (the order is
:mod:`emulator.admission`'s: the QPU's owner first, then fair share between instances). From
then on it is ``Running`` and holds that lane until its post-processing ends
(timing-and-scheduling §4)::

    Queued ──lane──► pre-process ──► wait for the QPU turn ──► QPU (Aer + hold) ──► post-process
                     └──────────────────────── Running, in its lane ────────────────────┘

All CPU work runs on the worker plane (:mod:`emulator.workers`); the QPU's turn order is
:mod:`emulator.qpu`'s, with the session book (:mod:`emulator.sessions`) as its owner policy.

State changes go through the store's one transition function (:meth:`Store.transition`), which
never leaves a final state; a cancel first stops the job's pipeline and then records the
cancel, so the two never race. Only running jobs have a task: ten thousand queued jobs are ten
thousand small queue entries. Background work (the session timekeeper, saves of changes the
emulator makes on its own) runs under :class:`~emulator.supervise.Supervisor`.

The scheduler is an async context manager: on entry it re-queues what the store holds
unfinished (a restart) and starts the timekeeper; :meth:`aclose` cancels every pipeline (their
jobs stay as stored, so the next start re-queues them), :meth:`drain` waits for them instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aioruntime.protocol import ErrorCode, JobState, SessionMode

from . import classical, worker
from .admission import Admission, FairShare, Waiting
from .backends import Device
from .clock import Clock, utcnow
from .config import Config
from .errors import Refused
from .events import Events
from .faults import Faults
from .noise import NoiseLevel
from .qpu import QPU, Turn
from .sessions import SessionBook
from .store import JobFinal, JobRecord, SessionRecord, StorageError, Store
from .supervise import Supervisor
from .timing import TimingParams
from .workers import WorkerDied, WorkerPlane, create_plane

__all__ = ["BackendStatistics", "LaneStatistics", "Scheduler", "Statistics"]

log = logging.getLogger("emulator.scheduler")

#: The largest ``params`` (characters) the fast path takes: small jobs, whose stages are quick.
FAST_PATH_MAX_PARAMS = 64 * 1024

#: How long a retried submission (same ``Idempotency-Key``) finds its first job, wall seconds.
IDEMPOTENCY_WINDOW_S = 3600.0


@dataclass(frozen=True, slots=True)
class LaneStatistics:
    width: int
    busy: int
    #: Jobs waiting for a lane (``Queued``).
    waiting: int
    peak_busy: int


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
    paused: bool

    @property
    def pending(self) -> int:
        """Unfinished jobs (``pending_jobs`` / ``queue_length`` of IBM's status routes)."""
        return self.queued + self.running


@dataclass(frozen=True, slots=True)
class Statistics:
    backends: tuple[BackendStatistics, ...]
    workers: dict[str, Any] = field(default_factory=dict)
    supervised_tasks: int = 0
    supervised_crashes: int = 0

    def backend(self, name: str) -> BackendStatistics:
        for b in self.backends:
            if b.backend == name:
                return b
        raise KeyError(name)


class _Backend:
    """One backend's lanes, queue and QPU."""

    def __init__(self, device: Device, width: int, fair: FairShare, sessions: SessionBook) -> None:
        self.device = device
        self.width = width
        self.busy = 0
        self.peak = 0
        self.paused = False
        self.admission = Admission(fair)
        self.qpu = QPU(device.name, sessions)
        #: Recent wall seconds a job held a lane (for queue-time estimates).
        self.lane_s = 0.0

    def take_lane(self) -> None:
        self.busy += 1
        self.peak = max(self.peak, self.busy)

    def note_lane_time(self, seconds: float) -> None:
        self.lane_s = seconds if not self.lane_s else 0.8 * self.lane_s + 0.2 * seconds


@dataclass(eq=False, slots=True)
class _Live:
    """A job that holds a lane (``Running``)."""

    rec: JobRecord
    backend: _Backend
    params_json: str | None
    task: asyncio.Task[None] | None = None
    turn: Turn | None = None
    stages: dict[str, str] = field(default_factory=dict)
    #: Set once its QPU turn was granted; past the QPU once ``charged`` is set.
    reached_qpu: bool = False
    charged: float | None = None
    #: Modelled QPU seconds, once pre-processing computed them.
    estimate: float | None = None
    #: Warnings for the job's log (options the emulator does not apply, …).
    notes: list[str] = field(default_factory=list)
    lag_s: float = 0.0
    lane_held: bool = True
    started: float = field(default_factory=time.monotonic)


class _Requeue(Exception):
    """The job could not be started (its change to ``Running`` could not be saved)."""


class _Failed(Exception):
    """A job ends unsuccessfully: ``state`` with IBM ``code`` and ``reason``."""

    def __init__(self, state: str, code: int, reason: str, charged: float = 0.0) -> None:
        super().__init__(reason)
        self.state, self.code, self.reason, self.charged = state, code, reason, charged


class Scheduler:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        clock: Clock,
        devices: list[Device],
        faults: Faults | None = None,
        plane: WorkerPlane | None = None,
        events: Events | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.devices = {d.name: d for d in devices}
        self.plane: WorkerPlane = plane or create_plane(config, devices)
        self.timing = TimingParams()
        self.faults = faults or Faults()
        self.supervisor = Supervisor(on_fatal=self._fatal)
        self.events = events or Events()  # observers: the dashboard, the metrics
        self.sessions = SessionBook(store, clock, config, self.supervisor, events=self.events)
        self.fair = FairShare(clock.now, config.fair_share_half_life_s)
        self.backends = {
            d.name: _Backend(d, config.lanes, self.fair, self.sessions) for d in devices
        }
        self.qpus = {name: b.qpu for name, b in self.backends.items()}
        self._queued: dict[str, tuple[_Backend, Waiting]] = {}
        self._live: dict[str, _Live] = {}
        self._unfinished_per_instance: Counter[str] = Counter()
        #: (instance, Idempotency-Key) → (job id, wall time), oldest first; pruned as it ages.
        self._idempotency: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._estimates: dict[str, asyncio.Task[float | None]] = {}
        self._accepting = True
        self._closing = False
        self._progress = asyncio.Event()
        #: Set once the workers are started and have the served devices loaded.
        self.ready = asyncio.Event()
        self._warm_lock = asyncio.Lock()
        #: The params schema versions per program, asked of a worker once (schema_versions).
        self._schemas: asyncio.Task[dict[str, tuple[str, ...]]] | None = None
        self.fatal: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        store.on_job_change = self._on_job_change

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Scheduler:
        try:
            await self._recover()
            self.sessions.restore()
            self.supervisor.service(
                lambda: self.sessions.keep_time(self._on_max_ttl, self._dispatch),
                name="timekeeper",
            )
        except BaseException:
            await self.aclose()
            raise
        self._dispatch()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _recover(self) -> None:
        """Re-queue what the store holds unfinished (the emulator stopped with it in flight).
        The writes go out together, so the store commits them in a few transactions."""
        writes: list[Coroutine[Any, Any, object]] = []
        now = utcnow().isoformat()
        for rec in self.store.jobs():
            if rec.terminal:
                continue
            self._unfinished_per_instance[rec.instance] += 1
            if rec.backend not in self.backends:
                writes.append(
                    self._end(
                        rec,
                        JobState.FAILED,
                        ErrorCode.BACKEND_NOT_FOUND,
                        f"backend {rec.backend} is no longer served by the emulator",
                    )
                )
                continue
            note = rec.logs + f"{now} re-queued after an emulator restart\n"
            if rec.state == JobState.RUNNING:
                writes.append(
                    self.store.transition(rec.id, JobState.QUEUED, running=None, logs=note)
                )
            else:
                writes.append(self.store.update_job(rec.id, logs=note))
            if rec.idempotency_key:
                self._idempotency[(rec.instance, rec.idempotency_key)] = (rec.id, time.time())
            self._enqueue(rec, None)
        await asyncio.gather(*writes)

    async def warm(self) -> None:
        """Start the worker processes and load the served devices into them (jobs that arrive
        meanwhile wait for their workers; ``ready`` is set when this is done)."""
        async with self._warm_lock:  # a second caller waits for the first warm-up, once
            if self.ready.is_set():
                return
            started = time.monotonic()
            sources = tuple(sorted({d.source for d in self.devices.values()}))
            log.info("starting %s workers and loading %s", self.plane.kind, ", ".join(sources))
            await self.plane.warm(sources)
            self.ready.set()
            self._moved()  # wakes ``until`` waiters that wait for the workers
            log.info("workers ready in %.1f s", time.monotonic() - started)

    async def schema_versions(self) -> Mapping[str, tuple[str, ...]]:
        """The params schema versions of the programs that have them (``executor``,
        ``noise-learner``), as the installed client's converters know them, for the checks at
        ``POST /jobs``. Asked of a lane worker once the workers are up, and remembered: reading
        them imports ``qiskit_ibm_runtime``, and the server imports no qiskit. (It used to, on
        its first executor request: the event loop stalled 2.5 s, ``/health`` included, and the
        server grew from 73 to 203 MiB.) A failed call is asked again by the next request."""
        task = self._schemas
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._schemas = asyncio.ensure_future(self._ask_schema_versions())
        return await asyncio.shield(task)

    async def _ask_schema_versions(self) -> dict[str, tuple[str, ...]]:
        await self.ready.wait()  # as jobs do: the workers first
        return await self.plane.lane(worker.schema_versions)

    def start_warming(self) -> None:
        """:meth:`warm` in the background, so that the server answers while workers start. A
        warm-up that fails (a worker or Ray node lost while starting) is tried again; one that
        keeps failing stops the emulator, loudly."""
        self.supervisor.service(self.warm, name="warm-workers")

    async def drain(self) -> None:
        """Stop accepting jobs and wait for every job in flight (queued ones included)."""
        self._accepting = False
        await self.until(lambda: not self._live and not self._queued)

    async def aclose(self) -> None:
        """Cancel everything; unfinished jobs stay as stored and are re-queued on restart."""
        self._accepting = False
        self._closing = True
        tasks: list[asyncio.Task[Any]] = [j.task for j in self._live.values() if j.task]
        tasks += self._estimates.values()
        if self._schemas is not None:
            tasks.append(self._schemas)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.supervisor.aclose()
        await self.plane.aclose()

    def _fatal(self, exc: BaseException) -> None:
        if not self.fatal.done():
            self.fatal.set_result(exc)

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, re-checking whenever a job moves (no polling);
        bound it with ``asyncio.timeout``."""
        while not predicate():
            self._progress.clear()
            await self._progress.wait()

    def _moved(self) -> None:
        self._progress.set()

    # -- submission --------------------------------------------------------------------------

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
        """Create and persist a job (``Queued``), then queue it for a lane; durable when this
        returns. Raises :class:`Refused` when refused, :class:`StorageError` when it could not
        be saved. With an ``idempotency_key`` this instance already used, the earlier job is
        returned and nothing new is created."""
        if idempotency_key:
            known = self._idempotency.get((instance, idempotency_key))
            if known is not None and (earlier := self.store.job(known[0])) is not None:
                return earlier
        if not self._accepting:
            raise Refused(503, ErrorCode.BACKEND_NOT_AVAILABLE, "The emulator is shutting down.")
        pending = self._unfinished_per_instance[instance]
        if pending >= self.config.max_pending_jobs_per_instance:
            raise Refused(
                429,
                ErrorCode.TOO_MANY_JOBS,
                f"The instance has {pending} pending jobs, the limit is "
                f"{self.config.max_pending_jobs_per_instance}. Wait for some to finish.",
            )
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
        if session_id is None:
            await self.store.add_job(rec, params_json)
        else:
            with self.sessions.admitting(session_id, instance, backend) as session:
                await self.store.add_job(rec, params_json)
                self.sessions.job_added(session)
        self._unfinished_per_instance[instance] += 1
        if idempotency_key:
            self._remember(instance, idempotency_key, rec.id)
        self._enqueue(rec, params_json)
        self._dispatch()
        return rec

    def _remember(self, instance: str, key: str, job_id: str) -> None:
        now = time.time()
        self._idempotency[(instance, key)] = (job_id, now)
        while self._idempotency:
            oldest = next(iter(self._idempotency.values()))
            if now - oldest[1] < IDEMPOTENCY_WINDOW_S:
                break
            self._idempotency.popitem(last=False)

    def _enqueue(self, rec: JobRecord, params_json: str | None) -> None:
        backend = self.backends[rec.backend]
        waiting = Waiting(rec.id, rec.seq, rec.instance, rec.session_id, params_json)
        backend.admission.push(waiting)
        self._queued[rec.id] = (backend, waiting)

    # -- cancellation ------------------------------------------------------------------------

    async def cancel(
        self,
        rec: JobRecord,
        *,
        reason: str = "cancelled by the user",
        state: str = JobState.CANCELLED,
        code: int | None = None,
    ) -> bool:
        """Stop a job that is not final and record it ``state`` (Cancelled, or Failed for a
        session's max TTL). False when it already was final. A job past the QPU is billed the
        QPU time it used. Raises :class:`StorageError` if the change could not be saved (then
        the job goes on as if never asked)."""
        if rec.terminal:
            return False
        # Stop it first, synchronously: from here its pipeline makes no more changes.
        queued = self._queued.pop(rec.id, None)
        if queued is not None:
            queued[0].admission.remove(queued[1])
        live = self._live.pop(rec.id, None)
        charged = 0.0
        if live is not None:
            charged = live.charged or 0.0
            if live.task is not None:
                live.task.cancel()  # (a task cancelled before it started runs no `finally`)
            self._release_lane(live)
        try:
            ended = await self._end(rec, state, code, reason, charged=charged, live=live)
        except StorageError:
            # Not recorded: the job goes on as if never asked. A stopped pipeline starts again
            # from the queue, once the old one has unwound (never two at once).
            if live is not None and live.task is not None:
                await asyncio.gather(live.task, return_exceptions=True)
            if queued is not None or live is not None:
                self._enqueue(rec, queued[1].params_json if queued else None)
                self._dispatch()
            raise
        return ended

    def _not_past_qpu(self, session_id: str) -> list[JobRecord]:
        """The session's unfinished jobs that have not reached the QPU."""
        jobs = [
            self.store.job(job_id)
            for job_id, (_, w) in self._queued.items()
            if w.session_id == session_id
        ]
        jobs += [
            live.rec
            for live in self._live.values()
            if live.rec.session_id == session_id and not live.reached_qpu
        ]
        return [j for j in jobs if j is not None]

    async def cancel_session(self, session: SessionRecord) -> None:
        """``DELETE /sessions/{id}/close``: refuse new jobs at once, cancel the session's jobs
        that have not reached the QPU (the one on it, and any past it, finish), close."""
        await self.sessions.begin_cancel(session)
        for rec in self._not_past_qpu(session.id):
            await self.cancel(rec, reason="the session was cancelled")
        await self.sessions.finish_cancel(session)
        self._dispatch()

    async def close_session(self, session: SessionRecord) -> None:
        """``PATCH accepting_jobs=false``."""
        await self.sessions.stop_accepting(session)
        self._dispatch()

    async def _on_max_ttl(self, session: SessionRecord) -> None:
        for rec in self._not_past_qpu(session.id):
            await self.cancel(
                rec,
                state=JobState.FAILED,
                code=ErrorCode.SESSION_NOT_ACCEPTING,
                reason="The session's maximum time to live was reached before this job ran.",
            )

    # -- the pipeline ------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Give free lanes to queued jobs and each idle QPU its next job."""
        self._moved()
        if self._closing:
            return
        for backend in self.backends.values():
            while not backend.paused and backend.busy < backend.width:
                owner = backend.qpu.owner
                if owner is not None and not self.sessions.holds(owner):
                    owner = None
                waiting = backend.admission.take(
                    owner, exclusive=owner is not None and self.sessions.exclusive(owner)
                )
                if waiting is None:
                    break
                self._queued.pop(waiting.job_id, None)
                rec = self.store.job(waiting.job_id)
                if rec is None or rec.terminal:
                    continue
                backend.take_lane()
                live = _Live(rec, backend, waiting.params_json)
                self._live[rec.id] = live
                live.task = asyncio.create_task(self._run(live), name=f"job-{rec.id}")
            backend.qpu.dispatch()

    def _release_lane(self, live: _Live) -> None:
        if live.lane_held:
            live.lane_held = False
            live.backend.busy -= 1
            live.backend.note_lane_time(time.monotonic() - live.started)
            self._moved()
            self.events.lane_released(live.rec)

    async def _run(self, live: _Live) -> None:
        rec = live.rec
        try:
            try:
                result = await self._stages(live)
                outcome: tuple[str, int | None, str | None, float] = (
                    JobState.COMPLETED,
                    None,
                    None,
                    live.charged or 0.0,
                )
            except _Failed as failed:
                result = None
                outcome = (failed.state, failed.code, failed.reason, failed.charged)
            except (asyncio.CancelledError, _Requeue, JobFinal):
                raise
            except Exception as exc:  # a bug: fail the job, keep the emulator up
                log.exception("job %s failed unexpectedly", rec.id)
                result = None
                outcome = (
                    JobState.FAILED,
                    ErrorCode.INTERNAL,
                    f"Internal error in the emulator: {type(exc).__name__}: {exc}",
                    live.charged or 0.0,
                )
            self._release_lane(live)
            state, code, reason, charged = outcome
            while True:  # a full disk: keep the outcome and record it once space returns
                try:
                    await self._end(rec, state, code, reason, charged=charged, result=result)
                    break
                except StorageError:
                    await self.store.wait_writable()
        except JobFinal:
            pass  # cancelled meanwhile: the cancel recorded it
        except _Requeue:
            self._release_lane(live)
            self._live.pop(rec.id, None)
            self.supervisor.spawn(self._requeue_when_writable(rec), name=f"requeue-{rec.id}")
        finally:
            self._release_lane(live)
            self._live.pop(rec.id, None)
            self._dispatch()

    async def _stages(self, live: _Live) -> str:
        """Pre-process, QPU, post-process; returns the encoded result. Raises :class:`_Failed`
        for a job that ends unsuccessfully."""
        rec = live.rec
        params = live.params_json
        if params is None:
            params = await self.store.params(rec.id) or "{}"
        live.params_json = None
        self._stage(live, "pre_start")
        if rec.state == JobState.QUEUED:
            try:
                await self.store.transition(
                    rec.id, JobState.RUNNING, running=live.stages["pre_start"]
                )
            except StorageError:
                raise _Requeue from None
        if self._can_run_whole(live, params):
            return await self._run_whole(live, params)
        try:
            prepared = await self.plane.lane(
                worker.preprocess, *self._preprocess_args(live, params)
            )
        except classical.JobInputError as exc:
            raise _Failed(JobState.FAILED, exc.code, exc.message) from None
        except WorkerDied:
            raise _died() from None
        self._stage(live, "pre_end")
        live.estimate = prepared.quantum_seconds
        live.notes = list(prepared.notes)
        if self.faults.fail_job():
            raise _Failed(
                JobState.FAILED,
                ErrorCode.EMULATOR_FAULT,
                "Injected fault: the job failed on purpose (admin fault plan).",
            )
        if prepared.dry_run:
            # A job on a mock twin: validated and pre-processed for real, with its modelled
            # time (estimated_running_time_seconds), but no QPU turn and nothing billed;
            # post-processing fills the result with mock data (emulator.dry_run).
            sampled, span_start = None, utcnow()
            span_stop = span_start
        else:
            sampled, span_start, span_stop = await self._on_qpu(live, prepared)
        await asyncio.sleep(0)  # let the next job take the QPU before we pickle our call
        self._stage(live, "post_start")
        try:
            result: str = await self.plane.lane(
                worker.postprocess, prepared.job, sampled, span_start, span_stop
            )
        except WorkerDied:
            raise _died(charged=live.charged or 0.0) from None
        self._stage(live, "post_end")
        return result

    def _preprocess_args(self, live: _Live, params: str) -> tuple[Any, ...]:
        """What ``worker.preprocess`` takes (and ``worker.run_whole`` before its time limit)."""
        return (
            live.rec.program_id,
            params,
            live.backend.device.source,
            self.timing,
            self.config.max_executions_per_job,
            self.faults.plan.worker_delay_ms / 1000,
            self.config.simulation,
        )

    def _can_run_whole(self, live: _Live, params: str) -> bool:
        """The fast path: the QPU is free and no one waits for it, under a clock that adds no
        hold (so nothing stands between the stages), for a job whose pre-processing is light:
        small, ideal (a noisy job may first build its device's noise table, seconds that
        ``--sim-budget``, which bounds this one call, must not count). Injected job failures
        keep the slow path, where they are drawn after pre-processing."""
        qpu = live.backend.qpu
        if not self.config.fast_path or self.clock.name not in ("instant", "manual"):
            return False
        if self.faults.plan.job_failure_rate or len(params) > FAST_PATH_MAX_PARAMS:
            return False
        if self.config.noise is not NoiseLevel.NONE or "noise_level" in params:
            return False
        if qpu.paused or qpu.current is not None or qpu.ready:
            return False
        owner = qpu.owner
        return owner is None or owner == live.rec.session_id or not self.sessions.holds(owner)

    async def _run_whole(self, live: _Live, params: str) -> str:
        """Pre-process, sample and post-process in one call on the backend's QPU worker, holding
        the QPU throughout (:func:`emulator.worker.run_whole`): two worker round trips fewer
        than the three stages, for a job that would have taken the idle QPU anyway."""
        rec = live.rec
        limit = self._limit_s(rec)
        async with self._qpu_turn(live):
            budget = self.config.sim_budget_s
            try:
                async with asyncio.timeout(budget):
                    whole = await self.plane.qpu(
                        rec.backend,
                        worker.run_whole,
                        *self._preprocess_args(live, params),
                        limit,
                    )
            except TimeoutError:
                raise _over_budget(budget) from None
            except classical.JobInputError as exc:
                raise _Failed(JobState.FAILED, exc.code, exc.message) from None
            except WorkerDied:
                raise _died() from None
            prepared = whole.prepared
            live.estimate = prepared.quantum_seconds
            live.notes = list(prepared.notes)
            for stage, at in whole.stamps.items():
                self._stage(live, stage, datetime.fromtimestamp(at, UTC))
            if whole.result is None:
                self._stage(live, "qpu_start")
                self._stage(live, "qpu_end")
                raise _ran_too_long(prepared.quantum_seconds, limit)
            if not prepared.dry_run:
                live.charged = prepared.quantum_seconds
                self.fair.charge(rec.instance, prepared.quantum_seconds)
        self._stage(live, "post_end")
        return whole.result

    def _limit_s(self, rec: JobRecord) -> float:
        """The job's maximum execution time (model seconds): its own, within IBM's cap."""
        cap = self.config.job_max_execution_s
        return min(rec.cost or cap, cap)

    def _stage(self, live: _Live, stage: str, at: datetime | None = None) -> None:
        """Record that the job reached ``stage`` (now, or ``at``) and tell the observers."""
        live.stages[stage] = (at or utcnow()).isoformat()
        self.events.stage(live.rec, stage, live.stages[stage])

    async def _on_qpu(
        self, live: _Live, prepared: worker.Prepared
    ) -> tuple[worker.Opaque, datetime, datetime]:
        """The job's QPU turn: Aer within the wall budget, then the clock's hold."""
        rec = live.rec
        limit = self._limit_s(rec)
        async with self._qpu_turn(live) as turn:
            # The span starts at the grant (QPU.dispatch stamps every turn it grants), and the
            # clock's hold counts from it, not from when this task next ran.
            assert turn.start is not None
            span_start, t0 = turn.start
            self._stage(live, "qpu_start", span_start)
            if prepared.quantum_seconds > limit:
                await asyncio.sleep(self.clock.hold_s(limit, time.monotonic() - t0))
                self._stage(live, "qpu_end")
                raise _ran_too_long(prepared.quantum_seconds, limit)
            budget = self.config.sim_budget_s
            realtime = self.clock.name == "realtime"
            if realtime:
                budget = min(budget, limit)
            try:
                async with asyncio.timeout(budget):
                    sampled = await self.plane.qpu(rec.backend, worker.sample, prepared.job)
            except TimeoutError:
                self._stage(live, "qpu_end")
                if realtime and budget == limit:
                    raise _Failed(
                        JobState.CANCELLED,
                        ErrorCode.RAN_TOO_LONG,
                        f"Ran too long: the simulation ran past the job's maximum execution "
                        f"time of {limit:g} s; it was stopped.",
                        charged=limit,
                    ) from None
                raise _over_budget(budget) from None
            except classical.JobInputError as exc:
                raise _Failed(JobState.FAILED, exc.code, exc.message) from None
            except WorkerDied:
                raise _died() from None
            aer_s = time.monotonic() - t0
            hold = self.clock.hold_s(prepared.quantum_seconds, aer_s)
            if hold > 0:
                await asyncio.sleep(hold)
            span_stop = utcnow()
            turn.end = (span_stop, time.monotonic())  # the next job's turn starts here
            live.charged = prepared.quantum_seconds
            self.fair.charge(rec.instance, prepared.quantum_seconds)
            if self.clock.name not in ("instant", "manual"):
                live.lag_s = max(0.0, aer_s - self.clock.hold_s(prepared.quantum_seconds, 0.0))
        # Told once the next job has the QPU: telling the observers first delayed its turn.
        self._stage(live, "qpu_end", span_stop)
        return sampled, span_start, span_stop

    @asynccontextmanager
    async def _qpu_turn(self, live: _Live) -> AsyncIterator[Turn]:
        """Hold the QPU of the job's backend; waits for the turn the QPU's rules give it."""
        qpu = live.backend.qpu
        turn = live.turn = qpu.request(live.rec.seq, live.rec.id, live.rec.session_id)
        self._dispatch()
        try:
            await turn.granted
        except BaseException:
            qpu.withdraw(turn)
            live.turn = None
            self._dispatch()
            raise
        live.reached_qpu = True
        try:
            yield turn
        finally:
            qpu.release(turn)
            self._dispatch()

    async def _end(
        self,
        rec: JobRecord,
        state: str,
        code: int | None,
        reason: str | None,
        *,
        charged: float = 0.0,
        result: str | None = None,
        live: _Live | None = None,
    ) -> bool:
        """Record a job's final state (and its result and bill, in one transaction). False
        when it was final already. Jobs in job mode and in batches bill their own QPU time; a
        dedicated session is billed by its windows instead."""
        live = live or self._live.get(rec.id)
        session = self.store.session(rec.session_id) if rec.session_id else None
        bill = charged if session is None or session.mode == SessionMode.BATCH else 0.0
        finished = utcnow().isoformat()
        changes: dict[str, Any] = {
            "reason": reason,
            "reason_code": code,
            "finished": finished,
            "usage_seconds": charged,
        }
        logs = rec.logs
        if live is not None and live.notes:
            logs += "".join(f"{finished} WARNING: {note}\n" for note in live.notes)
        if reason:
            logs += f"{finished} {state}: {reason}\n"
        if logs != rec.logs:
            changes["logs"] = logs
        if live is not None:
            changes["stages"] = dict(live.stages)
            changes["emulator_lag_s"] = live.lag_s
            if live.estimate is not None:
                changes["quantum_seconds"] = live.estimate
        try:
            await self.store.transition(rec.id, state, result_json=result, bill=bill, **changes)
        except JobFinal:
            return False
        return True

    def _on_job_change(self, rec: JobRecord, old_state: str | None) -> None:
        """Called by the store as a job's change is committed, before anyone is woken."""
        if old_state is not None and rec.terminal:
            self._unfinished_per_instance[rec.instance] -= 1
            if self._unfinished_per_instance[rec.instance] <= 0:
                del self._unfinished_per_instance[rec.instance]
            self._estimates.pop(rec.id, None)
            if rec.session_id and (session := self.store.session(rec.session_id)):
                self.sessions.job_ended(session, rec.usage_seconds or 0.0)
            self._dispatch()
        else:
            self._moved()
        self.events.job(rec, old_state)

    async def _requeue_when_writable(self, rec: JobRecord) -> None:
        await self.store.wait_writable()
        self._enqueue(rec, None)
        self._dispatch()

    # -- the QPU, paused -----------------------------------------------------------------

    def pause(self, backend: str, *, lanes: bool = True, qpu: bool = True) -> None:
        """Stop granting lanes and/or the QPU of ``backend`` (running work goes on)."""
        if lanes:
            self.backends[backend].paused = True
        if qpu:
            self.backends[backend].qpu.paused = True

    def resume(self, backend: str) -> None:
        self.backends[backend].paused = False
        self.backends[backend].qpu.paused = False
        self._dispatch()

    # -- what a job's views need ---------------------------------------------------------

    def live_stages(self, job_id: str) -> dict[str, str] | None:
        live = self._live.get(job_id)
        return dict(live.stages) if live is not None else None

    def queue_info(self, job_id: str) -> tuple[int, str] | None:
        """``(position_in_queue, estimated start ISO)`` of a queued job, else None."""
        queued = self._queued.get(job_id)
        if queued is None:
            return None
        backend, waiting = queued
        position = backend.admission.position(waiting)
        # The lanes are ``width`` servers of one job each: the job starts after
        # ceil(position / width) rounds of the recent lane time per job.
        rounds = math.ceil(position / backend.width)
        start = utcnow() + timedelta(seconds=rounds * backend.lane_s)
        return position, start.isoformat()

    async def estimate(self, rec: JobRecord) -> float | None:
        """The job's modelled QPU seconds, computed once on a lane worker if it has not run
        yet (``estimated_running_time_seconds``, the official ``usage_estimation``)."""
        if rec.quantum_seconds is not None:
            return rec.quantum_seconds
        live = self._live.get(rec.id)
        if live is not None and live.estimate is not None:
            return live.estimate
        task = self._estimates.get(rec.id)
        if task is None:
            task = asyncio.ensure_future(self._estimate(rec))
            self._estimates[rec.id] = task
        return await asyncio.shield(task)

    async def _estimate(self, rec: JobRecord) -> float | None:
        params = await self.store.params(rec.id)
        if params is None:
            return None
        try:
            return await self.plane.lane(
                worker.estimate,
                rec.program_id,
                params,
                self.backends[rec.backend].device.source,
                self.timing,
                self.config.max_executions_per_job,
            )
        except WorkerDied:
            return None

    # -- statistics --------------------------------------------------------------------------

    def statistics(self) -> Statistics:
        """A snapshot per backend; O(backends), cheap enough for every status request."""
        out = []
        count = self.store.count
        for name, b in self.backends.items():
            qpu = b.qpu
            out.append(
                BackendStatistics(
                    backend=name,
                    lanes=LaneStatistics(b.width, b.busy, len(b.admission), b.peak),
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
                    paused=b.paused,
                )
            )
        return Statistics(
            tuple(out),
            workers=self.plane.statistics(),
            supervised_tasks=len(self.supervisor),
            supervised_crashes=self.supervisor.crashes,
        )


def _ran_too_long(needs_s: float, limit_s: float) -> _Failed:
    return _Failed(
        JobState.CANCELLED,
        ErrorCode.RAN_TOO_LONG,
        f"Ran too long: the job needs {needs_s:.3f} s of QPU time, more than its maximum "
        f"execution time of {limit_s:g} s.",
        charged=limit_s,
    )


def _over_budget(budget_s: float) -> _Failed:
    return _Failed(
        JobState.FAILED,
        ErrorCode.EXECUTION_FAILED,
        f"The simulation took longer than the emulator's budget of {budget_s:g} s of wall time "
        "per job (--sim-budget) and was stopped. Use fewer shots, fewer qubits or a cheaper "
        "noise level.",
    )


def _died(charged: float = 0.0) -> _Failed:
    return _Failed(
        JobState.FAILED,
        ErrorCode.EMULATOR_FAULT,
        "The emulator's worker process running this job died; the worker was replaced. "
        "Submit the job again.",
        charged,
    )
