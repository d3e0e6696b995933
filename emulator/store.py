"""SQLite persistence for jobs, sessions and usage: the source of truth, written in order.

Three promises, which the rest of the emulator builds on:

* **Durable before visible.** Every change is committed first and applied to the in-memory index
  after, so nothing a client can read (a state, a result, a usage figure) is ever taken back by
  a crash or a failed write. A handler that awaits a write answers 2xx only once it is on disk.
* **One writer, in order.** All writes go through one thread with one connection
  (:class:`_Writer`), in the order they were asked for; writes that queue up while a commit is
  in flight share the next transaction (group commit), so a thousand submissions cost a few
  fsyncs, not a thousand. A ``:memory:`` database has no disk to wait for: its writes run on
  the event loop, at once and in order (:class:`_InlineWriter`). A write that fails (a full
  disk) fails alone and changes nothing:
  its caller gets :class:`StorageError` (answered 507) and the index keeps the old values.
* **One way to change a job's state.** :meth:`Store.transition` is the only writer of
  ``JobRecord.state``. It refuses to leave a final state (:class:`JobFinal`), runs one change
  per job at a time, and is not interrupted by the cancellation of its caller (the change is
  either wholly made or not at all). Usage is billed in the same transaction as the change
  that earns it, with an atomic ``seconds = seconds + ?``.

Job and session *metadata* are also kept in memory (a few hundred bytes each), because status
polling reads them many times a second; the large columns (``params``, ``result``) are read
from disk on demand, on a reader thread (a file database) or the loop (``:memory:``),
except the results committed last (:class:`_RecentResults`), which their waiters ask for at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sqlite3
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from aioruntime.protocol import ErrorCode, JobState, SessionMode, SessionState

from .errors import Refused

__all__ = ["JobFinal", "JobRecord", "SessionRecord", "StorageError", "Store"]

log = logging.getLogger("emulator.store")

T = TypeVar("T")


@dataclass(slots=True, kw_only=True)
class JobRecord:
    id: str
    instance: str
    backend: str
    program_id: str
    created: str  # ISO timestamps (wall clock)
    seq: int = 0  # submission order
    session_id: str | None = None
    state: str = JobState.QUEUED
    reason: str | None = None
    reason_code: int | None = None
    running: str | None = None
    finished: str | None = None
    tags: list[str] = field(default_factory=list)
    cost: float | None = None  # max_execution_time asked for
    private: bool = False
    log_level: str = "WARNING"
    runtime: str = ""
    #: Modelled QPU time (model seconds); None until it was estimated or pre-processed.
    quantum_seconds: float | None = None
    #: What the job was charged (model seconds); None while pending.
    usage_seconds: float | None = None
    #: Timeline (wall clock ISO) of the stages, for metrics and benchmarks.
    stages: dict[str, str] = field(default_factory=dict)
    #: Wall seconds Aer took beyond the modelled hold (spec: reported, never billed).
    emulator_lag_s: float = 0.0
    logs: str = ""
    #: The client's ``Idempotency-Key`` header, if it sent one (an emulator extension).
    idempotency_key: str | None = None

    @property
    def terminal(self) -> bool:
        return JobState(self.state).is_terminal


@dataclass(slots=True, kw_only=True)
class SessionRecord:
    id: str
    instance: str
    backend: str
    mode: str = SessionMode.DEDICATED
    state: str = SessionState.OPEN
    state_reason: str | None = None
    accepting_jobs: bool = True
    interactive_ttl: float = 60.0
    max_ttl: float = 8 * 3600.0
    created_at: str = ""
    started_at: str | None = None
    activated_at: str | None = None
    closed_at: str | None = None
    last_job_started: str | None = None
    last_job_completed: str | None = None
    #: Billed usage so far (model seconds) of a dedicated session: its closed active windows.
    #: (A batch's usage is the sum of its jobs' usage, derived by the session book.)
    elapsed_time: float = 0.0
    #: Model time the current active window opened (None when not active).
    window_opened_model: float | None = None
    #: Model time of the first activation (max TTL counts from here).
    first_activated_model: float | None = None
    #: Model time the session last saw a job submitted or finish (idle auto-close).
    last_activity_model: float | None = None
    timestamps: list[dict[str, str]] = field(default_factory=list)

    @property
    def closed(self) -> bool:
        return self.state == SessionState.CLOSED


class StorageError(Refused):
    """A write could not be committed (e.g. the disk is full); nothing was changed."""

    def __init__(self, cause: BaseException) -> None:
        full = isinstance(cause, sqlite3.OperationalError) and "full" in str(cause).lower()
        super().__init__(
            507 if full else 503,
            ErrorCode.STORAGE_UNAVAILABLE,
            f"The emulator could not save the change ({cause}); nothing was changed. "
            "Retry when storage is available again.",
        )
        self.cause = cause


class JobFinal(Exception):
    """A change asked of a job that is already final: final states are never left."""

    def __init__(self, rec: JobRecord, wanted: str) -> None:
        super().__init__(f"job {rec.id} is already {rec.state}; it cannot become {wanted}")
        self.state = rec.state


#: The only ways a job's state may change. ``Running → Queued`` is the re-queue of a job that
#: was in flight when the emulator stopped.
_ALLOWED: dict[str, frozenset[str]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.QUEUED, JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}
    ),
}

_JOB_META = [f.name for f in fields(JobRecord)]
_SESSION_META = [f.name for f in fields(SessionRecord)]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, instance TEXT NOT NULL, meta TEXT NOT NULL,
    params TEXT, result TEXT
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, instance TEXT NOT NULL, meta TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (instance TEXT PRIMARY KEY, seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_BILL = (
    "INSERT INTO usage (instance, seconds) VALUES (?, ?) "
    "ON CONFLICT(instance) DO UPDATE SET seconds = seconds + excluded.seconds"
)
_SAVE_SESSION = (
    "INSERT INTO sessions (id, instance, meta) VALUES (?, ?, ?) "
    "ON CONFLICT(id) DO UPDATE SET meta = excluded.meta"
)

#: One SQL statement with its parameters.
Op = tuple[str, Sequence[Any]]


def _encode(record: JobRecord | SessionRecord) -> str:
    # The fields by name, not dataclasses.asdict: that deep-copies every list and dict first,
    # and was a third of the cost of storing a change (profile of a 1000-job fan-out).
    names = _JOB_META if isinstance(record, JobRecord) else _SESSION_META
    return json.dumps({n: getattr(record, n) for n in names}, separators=(",", ":"))


def _known(data: dict[str, Any], names: list[str]) -> dict[str, Any]:
    # Tolerate columns added or removed between versions of the emulator.
    return {k: v for k, v in data.items() if k in names}


def _connect(target: str, *, uri: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


@dataclass(frozen=True, slots=True)
class _Item:
    fn: Callable[[], Any]
    write: bool


class _Writes:
    """One connection whose writes are committed in the order they were asked for: what
    :class:`_Writer` (a thread) and :class:`_InlineWriter` (the event loop) share."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        #: A full disk on purpose (the admin fault plan): every write fails as SQLite's does.
        self.full = False

    def write(self, ops: Sequence[Op]) -> asyncio.Future[None]:
        """Commit ``ops`` in one transaction (shared with other waiting writes)."""

        def apply() -> None:
            for sql, args in ops:
                self.conn.execute(sql, args)

        return self.call(apply, write=True)

    def call(self, fn: Callable[[], T], *, write: bool = False) -> asyncio.Future[T]:
        """Run ``fn``, in order with the writes."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _one(self, item: _Item) -> Any:
        """``item`` alone: a read, or a write in its own transaction (rolled back if it
        fails)."""
        if not item.write:
            return item.fn()
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            result = item.fn()
            self.conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise
        return result


class _Writer(_Writes):
    """One thread, one connection: write batches are committed in the order they were put.

    Writes that wait while a commit is in flight are committed together (group commit). If a
    shared transaction fails, each of its writes is retried alone, so a write fails only
    because of itself (and, with a full disk, every write fails, each alone).
    """

    _BATCH = 512

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn)
        self._queue: queue.SimpleQueue[tuple[_Item, asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="emulator-store", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T], *, write: bool = False) -> asyncio.Future[T]:
        """Run ``fn`` on the writer thread, in order with the writes."""
        fut: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((_Item(fn, write), fut))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            with contextlib.suppress(queue.Empty):
                while len(batch) < self._BATCH:
                    item = self._queue.get_nowait()
                    if item is None:
                        self._queue.put(None)  # close after this batch
                        break
                    batch.append(item)
            self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[_Item, asyncio.Future[Any]]]) -> None:
        settled: set[int] = set()
        writes = [(item, fut) for item, fut in batch if item.write]
        if len(writes) > 1 and not self.full:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                results = [item.fn() for item, _ in writes]
                self.conn.execute("COMMIT")
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            else:
                for (_, fut), result in zip(writes, results, strict=True):
                    self._settle(fut, result, None)
                    settled.add(id(fut))
        for item, fut in batch:
            if id(fut) in settled:
                continue
            try:
                result = self._one(item)
            except Exception as exc:
                self._settle(fut, None, exc)
            else:
                self._settle(fut, result, None)

    def _settle(self, fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
        def settle() -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        self._loop.call_soon_threadsafe(settle)


class _InlineWriter(_Writes):
    """The writer of a ``:memory:`` database, on the event loop: each write and read runs at
    once, in the order asked for, in its own transaction.

    There is no disk to wait for, so the thread bought nothing: a write in memory takes tens
    of microseconds, while the hop to the writer's thread and back (a queue, a wake-up, the
    loop's self-pipe) took more CPU than the write and added a wake-up on each of the three
    writes on a job's path. The promises hold as they are: committed before applied, in order,
    a failed write (``full``, or a page limit) failing alone.
    """

    def call(self, fn: Callable[[], T], *, write: bool = False) -> asyncio.Future[T]:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        try:
            result = self._one(_Item(fn, write))
        except Exception as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
        return fut


class _RecentResults:
    """The result texts committed last, up to ``max_chars`` in all (oldest out first).

    A job's result is read as soon as it is committed: by the long-poll that was waiting for it
    (``include=result``) or by the client's ``GET /results``. Reading it back from SQLite took a
    hop to the reader thread and back to the event loop on every job's critical path; a result
    never changes once committed (a final job has no more transitions), so the text just
    written answers instead. Deleting the job drops it."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._chars = 0
        self.hits = 0

    def put(self, job_id: str, text: str) -> None:
        if len(text) > self.max_chars:
            return
        self.drop(job_id)
        self._texts[job_id] = text
        self._chars += len(text)
        while self._chars > self.max_chars:
            _, old = self._texts.popitem(last=False)
            self._chars -= len(old)

    def get(self, job_id: str) -> str | None:
        text = self._texts.get(job_id)
        if text is not None:
            self.hits += 1
        return text

    def drop(self, job_id: str) -> None:
        old = self._texts.pop(job_id, None)
        if old is not None:
            self._chars -= len(old)


