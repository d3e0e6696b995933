"""Parsing the Runtime API's requests: bodies, fields, queries, and their limits.

Handlers in :mod:`emulator.api.runtime` call one function here per request and get back plain
values or a small frozen dataclass; they never look at ``request.query`` or the body themselves.
Every refusal raises :class:`emulator.errors.Refused` (status 400 and IBM's ``VALIDATION`` code
unless said otherwise) with a message naming the field, so bad input can only ever become a 4xx
with IBM's error body, never a 500. Keeping it here, in one place, is what lets the limits be
stated once and documented (README, "Restarts, tenants and faults").
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web

from aioruntime import protocol as p
from aioruntime.protocol import ErrorCode, SessionMode

from ..errors import Refused
from ..store import JobRecord

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "JobFilter",
    "JobSubmission",
    "SessionCreation",
    "accepting_jobs",
    "body_object",
    "exclude_params",
    "field",
    "job_filter",
    "job_submission",
    "new_tags",
    "session_creation",
    "wait_timeout",
]


T = TypeVar("T")

#: How deep a request body may nest objects and arrays. The official client's deepest is about
#: five (params → pubs → a PUB → an observables array → a dict); deeper is refused (400) before
#: anything recursive (the JSON scanner, the codec in the workers) can reach the recursion limit.
MAX_JSON_DEPTH = 64
#: A body at least this large is parsed (and re-encoded) in a thread, not on the event loop.
_THREADED_BYTES = 1 << 20
#: Job tags, as IBM limits them: the ``Tags`` schema of its published Runtime API
#: (quantum.cloud.ibm.com/api/openapi.json), used by ``POST /jobs`` and ``PUT /jobs/{id}/tags``,
#: allows at most 8 tags of at most 86 characters. (The official client checks only that tags
#: are a list of strings: ``qiskit_ibm_runtime.utils.validations.validate_job_tags``.)
MAX_TAGS = 8
MAX_TAG_CHARS = 86


def _refuse(message: str, code: int = ErrorCode.VALIDATION, status: int = 400) -> Refused:
    return Refused(status, code, message)


# -- bodies and fields -----------------------------------------------------------------------


async def _cpu(size: int, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, in a thread when ``size`` (bytes handled) is large: JSON work on a body of
    tens of MB would otherwise stall every other request for seconds."""
    if size >= _THREADED_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def _parse(raw: bytes) -> Any:
    try:
        body = json.loads(raw) if raw else None
    except RecursionError:
        body = None
        too_deep = True
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refuse(f"The request body is not valid JSON: {exc}") from None
    else:
        too_deep = p.nesting_exceeds(body, MAX_JSON_DEPTH)
    if too_deep:
        raise _refuse(f"The request body nests objects and arrays more than {MAX_JSON_DEPTH} deep.")
    return body


async def body_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object."""
    raw = await request.read()
    body = await _cpu(len(raw), _parse, raw)
    if not isinstance(body, dict):
        raise _refuse("The request body must be a JSON object.")
    return body


def field(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = False
) -> Any:
    """``body[name]`` if it is of ``kind`` (None when absent and not ``required``)."""
    value = body.get(name)
    if value is None:
        if required:
            raise _refuse(f"Missing required field '{name}'.")
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass: a boolean is never accepted as a number
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise _refuse(f"Field '{name}' must be of type {names}.")
    return value


def _tags(body: dict[str, Any], *, required: bool) -> list[str]:
    tags = field(body, "tags", list, required=required) or []
    if not all(isinstance(t, str) for t in tags):
        raise _refuse("Field 'tags' must be a list of strings.")
    if len(tags) > MAX_TAGS:
        raise _refuse(f"Field 'tags' may hold at most {MAX_TAGS} tags, not {len(tags)}.")
    if any(len(t) > MAX_TAG_CHARS for t in tags):
        raise _refuse(f"Field 'tags': a tag may be at most {MAX_TAG_CHARS} characters long.")
    return list(tags)


# -- queries ---------------------------------------------------------------------------------


def _iso_query(request: web.Request, name: str) -> datetime | None:
    value = request.query.get(name)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _refuse(f"Query '{name}' must be an ISO date.") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _bool_query(request: web.Request, name: str) -> bool | None:
    if name not in request.query:
        return None
    try:
        return p.parse_bool(request.query[name])
    except ValueError:
        raise _refuse(f"Query '{name}' must be true or false.") from None


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError:
        raise _refuse(f"Query '{name}' must be an integer.") from None
    if not lo <= value <= hi:
        raise _refuse(f"Query '{name}' must be in [{lo}, {hi}].")
    return value


def exclude_params(request: web.Request) -> bool:
    """``GET /jobs/{id}?exclude_params=…``."""
    return bool(_bool_query(request, "exclude_params"))


def wait_timeout(request: web.Request, bound: float) -> float:
    """The wait extension's ``timeout`` query, seconds, capped at ``bound``."""
    try:
        timeout = float(request.query.get("timeout", bound))
    except ValueError:
        raise _refuse("Query 'timeout' must be a number.") from None
    if not (math.isfinite(timeout) and timeout >= 0):
        raise _refuse("Query 'timeout' must be >= 0.")
    return min(timeout, bound)


