"""``AsyncSession`` and ``AsyncBatch``: the session and batch execution modes.

::

    async with AsyncSession(backend, max_time="2h 30m") as session:
        estimator = AsyncEstimatorV2(mode=session)
        jobs = await asyncio.gather(*(estimator.run([pub]) for pub in pubs))
    # leaving the block (also by an exception) closed the session: no new jobs, queued ones
    # still run to completion, as with the official ``with Session(...)``.

When the server session is created. The official 0.51 ``Session.__init__`` sends
``POST /sessions`` at once, in the constructor. A constructor cannot await, so the asynchronous
equivalent is ``__aenter__``: ``async with AsyncSession(...)`` creates the server session on
entry. Used without ``async with``, the session is created by the first ``run()`` (or by
:meth:`AsyncSession.open`). Either way creation is guarded by a lock: any number of concurrent
``run()`` calls create exactly one server session. As in the official client, a backend whose
configuration says ``simulator: true`` gets no server session (its jobs run in job mode).

Lifecycle (:class:`ModeState`)::

    NEW ──open()/__aenter__/first run()──► OPEN ──close()/__aexit__──► CLOSED
     │                                      └──────cancel()──────────► CANCELLED
     └───────────────close() / cancel() (no request: nothing was created)──┘

``run()`` in CLOSED or CANCELLED raises :class:`SessionClosedError` without sending anything.
``close()`` and ``cancel()`` are idempotent (the official client re-sends the request each time).
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from . import protocol as p
from .errors import (
    InputValueError,
    NotFoundError,
    SessionClosedError,
    SessionNotFoundError,
)

if TYPE_CHECKING:
    from ._context import ClientContext
    from .backend import AsyncBackend
    from .service import AsyncRuntimeService

__all__ = [
    "AsyncBatch",
    "AsyncSession",
    "ModeState",
    "current_mode",
    "parse_max_time",
    "session_details",
]

log = logging.getLogger("aioruntime.session")

ModeT = TypeVar("ModeT", bound="_ExecutionMode")

_CURRENT: contextvars.ContextVar[_ExecutionMode | None] = contextvars.ContextVar(
    "aioruntime_current_mode", default=None
)


def current_mode() -> _ExecutionMode | None:
    """The innermost ``async with AsyncSession/AsyncBatch`` block of the current task, if any
    (primitives built with no ``mode`` run there, like the official ``get_cm_session``)."""
    return _CURRENT.get()


def parse_max_time(max_time: int | str | None) -> int | None:
    """Seconds from an int or the official string form (``"2h 30m 40s"``, also ``d``), parsed by
    the official ``hms_to_seconds``."""
    if max_time is None:
        return None
    if isinstance(max_time, bool) or not isinstance(max_time, (int, str)):
        raise InputValueError(
            f"max_time must be int seconds or a string like '2h 30m', got {max_time!r}"
        )
    if isinstance(max_time, str):
        from qiskit_ibm_runtime.exceptions import IBMInputValueError
        from qiskit_ibm_runtime.utils.converters import hms_to_seconds

        try:
            seconds = hms_to_seconds(max_time, "Invalid max_time value: ")
        except IBMInputValueError as exc:
            raise InputValueError(str(exc)) from exc
    else:
        seconds = max_time
    if seconds <= 0:
        raise InputValueError(f"max_time must be positive, got {max_time!r}")
    return int(seconds)


class ModeState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"
    CANCELLED = "cancelled"


class _ExecutionMode:
    """What AsyncSession and AsyncBatch share; only the wire ``mode`` differs."""

    _mode: ClassVar[p.SessionMode]
    _label: ClassVar[str]

    def __init__(self, backend: AsyncBackend, max_time: int | str | None = None) -> None:
        from .backend import AsyncBackend

        if not isinstance(backend, AsyncBackend):
            raise InputValueError(
                f"{type(self).__name__} needs an AsyncBackend from "
                f"`await service.backend(name)`, got {type(backend).__name__}"
            )
        self._backend = backend
        self._context = backend.context
        self._max_time = parse_max_time(max_time)
        self._state = ModeState.NEW
        self._session_id: str | None = None
        self._create_lock = asyncio.Lock()
        self._tokens: list[contextvars.Token[_ExecutionMode | None]] = []

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} id={self._session_id!r} backend={self._backend.name!r} "
            f"state={self._state.value}>"
        )

    # -- properties --------------------------------------------------------------------------

    @property
    def session_id(self) -> str | None:
        """The server session id (None before creation, or for a simulator backend)."""
        return self._session_id

    @property
    def state(self) -> ModeState:
        return self._state

    @property
    def service(self) -> AsyncRuntimeService:
        return self._backend.service

    @property
    def max_time(self) -> int | None:
        return self._max_time

    def backend(self) -> str:
        """The backend name (as the official ``Session.backend()``)."""
        return str(self._backend.name)

    @property
    def backend_object(self) -> AsyncBackend:
        return self._backend

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self: ModeT) -> ModeT:
        await self.open()
        self._tokens.append(_CURRENT.set(self))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tokens:
            token = self._tokens.pop()
            try:
                _CURRENT.reset(token)
            except ValueError:  # exited from another task/context than it was entered in
                pass
        # Close like the official `with Session(...)`, also when leaving by an exception; the
        # close request is bounded and survives our cancellation (see ClientContext.cleanup).
        await self._context.cleanup(
            self.close(),
            what=f"closing {self._label} {self._session_id}",
            suppress=exc_type is not None,
        )

    async def open(self) -> str | None:
        """Create the server session now (``POST /sessions``) unless it exists. Returns its id."""
        return await self._ensure_created()

    def _closed_error(self) -> SessionClosedError:
        verb = "cancelled" if self._state is ModeState.CANCELLED else "closed"
        return SessionClosedError(
            f"The {self._label} {self._session_id or ''} was {verb}: it accepts no new jobs "
            f"(nothing was sent). Open a new {type(self).__name__} to run more jobs.".replace(
                "  ", " "
            ),
            session_id=self._session_id,
        )

    async def _ensure_created(self) -> str | None:
        if self._state is ModeState.OPEN:
            return self._session_id
        if self._state is not ModeState.NEW:
            raise self._closed_error()
        async with self._create_lock:
            # `self.state` (not `_state`): re-read after each await, whatever mypy narrowed
            if self.state is ModeState.OPEN:
                return self._session_id
            if self.state is not ModeState.NEW:
                raise self._closed_error()
            session_id = None
            if not self._backend.simulator:
                session_id = await self._create()
            self._session_id = session_id
            if self.state is not ModeState.NEW:  # closed while we were creating it
                raise self._closed_error()
            self._state = ModeState.OPEN
            return session_id

    async def _create(self) -> str | None:
        body: dict[str, Any] = {
            "mode": str(self._mode),
            "backend": self._backend.name,
            "instance": self._context.instance,
        }
        if self._max_time:
            body["max_ttl"] = self._max_time
        response = await self._context.api.request(
            "POST", p.SESSIONS, body=p.dumps(body), accept_json=False
        )
        created = response.json() or {}
        session_id = created.get("id") if isinstance(created, dict) else None
        if not session_id:
            # The official client then silently runs the jobs in job mode; say so at least.
            log.warning("POST /sessions answered without an id; jobs will run in job mode")
            return None
        return str(session_id)

    async def _session_id_for_job(self) -> str | None:
        """The session id a new job must carry; raises SessionClosedError after close/cancel."""
        return await self._ensure_created()

    def _path(self, template: str) -> str:
        assert self._session_id is not None
        return p.path(template, session_id=self._session_id)

    async def close(self) -> None:
        """Stop accepting jobs (``PATCH /sessions/{id}`` ``{"accepting_jobs": false}``); queued
        and running jobs still finish. New ``run()`` calls fail at once. Idempotent."""
        if self._state in (ModeState.CLOSED, ModeState.CANCELLED):
            return
        self._state = ModeState.CLOSED
        async with self._create_lock:  # a creation in flight completes first; we close it
            pass
        if self._session_id is None:
            return
        try:
            await self._context.api.request(
                "PATCH",
                self._path(p.SESSION),
                body=p.dumps({"accepting_jobs": False}),
                accept_json=False,
            )
        except NotFoundError:
            pass  # as the official client: a session the server forgot is closed enough

    async def cancel(self) -> None:
        """Cancel the queued jobs and close (``DELETE /sessions/{id}/close``). Idempotent."""
        if self._state is ModeState.CANCELLED:
            return
        self._state = ModeState.CANCELLED
        async with self._create_lock:
            pass
        if self._session_id is None:
            return
        await self._context.api.request(
            "DELETE",
            self._path(p.SESSION_CLOSE),
            accept_json=False,
            errors={404: (SessionNotFoundError, {"session_id": self._session_id})},
        )

    # -- inspection --------------------------------------------------------------------------

    async def details(self) -> dict[str, Any] | None:
        """The session's details with the official key names (spec 3.3); None without a server
        session."""
        if self._session_id is None:
            return None
        response = await session_details(self._context, self._session_id)
        if not response:
            return None
        return {
            "id": response.get("id"),
            "backend_name": response.get("backend_name"),
            "interactive_timeout": response.get("interactive_ttl"),
            "max_time": response.get("max_ttl"),
            "active_timeout": response.get("active_ttl"),
            "state": response.get("state"),
            "accepting_jobs": response.get("accepting_jobs"),
            "last_job_started": response.get("last_job_started"),
            "last_job_completed": response.get("last_job_completed"),
            "started_at": response.get("started_at"),
            "closed_at": response.get("closed_at"),
            "activated_at": response.get("activated_at"),
            "mode": response.get("mode"),
            "usage_time": response.get("elapsed_time"),
            "timestamps": response.get("timestamps", []),
        }

    async def status(self) -> str | None:
        """``Pending``, ``In progress, accepting new jobs``, ``In progress, not accepting new
        jobs`` or ``Closed`` (the official strings); None without a server session."""
        details = await self.details()
        if not details:
            return None
        return p.session_status_string(str(details["state"]), bool(details["accepting_jobs"]))

    async def usage(self) -> float | None:
        """Usage in seconds (``elapsed_time``): wall time for sessions, the sum of the jobs'
        QPU time for batches. None without a server session."""
        if self._session_id is None:
            return None
        response = await session_details(self._context, self._session_id)
        value = response.get("elapsed_time") if response else None
        return float(value) if value is not None else None

    @classmethod
    async def from_id(cls: type[ModeT], session_id: str, service: AsyncRuntimeService) -> ModeT:
        """Attach to an existing server session. Raises :class:`SessionNotFoundError`, or
        :class:`InputValueError` when its mode is not this class's (``dedicated`` for
        AsyncSession, ``batch`` for AsyncBatch)."""
        details = await session_details(service.context, session_id)
        backend_name = details.get("backend_name")
        if not backend_name:
            raise InputValueError(
                f"The backend of session {session_id} is unknown. Try running a job first."
            )
        mode = details.get("mode")
        if mode != str(cls._mode):
            raise InputValueError(
                f"Input ID {session_id} has execution mode {mode} instead of {cls._mode}."
            )
        backend = await service.backend(str(backend_name))
        obj = cls(backend)
        obj._session_id = session_id
        obj._state = ModeState.CLOSED if details.get("state") == "closed" else ModeState.OPEN
        return obj


async def session_details(context: ClientContext, session_id: str) -> dict[str, Any]:
    """``GET /sessions/{id}`` as the server sends it. Raises :class:`SessionNotFoundError`."""
    context.require_open()
    body = await context.api.get_json(
        p.path(p.SESSION, session_id=session_id),
        errors={404: (SessionNotFoundError, {"session_id": session_id})},
    )
    return dict(body or {})


class AsyncSession(_ExecutionMode):
    """Dedicated session execution mode (``mode: dedicated``): the QPU is reserved for this
    session's jobs while it is active. ``max_time``: int seconds or ``"2h 30m"``."""

    _mode = p.SessionMode.DEDICATED
    _label = "session"


class AsyncBatch(_ExecutionMode):
    """Batch execution mode (``mode: batch``): independent jobs whose classical processing
    runs in parallel and whose QPU runs come back to back."""

    _mode = p.SessionMode.BATCH
    _label = "batch"