class Store:
    """Jobs, sessions and usage in SQLite, with an in-memory metadata index.

    ``path`` is a file path or ``":memory:"``. Use as ``async with Store(path) as store``.
    Writes are coroutines that return once the change is committed (and then applied to the
    index); they raise :class:`StorageError` when it could not be, having changed nothing.
    """

    def __init__(self, path: Path | str, *, max_pages: int | None = None) -> None:
        self.path = str(path)
        self._max_pages = max_pages
        self._writer: _Writes | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None
        self._jobs: dict[str, JobRecord] = {}
        self._sessions: dict[str, SessionRecord] = {}
        self._usage: dict[str, float] = {}
        self._final_events: dict[str, asyncio.Event] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._seq = 0
        #: The results committed last (8 MiB of text at most), answered without a read.
        self.recent_results = _RecentResults(8 * 2**20)
        #: Jobs per (backend, state) as last saved, so statistics never scan every job.
        self._counts: Counter[tuple[str, str]] = Counter()
        #: Called after each committed job change (the scheduler's progress signal, metrics).
        self.on_job_change: Callable[[JobRecord, str | None], None] | None = None
        #: Set while writes succeed; cleared by a failed one until a probe write succeeds.
        self._writable = asyncio.Event()
        self._writable.set()
        self._probe: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = await asyncio.to_thread(_connect, self.path)
        try:
            await asyncio.to_thread(self._load, conn)
        except BaseException:
            conn.close()
            raise
        self._writer = _InlineWriter(conn) if self.path == ":memory:" else _Writer(conn)
        if self.path != ":memory:":
            self._read_conn = await asyncio.to_thread(_connect, self.path)
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="emulator-store-read")
        log.info("store %s: %d jobs, %d sessions", self.path, len(self._jobs), len(self._sessions))

    def _load(self, conn: sqlite3.Connection) -> None:
        conn.executescript(_SCHEMA)
        if self._max_pages is not None:
            conn.execute(f"PRAGMA max_page_count = {int(self._max_pages)}")
        for (meta,) in conn.execute("SELECT meta FROM jobs ORDER BY seq"):
            rec = JobRecord(**_known(json.loads(meta), _JOB_META))
            self._jobs[rec.id] = rec
            self._counts[(rec.backend, str(rec.state))] += 1
            self._seq = max(self._seq, rec.seq)
        for (meta,) in conn.execute("SELECT meta FROM sessions"):
            srec = SessionRecord(**_known(json.loads(meta), _SESSION_META))
            self._sessions[srec.id] = srec
        for instance, seconds in conn.execute("SELECT instance, seconds FROM usage"):
            self._usage[instance] = seconds

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        writer, self._writer = self._writer, None
        if writer is not None:
            await asyncio.to_thread(writer.close)
            writer.conn.close()
        if self._reader is not None:
            self._reader.shutdown(wait=True)
            self._reader = None
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None

    def _w(self) -> _Writes:
        if self._writer is None:
            raise RuntimeError("the store is not open")
        return self._writer

    async def _commit(self, ops: Sequence[Op]) -> None:
        try:
            await self._w().write(ops)
        except sqlite3.Error as exc:
            if self._writable.is_set():
                log.error("store write failed, refusing new work until it succeeds: %s", exc)
                self._writable.clear()
                self._probe = asyncio.create_task(self._probe_until_writable(), name="store-probe")
            else:
                log.debug("store write failed: %s", exc)
            raise StorageError(exc) from None

    @property
    def writable(self) -> bool:
        """False after a failed write, until a write succeeds again."""
        return self._writable.is_set()

    async def wait_writable(self) -> None:
        """Return once writes succeed again (a full disk was freed); at once if they do."""
        await self._writable.wait()

    async def _probe_until_writable(self, interval_s: float = 0.5) -> None:
        probe: list[Op] = [
            (
                "INSERT INTO meta (key, value) VALUES ('probe', '0') "
                "ON CONFLICT(key) DO UPDATE SET value = value + 1",
                (),
            )
        ]
        while True:
            try:
                await self._w().write(probe)
            except sqlite3.Error:
                await asyncio.sleep(interval_s)
                continue
            log.warning("store writable again")
            self._writable.set()
            return

    async def _read(self, sql: str, args: Sequence[Any]) -> Any:
        def fetch(conn: sqlite3.Connection) -> Any:
            row = conn.execute(sql, args).fetchone()
            return None if row is None else row[0]

        if self._reader is not None and self._read_conn is not None:
            conn = self._read_conn
            return await asyncio.get_running_loop().run_in_executor(self._reader, fetch, conn)
        writer = self._w()
        return await writer.call(lambda: fetch(writer.conn))

    @property
    def simulated_full(self) -> bool:
        return self._w().full

    @simulated_full.setter
    def simulated_full(self, full: bool) -> None:
        """Make every write fail as on a full disk (``disk_full`` in the admin fault plan)."""
        self._w().full = full

    def set_max_pages(self, pages: int) -> Any:
        """Cap the database size (tests simulate a full disk with it); returns an awaitable."""
        writer = self._w()
        return writer.call(lambda: writer.conn.execute(f"PRAGMA max_page_count = {int(pages)}"))

    # -- jobs: reading -----------------------------------------------------------------------

    def job(self, job_id: str) -> JobRecord | None:
        return self._jobs.get(job_id)

    def count(self, backend: str, state: str) -> int:
        """How many jobs of ``backend`` are in ``state`` (O(1))."""
        return self._counts[(backend, state)]

    def jobs(self) -> Iterator[JobRecord]:
        """All jobs in submission order."""
        return iter(list(self._jobs.values()))

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def params(self, job_id: str) -> str | None:
        result: str | None = await self._read("SELECT params FROM jobs WHERE id = ?", (job_id,))
        return result

    async def result(self, job_id: str) -> str | None:
        if (recent := self.recent_results.get(job_id)) is not None:
            return recent
        result: str | None = await self._read("SELECT result FROM jobs WHERE id = ?", (job_id,))
        return result

    async def wait_final(self, job_id: str) -> JobRecord | None:
        """Wait until the job is final (or deleted); bound it with ``asyncio.timeout``."""
        rec = self._jobs.get(job_id)
        if rec is None or rec.terminal:
            return rec
        await self._final_events.setdefault(job_id, asyncio.Event()).wait()
        return self._jobs.get(job_id)

    # -- jobs: writing -----------------------------------------------------------------------

    async def add_job(self, rec: JobRecord, params_json: str) -> None:
        """Persist a new job (``Queued``); it is in the index once this returns."""
        await self._commit(
            [
                (
                    "INSERT INTO jobs (id, seq, instance, meta, params) VALUES (?, ?, ?, ?, ?)",
                    (rec.id, rec.seq, rec.instance, _encode(rec), params_json),
                )
            ]
        )
        self._jobs[rec.id] = rec
        self._counts[(rec.backend, str(rec.state))] += 1
        self._changed(rec, None)

    async def transition(
        self,
        job_id: str,
        state: str,
        *,
        result_json: str | None = None,
        bill: float = 0.0,
        **changes: Any,
    ) -> JobRecord:
        """Move a job to ``state`` (with other field ``changes``): the only writer of a job's
        state. ``result_json`` is stored and ``bill`` seconds are added to the instance's usage
        in the same transaction.

        Raises :class:`JobFinal` when the job is already final (a final state is never left),
        ``ValueError`` for a move the state machine does not have, ``KeyError`` for an unknown
        job, :class:`StorageError` when the change could not be saved (then nothing changed).
        Cancelling the caller does not interrupt the change once asked for.
        """
        return await self._shielded(
            self._change(job_id, state=state, result_json=result_json, bill=bill, changes=changes)
        )

    async def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        """Change fields other than the state (tags, estimates, logs), durably."""
        if "state" in changes:
            raise ValueError("a job's state changes only through transition()")
        return await self._shielded(
            self._change(job_id, state=None, result_json=None, bill=0.0, changes=changes)
        )

    async def _shielded(self, coro: Any) -> JobRecord:
        task: asyncio.Task[JobRecord] = asyncio.ensure_future(coro)
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _change(
        self,
        job_id: str,
        *,
        state: str | None,
        result_json: str | None,
        bill: float,
        changes: dict[str, Any],
    ) -> JobRecord:
        lock = self._locks.setdefault(job_id, asyncio.Lock())
        async with lock:
            rec = self._jobs.get(job_id)
            if rec is None:
                raise KeyError(job_id)
            if state is not None:
                if rec.terminal:
                    raise JobFinal(rec, state)
                if state not in _ALLOWED[rec.state]:
                    raise ValueError(f"job {job_id}: no transition {rec.state} -> {state}")
                changes = {**changes, "state": state}
            new = replace(rec, **changes)
            ops: list[Op] = []
            if result_json is None:
                ops.append(("UPDATE jobs SET meta = ? WHERE id = ?", (_encode(new), job_id)))
            else:
                ops.append(
                    (
                        "UPDATE jobs SET meta = ?, result = ? WHERE id = ?",
                        (_encode(new), result_json, job_id),
                    )
                )
            if bill > 0:
                ops.append((_BILL, (new.instance, bill)))
            await self._commit(ops)
            # Committed: now, and only now, the index shows it.
            old_state = rec.state
            self._counts[(rec.backend, old_state)] -= 1
            for name in _JOB_META:
                setattr(rec, name, getattr(new, name))
            self._counts[(rec.backend, str(rec.state))] += 1
            if bill > 0:
                self._usage[rec.instance] = self._usage.get(rec.instance, 0.0) + bill
            if result_json is not None:
                self.recent_results.put(job_id, result_json)
            if rec.terminal:
                self._locks.pop(job_id, None)
                self._wake(job_id)
            self._changed(rec, old_state if state is not None else None)
            return rec

    async def delete_job(self, job_id: str) -> None:
        await self._commit([("DELETE FROM jobs WHERE id = ?", (job_id,))])
        rec = self._jobs.pop(job_id, None)
        if rec is not None:
            self._counts[(rec.backend, str(rec.state))] -= 1
        self.recent_results.drop(job_id)
        self._locks.pop(job_id, None)
        self._wake(job_id)

    def _wake(self, job_id: str) -> None:
        event = self._final_events.pop(job_id, None)
        if event is not None:
            event.set()

    def _changed(self, rec: JobRecord, old_state: str | None) -> None:
        if self.on_job_change is not None:
            self.on_job_change(rec, old_state)

    # -- sessions ----------------------------------------------------------------------------

    def session(self, session_id: str) -> SessionRecord | None:
        return self._sessions.get(session_id)

    def sessions(self) -> Iterator[SessionRecord]:
        return iter(list(self._sessions.values()))

    async def save_session(
        self, new: SessionRecord, *, bill: float = 0.0, apply: bool = True
    ) -> SessionRecord:
        """Persist ``new`` (a changed copy of the session, or a new one), billing ``bill``
        seconds to its instance in the same transaction. Then the usage index shows the bill
        and, with ``apply`` (or for a new session), the session index shows ``new``; callers
        that apply their changes themselves pass ``apply=False`` (the session book: it applies
        only the fields it changed, so writes that finish in order never step a newer change
        back)."""
        ops: list[Op] = [(_SAVE_SESSION, (new.id, new.instance, _encode(new)))]
        if bill > 0:
            ops.append((_BILL, (new.instance, bill)))
        await self._shielded_save(ops)
        rec = self._sessions.get(new.id)
        if rec is None:
            rec = self._sessions[new.id] = replace(new)
        elif apply:
            for name in _SESSION_META:
                setattr(rec, name, getattr(new, name))
        if bill > 0:
            self._usage[rec.instance] = self._usage.get(rec.instance, 0.0) + bill
        return rec

    async def _shielded_save(self, ops: Sequence[Op]) -> None:
        task = asyncio.ensure_future(self._commit(ops))
        task.add_done_callback(_retrieve)
        await asyncio.shield(task)

    # -- small named values (e.g. the model clock's anchor) ----------------------------------

    async def get_meta(self, key: str) -> Any:
        value = await self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return None if value is None else json.loads(value)

    async def set_meta(self, key: str, value: Any) -> None:
        await self._commit(
            [
                (
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, json.dumps(value)),
                )
            ]
        )

    # -- usage -------------------------------------------------------------------------------

    def usage(self, instance: str) -> float:
        return self._usage.get(instance, 0.0)


def _retrieve(task: asyncio.Task[Any]) -> None:
    # The outcome belongs to the awaiting caller; if it was cancelled, nobody reads it.
    if not task.cancelled():
        task.exception()