# -- jobs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSubmission:
    """A validated ``POST /jobs``; ``params_json`` is the JSON text of ``params`` as stored."""

    program_id: str
    backend: str
    params_json: str
    session_id: str | None
    tags: list[str]
    cost: float | None
    private: bool
    log_level: str
    runtime: str
    idempotency_key: str | None
    #: The device calibration the job asked for (``service.backend(..., calibration_id=...)``).
    calibration_id: str | None = None


async def job_submission(
    request: web.Request,
    backends: Collection[str],
    schema_versions: Callable[[], Awaitable[Mapping[str, Sequence[str]]]],
) -> JobSubmission:
    """``POST /jobs`` for a server that serves ``backends``. ``params`` is only checked for
    shape here; decoding it (QPY circuits, arrays) is CPU work, done in a worker process.
    ``schema_versions`` gives the versions each versioned program accepts (asked of a worker:
    ``Scheduler.schema_versions``); it is awaited only for those programs."""
    body = await body_object(request)
    program_id = field(body, "program_id", str, required=True)
    if program_id not in p.PROGRAMS:
        raise _refuse(
            f"Program '{program_id}' not found; the emulator runs {', '.join(p.PROGRAMS)}.",
            status=404,
        )
    backend = field(body, "backend", str, required=True)
    if backend not in backends:
        raise _refuse(f"Backend {backend} not found.", ErrorCode.BACKEND_NOT_FOUND)
    params = field(body, "params", dict, required=True)
    known = await schema_versions() if program_id in VERSIONED_PROGRAMS else {}
    check_params(program_id, params, known)
    tags = _tags(body, required=False)
    cost = field(body, "cost", (int, float))
    if cost is not None and not (math.isfinite(cost) and cost > 0):
        raise _refuse("Field 'cost' (max_execution_time) must be > 0.")
    return JobSubmission(
        program_id=program_id,
        backend=backend,
        params_json=await _cpu(request.content_length or 0, json.dumps, params),
        session_id=field(body, "session_id", str),
        tags=tags,
        cost=float(cost) if cost is not None else None,
        private=bool(field(body, "private", bool)),
        log_level=field(body, "log_level", str) or "WARNING",
        runtime=field(body, "runtime", str) or "",
        idempotency_key=request.headers.get(p.HEADER_IDEMPOTENCY_KEY),
        calibration_id=field(body, "calibration_id", str),
    )


#: The programs whose params carry a ``schema_version``.
VERSIONED_PROGRAMS = frozenset({"executor", "noise-learner"})


def check_params(
    program_id: str, params: dict[str, Any], schema_versions: Mapping[str, Sequence[str]]
) -> None:
    """What can be refused from the JSON alone (nothing is decoded on the event loop, and
    nothing here imports qiskit). ``schema_versions``: the versions each program of
    :data:`VERSIONED_PROGRAMS` accepts."""
    if program_id == "executor":
        from .. import executor

        # JobInputError: answered 400 by the middleware
        executor.check_request(params, schema_versions["executor"])
    elif program_id == "noise-learner":
        from .. import noise_learner

        noise_learner.check_request(params, schema_versions["noise-learner"])
    else:
        pubs = params.get("pubs")
        if not isinstance(pubs, list) or not pubs:
            raise _refuse("Field 'params.pubs' must be a non-empty list.")


