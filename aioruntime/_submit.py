"""Submission, shared by every primitive: the mode a primitive runs in, the mock twin of a dry
run, the ``POST /jobs`` body and the job handle it gives.

The body has the official ``Runtime.program_run`` keys, in its order and under its conditions;
``params`` arrives already encoded (JSON text made off the loop) and is spliced in, so a
multi-megabyte program is never encoded twice nor on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import protocol as p
from .errors import BackendNotFoundError, InputValueError, ProgramNotFoundError
from .job import AsyncRuntimeJob
from .session import _ExecutionMode, current_mode

if TYPE_CHECKING:
    from ._context import ClientContext
    from .backend import AsyncBackend

__all__ = ["job_body", "mock_twin", "post_job", "preflight", "resolve_mode"]

log = logging.getLogger("aioruntime.primitives")


def resolve_mode(mode: Any) -> tuple[_ExecutionMode | None, AsyncBackend]:
    """``(session or batch or None, backend)`` for a primitive's ``mode``, as the official
    ``get_mode_service_backend``: no mode inside ``async with AsyncSession(...)`` means that
    session; a backend inside one runs in it too (with a warning), but must be its backend."""
    from .backend import AsyncBackend

    context = current_mode()
    if mode is None:
        if context is None:
            raise InputValueError(
                "A mode is required: an AsyncBackend (job mode), an AsyncSession or an "
                "AsyncBatch (or build the primitive inside `async with AsyncSession(...)`)."
            )
        mode = context
    if isinstance(mode, AsyncBackend) and context is not None:
        if context.backend_object.name != mode.name:
            raise InputValueError(
                "The backend passed in to the primitive is different from the session "
                "backend. Leave mode empty to use the session backend."
            )
        log.warning(
            "A backend was passed in as the mode but a session context manager is open, "
            "so this job will run inside that %s instead of in job mode.",
            type(context).__name__,
        )
        mode = context
    if isinstance(mode, _ExecutionMode):
        return mode, mode.backend_object
    if isinstance(mode, AsyncBackend):
        return None, mode
    raise InputValueError(
        f"mode must be an AsyncBackend, AsyncSession or AsyncBatch, got {type(mode).__name__}"
    )


async def mock_twin(backend: AsyncBackend) -> AsyncBackend:
    """The backend a dry run goes to: ``ibm_fez`` → ``mock_fez`` (the official ``_run`` swaps
    it the same way; a ``mock_*`` backend is its own twin). Raises
    :class:`BackendNotFoundError` when the server has no such twin."""
    if backend.name.startswith("mock_"):
        return backend
    name = re.sub(r"^[^_]+", "mock", backend.name)
    try:
        return await backend.service.backend(name)
    except BackendNotFoundError as exc:
        raise BackendNotFoundError(
            f"Unable to use `dry_run` mode: backend '{name}' was not found.", backend_name=name
        ) from exc


async def preflight(context: ClientContext, backend: AsyncBackend) -> None:
    """The official client's checks before every job (only with ``preflight_checks``): warn
    when the instance has used up its time or the backend is not active. Never raises for
    what it finds; request failures propagate."""
    usage, status = await asyncio.gather(context.api.get_json(p.INSTANCES_USAGE), backend.status())
    if (usage or {}).get("usage_limit_reached"):
        warnings.warn(
            "This instance has met its usage limit; workloads will not run until time is "
            "made available.",
            UserWarning,
            stacklevel=3,
        )
    if status["operational"] and status["status_msg"] != "active":
        warnings.warn(
            f"The backend {backend.name} currently has a status of {status['status_msg']}.",
            UserWarning,
            stacklevel=3,
        )


def job_body(
    program_id: str,
    params_json: str,
    runtime: Mapping[str, Any],
    backend_name: str,
    session_id: str | None,
) -> str:
    """The ``POST /jobs`` body, keys and conditions as ``Runtime.program_run``."""
    rest: dict[str, Any] = {}
    if runtime.get("image"):
        rest["runtime"] = runtime["image"]
    if runtime.get("log_level"):
        rest["log_level"] = runtime["log_level"]
    rest["backend"] = backend_name
    if session_id:
        rest["session_id"] = session_id
    if runtime.get("job_tags"):
        rest["tags"] = list(runtime["job_tags"])
    if runtime.get("max_execution_time"):
        rest["cost"] = runtime["max_execution_time"]
    if runtime.get("private"):
        rest["private"] = True
    head = json.dumps({"program_id": program_id})[:-1]
    return f'{head}, "params": {params_json}, {json.dumps(rest)[1:]}'


async def post_job(
    context: ClientContext,
    backend: AsyncBackend,
    program_id: str,
    body: str,
    runtime: Mapping[str, Any],
    session_id: str | None,
    *,
    light_result: bool = False,
) -> AsyncRuntimeJob:
    """``POST /jobs`` (after the preflight checks, when configured); the job handle
    (``light_result``: see :class:`AsyncRuntimeJob`).

    Every submission carries a fresh ``Idempotency-Key`` (an extension the emulator honours;
    others ignore it), so a submission whose connection dropped can be retried safely."""
    if context.config.preflight_checks:
        await preflight(context, backend)
    # No Accept header: the official ``program_run`` sends only Content-Type.
    response = await context.api.request(
        "POST",
        p.JOBS,
        body=body,
        accept_json=False,
        read_timeout=context.config.submit_timeout_s,
        errors={404: (ProgramNotFoundError, {})},
        idempotency_key=uuid.uuid4().hex,
    )
    answer = response.json() or {}
    backend_name = str(answer.get("backend") or backend.name)
    if backend_name != backend.name:  # the server moved it: load that backend
        try:
            backend = await backend.service.backend(backend_name)
        except BackendNotFoundError:
            pass
    return AsyncRuntimeJob(
        context=context,
        job_id=str(answer["id"]),
        program_id=program_id,
        backend=backend,
        backend_name=backend_name,
        session_id=str(answer.get("session_id") or session_id or "") or None,
        tags=list(runtime.get("job_tags") or []),
        private=bool(runtime.get("private")),
        image=runtime.get("image"),
        light_result=light_result,
    )
