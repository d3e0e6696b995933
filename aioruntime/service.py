"""``AsyncRuntimeService``: the entry point, and the public facade over what it owns.

It owns one :class:`~aioruntime._context.ClientContext` (transport, IAM token, waiters, codec
runner, lifecycle) and one :class:`~aioruntime.backend.BackendCatalog`. Everything it hands out
(backends, jobs, and through them sessions and primitives) holds that context, never the
service: no handle calls back into this module.

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
* ``jobs()`` is awaitable (a list, as the official one) and also async-iterable, fetching
  pages as it goes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

from . import protocol as p
from ._context import ClientContext, ServiceState
from ._cpu import CpuStatistics
from ._http import ClientConfig, TransportStatistics
from ._listing import JobList, job_filters
from ._transport import AsyncTransport
from ._wait import WaitStatistics
from .backend import AsyncBackend, BackendCatalog
from .errors import JobNotFoundError
from .job import AsyncRuntimeJob, job_from_json

__all__ = ["AsyncBackend", "AsyncRuntimeService", "ServiceState", "ServiceStatistics"]


@dataclass(frozen=True, slots=True)
class ServiceStatistics:
    state: ServiceState
    transport: TransportStatistics
    waits: WaitStatistics
    backends_cached: int
    #: The CPU pool of the executor primitives' preparation and post-processing.
    cpu: CpuStatistics


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

    ``cpu_pool="process"`` (default) or ``"thread"`` and ``cpu_workers=N`` (0: the cores, at
    most 4): where and how wide the executor primitives' client-side preparation and
    post-processing run (``aioruntime/_cpu.py``; the workers stop with the service).
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
        config = ClientConfig.build(
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
        self._context = ClientContext(config, transport)
        self._backends = BackendCatalog(self._context, self)

    def __repr__(self) -> str:
        return (
            f"<AsyncRuntimeService url={self.url!r} "
            f"instance={self.instance!r} state={self.state.value}>"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def config(self) -> ClientConfig:
        return self._context.config

    @property
    def context(self) -> ClientContext:
        """What this service's handles (backends, sessions, primitives, jobs) use of it: the
        transport, the waiters, the codec runner. Not needed in application code."""
        return self._context

    @property
    def state(self) -> ServiceState:
        return self._context.state

    @property
    def url(self) -> str:
        return self.config.runtime_url

    @property
    def instance(self) -> str:
        return self.config.instance

    async def open(self) -> AsyncRuntimeService:
        """Open the service and return it, so ``service = await AsyncRuntimeService(...).open()``
        works (then ``await service.aclose()`` when done). Idempotent while open; raises
        :class:`ServiceClosedError` once closed (a closed service cannot reopen)."""
        await self._context.open()
        return self

    async def aclose(self) -> None:
        """Stop all waiters (jobs keep running on the server) and close the pool. Idempotent."""
        await self._context.aclose()

    async def __aenter__(self) -> AsyncRuntimeService:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def statistics(self) -> ServiceStatistics:
        return ServiceStatistics(
            state=self.state,
            transport=self._context.api.statistics(),
            waits=self._context.waits.statistics(),
            backends_cached=len(self._backends),
            cpu=self._context.cpu_statistics(),
        )

    # -- backends ----------------------------------------------------------------------------

    async def backends(
        self,
        name: str | None = None,
        *,
        min_num_qubits: int | None = None,
        include_mocks: bool = False,
    ) -> list[AsyncBackend]:
        """Every backend of the instance (mock devices only with ``include_mocks``), loaded
        concurrently, each with its Target."""
        return await self._backends.all(
            name, min_num_qubits=min_num_qubits, include_mocks=include_mocks
        )

    async def backend(self, name: str) -> AsyncBackend:
        """The backend ``name``, with its Target. Raises :class:`BackendNotFoundError`."""
        return await self._backends.get(name)

    async def least_busy(
        self,
        min_num_qubits: int | None = None,
        *,
        filters: Callable[[AsyncBackend], bool] | None = None,
    ) -> AsyncBackend:
        """The operational backend with the fewest pending jobs, as the official
        ``least_busy`` decides (see :meth:`BackendCatalog.least_busy`). Raises
        :class:`BackendNotFoundError` when no backend matches."""
        return await self._backends.least_busy(min_num_qubits, filters)

    # -- jobs --------------------------------------------------------------------------------

    async def job(self, job_id: str) -> AsyncRuntimeJob:
        """``GET /jobs/{id}``, with the job's backend. Raises :class:`JobNotFoundError`."""
        self._context.require_open()
        raw = await self._context.api.get_json(
            p.path(p.JOB, job_id=job_id),
            params={"exclude_params": "true"},
            errors={404: (JobNotFoundError, {"job_id": job_id})},
        )
        return await job_from_json(raw, self._backends)

    def jobs(
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
    ) -> JobList:
        """The official filters. ``await service.jobs(...)`` is a ``list``, as the official
        ``jobs()``; ``async for job in service.jobs(...)`` fetches pages as it goes.
        ``limit=None`` means every matching job (20 per page). Each job comes with its backend.

        Raises :class:`InputValueError` here, at the call, for bad arguments; naive datetimes
        are local time, as in the official client."""
        filters = job_filters(
            limit=limit,
            skip=skip,
            backend_name=backend_name,
            pending=pending,
            program_id=program_id,
            job_tags=job_tags,
            session_id=session_id,
            created_after=created_after,
            created_before=created_before,
            descending=descending,
            include_mocks=include_mocks,
        )
        return JobList(self._backends, filters, limit=limit, skip=skip)

    async def delete_job(self, job_id: str) -> None:
        """``DELETE /jobs/{id}``. Raises :class:`JobNotFoundError`."""
        self._context.require_open()
        await self._context.api.request(
            "DELETE",
            p.path(p.JOB, job_id=job_id),
            accept_json=False,
            errors={404: (JobNotFoundError, {"job_id": job_id})},
        )

    async def usage(self) -> dict[str, Any]:
        """``GET /instances/usage``, with ``usage_remaining_seconds`` added as the official
        client adds it."""
        self._context.require_open()
        usage = dict(await self._context.api.get_json(p.INSTANCES_USAGE) or {})
        limit = usage.get("usage_limit_seconds") or usage.get("usage_allocation_seconds")
        if limit:
            usage["usage_remaining_seconds"] = max(
                float(limit) - float(usage.get("usage_consumed_seconds") or 0), 0
            )
        return usage