def include_mocks(request: web.Request) -> bool:
    """``?include_mocks=``: list mock twins (dry-run targets) too, as IBM does."""
    return bool(_bool_query(request, "include_mocks"))


async def new_tags(request: web.Request) -> list[str]:
    """``PUT /jobs/{id}/tags``: the replacing tags."""
    return _tags(await body_object(request), required=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFilter:
    """``GET /jobs``: which of the caller's jobs, in which order, which page."""

    instance: str
    backend: str | None
    program: str | None
    session_id: str | None
    pending: bool | None
    tags: frozenset[str]
    created_after: datetime | None
    created_before: datetime | None
    descending: bool
    limit: int
    offset: int
    #: Backends whose jobs are listed only with ``include_mocks`` (dry runs), as IBM does.
    hidden_backends: frozenset[str] = frozenset()

    def matches(self, rec: JobRecord) -> bool:
        if rec.instance != self.instance or rec.backend in self.hidden_backends:
            return False
        if (self.backend and rec.backend != self.backend) or (
            self.program and rec.program_id != self.program
        ):
            return False
        if self.session_id and rec.session_id != self.session_id:
            return False
        if self.pending is not None and rec.terminal == self.pending:
            return False
        if self.tags and not self.tags.issubset(rec.tags):
            return False
        if self.created_after or self.created_before:
            created = datetime.fromisoformat(rec.created)
            if (self.created_after and created < self.created_after) or (
                self.created_before and created > self.created_before
            ):
                return False
        return True


def job_filter(
    request: web.Request, instance: str, mock_backends: frozenset[str] = frozenset()
) -> JobFilter:
    q = request.query
    return JobFilter(
        hidden_backends=frozenset() if include_mocks(request) else mock_backends,
        instance=instance,
        backend=q.get("backend") or None,
        program=q.get("program") or None,
        session_id=q.get("session_id") or None,
        pending=_bool_query(request, "pending"),
        tags=frozenset(q.getall("tags", [])),
        created_after=_iso_query(request, "created_after"),
        created_before=_iso_query(request, "created_before"),
        descending=q.get("sort", "DESC").upper() != "ASC",
        limit=_int_query(request, "limit", 200, 0, 1000),
        offset=_int_query(request, "offset", 0, 0, 10**9),
    )


# -- sessions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionCreation:
    """A validated ``POST /sessions``."""

    backend: str
    mode: str
    max_ttl: float | None


async def session_creation(
    request: web.Request, backends: Collection[str], instance: str
) -> SessionCreation:
    """``POST /sessions`` by a caller acting for ``instance``."""
    body = await body_object(request)
    mode = field(body, "mode", str) or SessionMode.DEDICATED
    if mode not in (SessionMode.DEDICATED, SessionMode.BATCH):
        raise _refuse("Field 'mode' must be 'dedicated' or 'batch'.")
    backend = field(body, "backend", str, required=True)
    if backend not in backends:
        raise _refuse(f"Backend {backend} not found.", ErrorCode.BACKEND_NOT_FOUND)
    max_ttl = field(body, "max_ttl", (int, float))
    if max_ttl is not None and not (math.isfinite(max_ttl) and 0 < max_ttl <= 10**7):
        raise _refuse("Field 'max_ttl' must be a positive number of seconds.")
    if (asked := field(body, "instance", str)) and asked != instance:
        raise _refuse("Field 'instance' does not match Service-CRN.")
    return SessionCreation(backend=backend, mode=mode, max_ttl=max_ttl)


async def accepting_jobs(request: web.Request) -> bool:
    """``PATCH /sessions/{id}``: the new ``accepting_jobs``."""
    accepting = field(await body_object(request), "accepting_jobs", bool)
    if accepting is None:
        raise _refuse("Only 'accepting_jobs': false can be changed.")
    return bool(accepting)
