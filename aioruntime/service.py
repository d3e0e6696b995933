"""``AsyncRuntimeService``: the entry point. Owns the HTTP connection pool, the IAM token, the
waiting machinery and a cache of backends (:class:`~aioruntime.backend.AsyncBackend`, loaded by
:mod:`aioruntime.backend`).

Usage::

    async with AsyncRuntimeService(url=..., token=..., instance=...) as service:
        backend = await service.backend("ibm_fez")
        isa = generate_preset_pass_manager(target=backend.target).run(circuit)
        job = await AsyncSamplerV2(mode=backend).run([isa])
        result = await job

Differences from the official ``QiskitRuntimeService`` (0.51.0), and why:

* The runtime URL is used verbatim (no region resolver rewriting it), and the instance must be a
  CRN: there is no IBM Cloud Global Search / Catalog lookup. Without ``url`` the regional IBM URL
  of the CRN is used (what the official resolver would build).
* Backends are cached per service once loaded (the official client re-lists ``/backends`` on
  every ``backend()`` call but caches configurations); the first ``backend(name)`` lists
  ``/backends``, then reads ``/configuration`` and ``/properties`` and builds the ``Target`` off
  the event loop.
* ``jobs()`` is an async iterator that fetches pages lazily.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread

from . import protocol as p
from ._http import ApiClient, ClientConfig, TransportStatistics
from ._tasks import _retrieve
from ._transport import AsyncTransport
from ._wait import JobWaits, WaitStatistics
from .backend import AsyncBackend, load_backend
from .errors import (
    BackendNotFoundError,
    InputValueError,
    JobNotFoundError,
    ServiceClosedError,
    SessionNotFoundError,
)
from .job import AsyncRuntimeJob

__all__ = ["AsyncBackend", "AsyncRuntimeService", "ServiceState", "ServiceStatistics"]

log = logging.getLogger("aioruntime.service")

T = TypeVar("T")

#: Longest a clean-up request (session close on exit, …) may delay the caller.
CLEANUP_TIMEOUT_S = 15.0


class ServiceState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ServiceStatistics:
    state: ServiceState
    transport: TransportStatistics
    waits: WaitStatistics
    backends_cached: int


class AsyncRuntimeService:
    """An asyncio client for the Qiskit Runtime REST API, as an async context manager.

    Arguments fall back to the environment variables the official client reads:
    ``QISKIT_IBM_TOKEN`` (API key), ``QISKIT_IBM_URL`` (runtime URL, used verbatim, e.g.
    ``http://127.0.0.1:8765/api/v1``), ``QISKIT_IBM_INSTANCE`` (instance CRN) and ``IAM_URL``.

    ``transport``: where requests go (an :class:`~aioruntime._transport.AsyncTransport`); by
    default one ``aiohttp.ClientSession``, i.e. one connection pool for everything made from
    this service (backends, sessions, primitives, jobs). The service closes it in
    :meth:`aclose`. Methods raise :class:`ServiceClosedError` before :meth:`open` /
    ``async with`` and after :meth:`aclose`.
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        token: str | None = None,
        instance: str | None = None,
        iam_url: str | None = None,
        max_connections: int = 100,
        max_concurrent_waits: int = 64,
        wait_slice_s: float = 10.0,
        job_wait: Literal["auto", "poll"] = "auto",
        poll_rate: float = 20.0,
        preflight_checks: bool = False,
        environ: Mapping[str, str] | None = None,
        transport: AsyncTransport | None = None,
        **options: Any,
    ) -> None:
        self._config = ClientConfig.build(
            url=url,
            token=token,
            instance=instance,
            iam_url=iam_url,
            environ=environ,
            max_connections=max_connections,
            max_concurrent_waits=max_concurrent_waits,
            wait_slice_s=wait_slice_s,
            job_wait=job_wait,
            poll_rate=poll_rate,
            preflight_checks=preflight_checks,
            **options,
        )
        self._http = ApiClient(self._config, transport)
        self._waits = JobWaits(self._http, self._config)
        self._state = ServiceState.UNOPENED
        self._backends: dict[str, AsyncBackend] = {}
        self._backend_locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._codec_limiter: anyio.CapacityLimiter | None = None

    def __repr__(self) -> str:
        return (
            f"<AsyncRuntimeService url={self._config.runtime_url!r} "
            f"instance={self._config.instance!r} state={self._state.value}>"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def config(self) -> ClientConfig:
        return self._config

    @property
    def state(self) -> ServiceState:
        return self._state

    @property
    def url(self) -> str:
        return self._config.runtime_url

    @property
    def instance(self) -> str:
        return self._config.instance

    async def open(self) -> None:
        """Open the connection pool. Idempotent while open; a closed service cannot reopen."""
        if self._state is ServiceState.OPEN:
            return
        if self._state is ServiceState.CLOSED:
            raise ServiceClosedError(
                "This AsyncRuntimeService was closed and cannot be reopened; create a new one."
            )
        self._codec_limiter = anyio.CapacityLimiter(max(2, min(4, os.cpu_count() or 2)))
        await self._http.open()
        await self._waits.open()
        self._state = ServiceState.OPEN

    async def aclose(self) -> None:
        """Stop all waiters (jobs keep running on the server) and close the pool. Idempotent."""
        if self._state is not ServiceState.OPEN:
            self._state = ServiceState.CLOSED
            return
        self._state = ServiceState.CLOSED
        try:
            await self._waits.aclose()
            if self._background:
                _, pending = await asyncio.wait(set(self._background), timeout=CLEANUP_TIMEOUT_S)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending)
        finally:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncRuntimeService:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _require_open(self) -> None:
        if self._state is ServiceState.UNOPENED:
            raise ServiceClosedError(
                "The AsyncRuntimeService is not open yet: use "
                "`async with AsyncRuntimeService(...) as service:` or `await service.open()`."
            )
        if self._state is ServiceState.CLOSED:
            raise ServiceClosedError("The AsyncRuntimeService has been closed.")

    def statistics(self) -> ServiceStatistics:
        return ServiceStatistics(
            state=self._state,
            transport=self._http.statistics(),
            waits=self._waits.statistics(),
            backends_cached=len(self._backends),
        )

    # -- helpers shared with sessions, primitives and jobs ------------------------------------

    async def _to_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-bound work (codec, target building) in a worker thread, off the event loop."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._codec_limiter)

    async def _decode(self, body: bytes | str) -> Any:
        """``protocol.loads`` (the official RuntimeDecoder) in a worker thread."""
        return await self._to_thread(p.loads, body)

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_retrieve)
        return task

    async def _cleanup(self, coro: Coroutine[Any, Any, Any], *, what: str, suppress: bool) -> None:
        """Run a clean-up request to completion even while the caller is being cancelled, for at
        most ``CLEANUP_TIMEOUT_S``. Cancellation of the caller is re-raised (the request goes on
        in the background until :meth:`aclose`). With ``suppress``, failures are logged instead
        of raised (used when another exception is already propagating)."""
        task = self._spawn(coro)
        timeout = asyncio.timeout(CLEANUP_TIMEOUT_S)
        try:
            async with timeout:
                await asyncio.shield(task)
        except TimeoutError:
            if not timeout.expired():
                if suppress:
                    log.warning("%s failed", what, exc_info=True)
                    return
                raise
            task.cancel()
            log.warning("%s did not finish within %s s; abandoned", what, CLEANUP_TIMEOUT_S)
            if not suppress:
                raise
        except Exception:
            if not suppress:
                raise
            log.warning("%s failed", what, exc_info=True)

    # -- backends ----------------------------------------------------------------------------

    async def _devices(self) -> list[dict[str, Any]]:
        self._require_open()
        body = await self._http.get_json(p.BACKENDS, params={"include_mocks": "True"})
        devices = (body or {}).get("devices") or []
        return [d for d in devices if isinstance(d, dict) and isinstance(d.get("name"), str)]

    async def backends(
        self,
        name: str | None = None,
        *,
        min_num_qubits: int | None = None,
        include_mocks: bool = False,
    ) -> list[AsyncBackend]:
        """Every backend of the instance (mock devices only with ``include_mocks``), loaded
        concurrently, each with its Target."""
        devices = await self._devices()
        if name is not None:
            devices = [d for d in devices if d["name"] == name]
        elif not include_mocks:
            devices = [d for d in devices if d.get("class") != "mock"]
        loaded = await asyncio.gather(*(self._backend_from(d) for d in devices))
        if min_num_qubits is not None:
            loaded = [b for b in loaded if b.num_qubits >= min_num_qubits]
        return list(loaded)

    async def backend(self, name: str) -> AsyncBackend:
        """The backend ``name``, with its Target. Raises :class:`BackendNotFoundError`."""
        self._require_open()
        if (cached := self._backends.get(name)) is not None:
            return cached
        devices = await self._devices()
        summary = next((d for d in devices if d["name"] == name), None)
        if summary is None:
            raise BackendNotFoundError(
                f"No backend named {name!r} for instance {self.instance}; available: "
                f"{', '.join(sorted(d['name'] for d in devices)) or 'none'}.",
                backend_name=name,
            )
        return await self._backend_from(summary)

    async def _backend_from(self, summary: Mapping[str, Any]) -> AsyncBackend:
        name = str(summary["name"])
        if (cached := self._backends.get(name)) is not None:
            return cached
        lock = self._backend_locks.setdefault(name, asyncio.Lock())
        async with lock:  # concurrent first uses of one backend load it once
            if (cached := self._backends.get(name)) is not None:
                return cached
            backend = await load_backend(self, summary)
            self._backends[name] = backend
            return backend

    async def _backend_or_none(self, name: str | None) -> AsyncBackend | None:
        if not name:
            return None
        try:
            return await self.backend(name)
        except BackendNotFoundError:
            return None  # a retired backend: the job is still usable

    # -- jobs --------------------------------------------------------------------------------

    async def _job_from_json(self, raw: Mapping[str, Any]) -> AsyncRuntimeJob:
        program = raw.get("program")
        backend_name = raw.get("backend")
        job = AsyncRuntimeJob(
            service=self,
            job_id=str(raw["id"]),
            program_id=str(program.get("id", "")) if isinstance(program, Mapping) else "",
            backend=await self._backend_or_none(backend_name),
            backend_name=backend_name,
            session_id=raw.get("session_id"),
            tags=list(raw.get("tags") or []),
            private=bool(raw.get("private", False)),
            creation_date=raw.get("created"),
            image=raw.get("runtime"),
        )
        if isinstance(raw.get("state"), Mapping):
            job._update(raw)
        return job

    async def job(self, job_id: str) -> AsyncRuntimeJob:
        """``GET /jobs/{id}``. Raises :class:`JobNotFoundError`."""
        self._require_open()
        raw = await self._http.get_json(
            p.path(p.JOB, job_id=job_id),
            params={"exclude_params": "true"},
            errors={404: (JobNotFoundError, {"job_id": job_id})},
        )
        return await self._job_from_json(raw)

    async def jobs(
        self,
        limit: int | None = 10,
        skip: int = 0,
        backend_name: str | None = None,
        pending: bool | None = None,
        program_id: str | None = None,
        job_tags: list[str] | None = None,
        session_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        descending: bool = True,
        include_mocks: bool = False,
    ) -> AsyncIterator[AsyncRuntimeJob]:
        """``async for job in service.jobs(...)``: the official filters, pages fetched lazily
        (``limit=None`` means every matching job, 20 per page). Naive datetimes are local time,
        as in the official client."""
        from qiskit_ibm_runtime.utils import local_to_utc

        self._require_open()
        if job_tags is not None and (
            not isinstance(job_tags, list) or not all(isinstance(t, str) for t in job_tags)
        ):
            raise InputValueError("job_tags needs to be a list of strings.")
        if (limit is not None and limit < 0) or skip < 0:
            raise InputValueError("limit and skip must not be negative")
        collected = 0
        page_limit = limit or 20
        offset = skip
        while True:
            params: list[tuple[str, str]] = [("exclude_params", "true")]
            if page_limit:
                params.append(("limit", str(page_limit)))
            if offset:
                params.append(("offset", str(offset)))
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
            body = await self._http.get_json(p.JOBS, params=params)
            page = list(body.get("jobs") or [])
            count = int(body["count"])
            for raw in page:
                yield await self._job_from_json(raw)
            collected += len(page)
            if not page or collected >= count - skip:
                return
            if limit:
                if collected >= limit:
                    return
                page_limit = limit - collected
            else:
                page_limit = 20
            offset += len(page)

    async def delete_job(self, job_id: str) -> None:
        """``DELETE /jobs/{id}``. Raises :class:`JobNotFoundError`."""
        self._require_open()
        await self._http.request(
            "DELETE",
            p.path(p.JOB, job_id=job_id),
            accept_json=False,
            errors={404: (JobNotFoundError, {"job_id": job_id})},
        )

    async def usage(self) -> dict[str, Any]:
        """``GET /instances/usage``, with ``usage_remaining_seconds`` added as the official
        client adds it."""
        self._require_open()
        usage = dict(await self._http.get_json(p.INSTANCES_USAGE) or {})
        limit = usage.get("usage_limit_seconds") or usage.get("usage_allocation_seconds")
        if limit:
            usage["usage_remaining_seconds"] = max(
                float(limit) - float(usage.get("usage_consumed_seconds") or 0), 0
            )
        return usage

    async def _preflight(self, backend: AsyncBackend) -> None:
        """The official client's checks before every job (only with ``preflight_checks``)."""
        usage, status = await asyncio.gather(self.usage(), backend.status())
        if usage.get("usage_limit_reached"):
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

    async def _session_details(self, session_id: str) -> dict[str, Any]:
        self._require_open()
        body = await self._http.get_json(
            p.path(p.SESSION, session_id=session_id),
            errors={404: (SessionNotFoundError, {"session_id": session_id})},
        )
        return dict(body or {})
