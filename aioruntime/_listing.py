"""``JobList``: what ``service.jobs(...)`` returns, both awaitable and async-iterable.

``await service.jobs(...)`` gives a ``list`` like the official ``QiskitRuntimeService.jobs()``;
``async for job in service.jobs(...)`` fetches the pages (``GET /jobs``) as it goes, so a loop
that stops early sends fewer requests. Each ``await`` or ``async for`` is a fresh query.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import protocol as p
from .errors import InputValueError
from .job import AsyncRuntimeJob, job_from_json

if TYPE_CHECKING:
    from .backend import BackendCatalog

__all__ = ["PAGE_SIZE", "JobList", "job_filters"]

#: Jobs per page when ``limit=None`` asks for every match (the official client's page size).
PAGE_SIZE = 20


def job_filters(
    *,
    limit: int | None,
    skip: int,
    backend_name: str | None,
    pending: bool | None,
    program_id: str | None,
    job_tags: list[str] | None,
    session_id: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    descending: bool,
    include_mocks: bool,
) -> list[tuple[str, str]]:
    """The query parameters of ``GET /jobs`` after ``limit``/``offset``, in the official
    client's order. Raises :class:`InputValueError` for bad arguments (nothing is sent).
    Naive datetimes are local time, as in the official client."""
    from qiskit_ibm_runtime.utils import local_to_utc

    if job_tags is not None and (
        not isinstance(job_tags, list) or not all(isinstance(t, str) for t in job_tags)
    ):
        raise InputValueError("job_tags needs to be a list of strings.")
    if (limit is not None and limit < 0) or skip < 0:
        raise InputValueError("limit and skip must not be negative")
    params: list[tuple[str, str]] = []
    if backend_name:
        params.append(("backend", backend_name))
    if pending is not None:
        params.append(("pending", "true" if pending else "false"))
    if program_id:
        params.append(("program", program_id))
    for tag in job_tags or []:
        params.append(("tags", tag))
    if session_id:
        params.append(("session_id", session_id))
    if created_after:
        params.append(("created_after", local_to_utc(created_after).isoformat()))
    if created_before:
        params.append(("created_before", local_to_utc(created_before).isoformat()))
    if not descending:
        params.append(("sort", "ASC"))
    if include_mocks:
        params.append(("include_mocks", "True"))
    return params


class JobList:
    """``await`` it for a ``list[AsyncRuntimeJob]``, or ``async for`` over it (see the module
    docstring). Raises :class:`ServiceClosedError` when used on a closed service."""

    def __init__(
        self,
        backends: BackendCatalog,
        filters: Sequence[tuple[str, str]],
        *,
        limit: int | None,
        skip: int,
    ) -> None:
        self._backends = backends
        self._filters = list(filters)
        self._limit = limit
        self._skip = skip

    def __aiter__(self) -> AsyncIterator[AsyncRuntimeJob]:
        return self._pages()

    def __await__(self) -> Generator[Any, None, list[AsyncRuntimeJob]]:
        return self._collect().__await__()

    async def _collect(self) -> list[AsyncRuntimeJob]:
        return [job async for job in self._pages()]

    async def _pages(self) -> AsyncIterator[AsyncRuntimeJob]:
        context = self._backends.context
        context.require_open()
        limit, skip = self._limit, self._skip
        collected = 0
        page_limit = limit or PAGE_SIZE
        offset = skip
        while True:
            params: list[tuple[str, str]] = [("exclude_params", "true")]
            params.append(("limit", str(page_limit)))
            if offset:
                params.append(("offset", str(offset)))
            body = await context.api.get_json(p.JOBS, params=params + self._filters)
            page = list(body.get("jobs") or [])
            count = int(body["count"])
            for raw in page:
                yield await job_from_json(raw, self._backends)
            collected += len(page)
            if not page or collected >= count - skip:
                return
            if limit:
                if collected >= limit:
                    return
                page_limit = limit - collected
            else:
                page_limit = PAGE_SIZE
            offset += len(page)
