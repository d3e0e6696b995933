"""SQLite persistence for jobs, sessions and usage.

SQLite (through ``aiosqlite``, so no query runs on the event loop) is the source of truth: every
accepted job is written before its id is returned, and every state change is written as it
happens, so a restarted emulator knows every job it accepted. Job and session *metadata* are also
indexed in memory (a few hundred bytes each) because status polling reads them many times a
second; the large columns (``params``, ``result``) are read from disk on demand.

The store also wakes waiters: :meth:`Store.wait_final` returns as soon as a job reaches a final
state, which is what the long-poll extension route and the scheduler's tests await.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import aiosqlite

from aioruntime.protocol import JobState, SessionMode, SessionState

__all__ = ["JobRecord", "SessionRecord", "Store"]

log = logging.getLogger("emulator.store")


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
    #: Modelled QPU time (model seconds); None until pre-processing has estimated it.
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
    #: Billed usage so far (model seconds): the closed part of the active windows, or for a
    #: batch the sum of its jobs' quantum seconds.
    elapsed_time: float = 0.0
    #: Model time the current active window opened (None when not active).
    window_opened_model: float | None = None
    #: Model time of the first activation (max TTL counts from here).
    first_activated_model: float | None = None
    #: Model time the session last saw a job submitted or finish (idle auto-close).
    last_activity_model: float | None = None
    #: Sum of the quantum seconds of the session's finished jobs.
    quantum_seconds: float = 0.0
    timestamps: list[dict[str, str]] = field(default_factory=list)

    @property
    def closed(self) -> bool:
        return self.state == SessionState.CLOSED


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


def _encode(record: JobRecord | SessionRecord) -> str:
    return json.dumps(asdict(record), separators=(",", ":"))


class Store:
    """Jobs, sessions and usage in SQLite, with an in-memory metadata index.

    ``path`` is a file path or ``":memory:"``. Use as ``async with Store(path) as store``.
    Write methods are coroutines that return once the row is committed.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._db: aiosqlite.Connection | None = None
        self._jobs: dict[str, JobRecord] = {}
        self._sessions: dict[str, SessionRecord] = {}
        self._usage: dict[str, float] = {}
        self._final_events: dict[str, asyncio.Event] = {}
        self._seq = 0
        #: Jobs per (backend, state) as last saved, so statistics never scan every job.
        self._counts: Counter[tuple[str, str]] = Counter()
        self._counted: dict[str, tuple[str, str]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.path)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.executescript(_SCHEMA)
            await db.commit()
            async with db.execute("SELECT meta FROM jobs ORDER BY seq") as cur:
                async for (meta,) in cur:
                    rec = JobRecord(**_known(json.loads(meta), _JOB_META))
                    self._jobs[rec.id] = rec
                    self._count(rec)
                    self._seq = max(self._seq, rec.seq)
            async with db.execute("SELECT meta FROM sessions") as cur:
                async for (meta,) in cur:
                    srec = SessionRecord(**_known(json.loads(meta), _SESSION_META))
                    self._sessions[srec.id] = srec
            async with db.execute("SELECT instance, seconds FROM usage") as cur:
                async for instance, seconds in cur:
                    self._usage[instance] = seconds
        except BaseException:
            await db.close()
            raise
        self._db = db
        log.info("store %s: %d jobs, %d sessions", self.path, len(self._jobs), len(self._sessions))

    async def aclose(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    # -- jobs --------------------------------------------------------------------------------

    def job(self, job_id: str) -> JobRecord | None:
        return self._jobs.get(job_id)

    def count(self, backend: str, state: str) -> int:
        """How many jobs of ``backend`` were last saved in ``state`` (O(1))."""
        return self._counts[(backend, state)]

    def _count(self, rec: JobRecord | None, *, job_id: str | None = None) -> None:
        key = rec.id if rec is not None else job_id
        assert key is not None
        old = self._counted.pop(key, None)
        if old is not None:
            self._counts[old] -= 1
        if rec is not None:
            new = (rec.backend, str(rec.state))
            self._counted[key] = new
            self._counts[new] += 1

    def jobs(self) -> Iterator[JobRecord]:
        """All jobs in submission order."""
        return iter(list(self._jobs.values()))

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def add_job(self, rec: JobRecord, params_json: str) -> None:
        await self.db.execute(
            "INSERT INTO jobs (id, seq, instance, meta, params) VALUES (?, ?, ?, ?, ?)",
            (rec.id, rec.seq, rec.instance, _encode(rec), params_json),
        )
        await self.db.commit()
        self._jobs[rec.id] = rec
        self._count(rec)

    async def save_job(self, rec: JobRecord, *, result_json: str | None = None) -> None:
        """Persist the metadata of ``rec`` (and its result, in the same transaction), then wake
        the waiters if it is final."""
        if result_json is None:
            await self.db.execute("UPDATE jobs SET meta = ? WHERE id = ?", (_encode(rec), rec.id))
        else:
            await self.db.execute(
                "UPDATE jobs SET meta = ?, result = ? WHERE id = ?",
                (_encode(rec), result_json, rec.id),
            )
        await self.db.commit()
        self._count(rec)
        if rec.terminal:
            self._wake(rec.id)

    def _wake(self, job_id: str) -> None:
        event = self._final_events.pop(job_id, None)
        if event is not None:
            event.set()

    async def params(self, job_id: str) -> str | None:
        async with self.db.execute("SELECT params FROM jobs WHERE id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def result(self, job_id: str) -> str | None:
        async with self.db.execute("SELECT result FROM jobs WHERE id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def delete_job(self, job_id: str) -> None:
        await self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        await self.db.commit()
        self._jobs.pop(job_id, None)
        self._count(None, job_id=job_id)
        self._wake(job_id)

    async def wait_final(self, job_id: str) -> JobRecord | None:
        """Wait until the job is final (or deleted); bound it with ``asyncio.timeout``."""
        rec = self._jobs.get(job_id)
        if rec is None or rec.terminal:
            return rec
        await self._final_events.setdefault(job_id, asyncio.Event()).wait()
        return self._jobs.get(job_id)

    # -- sessions ----------------------------------------------------------------------------

    def session(self, session_id: str) -> SessionRecord | None:
        return self._sessions.get(session_id)

    def sessions(self) -> Iterator[SessionRecord]:
        return iter(list(self._sessions.values()))

    async def save_session(self, rec: SessionRecord) -> None:
        await self.db.execute(
            "INSERT INTO sessions (id, instance, meta) VALUES (?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET meta = excluded.meta",
            (rec.id, rec.instance, _encode(rec)),
        )
        await self.db.commit()
        self._sessions[rec.id] = rec

    # -- small named values (e.g. the model clock's anchor) ----------------------------------

    async def get_meta(self, key: str) -> Any:
        async with self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else json.loads(row[0])

    async def set_meta(self, key: str, value: Any) -> None:
        await self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )
        await self.db.commit()

    # -- usage -------------------------------------------------------------------------------

    def usage(self, instance: str) -> float:
        return self._usage.get(instance, 0.0)

    async def add_usage(self, instance: str, seconds: float) -> None:
        total = self._usage.get(instance, 0.0) + seconds
        await self.db.execute(
            "INSERT INTO usage (instance, seconds) VALUES (?, ?) "
            "ON CONFLICT(instance) DO UPDATE SET seconds = excluded.seconds",
            (instance, total),
        )
        await self.db.commit()
        self._usage[instance] = total


def _known(data: dict[str, Any], names: list[str]) -> dict[str, Any]:
    # Tolerate columns added or removed between versions of the emulator.
    return {k: v for k, v in data.items() if k in names}
