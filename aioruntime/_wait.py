"""Waiting for jobs to finish: :class:`JobWaits`, the one waiting machinery of a service.

It also defines what "finished" means on the client (:data:`FINAL_STATUSES`,
:func:`job_status_of`), which :mod:`aioruntime.job` shares.

Waiting that scales
-------------------
All waiting goes through the service's :class:`JobWaits`:

* **One waiter per job.** Any number of ``await job`` / ``job.result()`` calls on the same job id
  (even through different handles) share one background waiter task. The waiter is reference
  counted: when the last awaiter leaves (cancelled or timed out) the waiter stops. Stopping a
  waiter never touches the job on the server; only :meth:`AsyncRuntimeJob.cancel` does.
* **Long-poll when the server offers it.** The service probes
  ``GET {runtime_url}/aioruntime/capabilities`` once (IBM answers 404 and the answer is cached).
  When the ``job_wait`` extension is offered, a waiter holds one request open on
  ``/aioruntime/jobs/{id}/wait?timeout=S`` which answers as soon as the job is final.
* **Otherwise poll** ``GET /jobs/{id}?exclude_params=true`` with jittered exponential backoff,
  0.1 s growing by 1.5x to 5 s. The cap grows with the number of waiters
  (``waiters / poll_rate``) so all waiters together stay under ``poll_rate`` polls per second.
* **Bounded.** Every long-poll or poll request first takes a slot of one FIFO
  ``anyio.CapacityLimiter`` (``max_concurrent_waits``, default 64). A long-poll holds its slot at
  most ``wait_slice_s`` (10 s), then goes to the back of the queue, so ten thousand awaited jobs
  mean at most 64 wait requests in flight (and connections used), served round-robin in
  submission order, never ten thousand.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio

from . import protocol as p
from ._http import ApiClient, ClientConfig
from ._tasks import _retrieve
from .errors import ApiError, JobNotFoundError, ServiceClosedError, TransportError

__all__ = ["FINAL_STATUSES", "JobWaits", "WaitStatistics", "job_status_of"]

# Waiting is part of the job subsystem: it logs under the job module's logger.
log = logging.getLogger("aioruntime.job")

#: The official client's final statuses (``RuntimeJobV2.JOB_FINAL_STATES``).
FINAL_STATUSES: Final = frozenset({"DONE", "CANCELLED", "ERROR"})


def job_status_of(job: Mapping[str, Any]) -> tuple[str, str | None, int | None]:
    """``(official status, reason, reason_code)`` of a job body (spec 3.1)."""
    state = job.get("state")
    if not isinstance(state, Mapping) or not isinstance(state.get("status"), str):
        raise TransportError(f"job body without state.status: {str(job)[:200]}")
    raw_code = state.get("reason_code", state.get("reasonCode"))
    code = int(raw_code) if isinstance(raw_code, (int, str)) and str(raw_code).isdigit() else None
    reason = state.get("reason") or None
    return p.client_job_status(state["status"], code), reason, code


@dataclass(frozen=True, slots=True)
class WaitStatistics:
    """A snapshot of the waiting machinery (anyio ``CapacityLimiterStatistics`` style)."""

    #: "long-poll", "poll", or None before the first wait probed the server.
    mode: str | None
    #: Distinct jobs being waited for (one shared waiter each).
    waiters: int
    #: Wait requests in flight / allowed at once.
    slots_busy: int
    slots_total: int
    #: Waiters queued for a slot.
    queued: int
    #: Long-poll or status-poll requests sent so far.
    requests: int


@dataclass(frozen=True, slots=True)
class _Extension:
    path: str
    max_timeout: float
    #: The server can put a completed job's result in the final answer (``include=result``).
    include_result: bool = False


@dataclass(eq=False, slots=True)
class _SharedWait:
    task: asyncio.Task[dict[str, Any]]
    refs: int = 0


class JobWaits:
    """Shared, bounded waiting for jobs to reach a final state (see the module docstring)."""

    def __init__(self, api: ApiClient, config: ClientConfig) -> None:
        self._api = api
        self._config = config
        self._limiter: anyio.CapacityLimiter | None = None
        self._waits: dict[str, _SharedWait] = {}
        self._extension: _Extension | None = None
        self._probed = False
        self._probe_task: asyncio.Task[None] | None = None
        self._closed = False
        self.requests = 0

    async def open(self) -> None:
        self._limiter = anyio.CapacityLimiter(self._config.max_concurrent_waits)

    async def aclose(self) -> None:
        self._closed = True
        tasks: list[asyncio.Task[Any]] = [w.task for w in self._waits.values()]
        if self._probe_task is not None:
            tasks.append(self._probe_task)
        for task in tasks:
            task.cancel()
        # Bounded: the tasks only await HTTP requests, which stop at once when cancelled.
        await asyncio.gather(*tasks, return_exceptions=True)

    def statistics(self) -> WaitStatistics:
        limiter = self._limiter
        stats = limiter.statistics() if limiter is not None else None
        mode = None
        if self._config.job_wait == "poll" or (self._probed and self._extension is None):
            mode = "poll"
        elif self._extension is not None:
            mode = "long-poll"
        return WaitStatistics(
            mode=mode,
            waiters=len(self._waits),
            slots_busy=stats.borrowed_tokens if stats else 0,
            slots_total=int(stats.total_tokens) if stats else self._config.max_concurrent_waits,
            queued=stats.tasks_waiting if stats else 0,
            requests=self.requests,
        )

    async def wait_final(self, job_id: str) -> dict[str, Any]:
        """The job's body once it is final. Shares one waiter per job id.

        Cancelling the caller only detaches it; the waiter stops when no caller is left. The job
        on the server is never touched.
        """
        if self._closed:
            raise ServiceClosedError("The service is closed; it cannot wait for jobs any more.")
        entry = self._waits.get(job_id)
        if entry is None or entry.task.done() or entry.task.cancelling():
            task = asyncio.create_task(self._run(job_id), name=f"aioruntime-wait-{job_id}")
            entry = _SharedWait(task)
            self._waits[job_id] = entry
            task.add_done_callback(functools.partial(self._forget, job_id, entry))
        entry.refs += 1
        try:
            return await asyncio.shield(entry.task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if (current is None or not current.cancelling()) and self._closed:
                # The waiter was stopped by aclose(), not by our caller being cancelled.
                raise ServiceClosedError(
                    f"The service was closed while waiting for job {job_id}."
                ) from None
            raise
        finally:
            entry.refs -= 1
            if entry.refs == 0 and not entry.task.done():
                entry.task.cancel()

    def _forget(self, job_id: str, entry: _SharedWait, task: asyncio.Task[Any]) -> None:
        if self._waits.get(job_id) is entry:
            del self._waits[job_id]
        _retrieve(task)

    async def _run(self, job_id: str) -> dict[str, Any]:
        extension = await self._probe()
        if extension is not None:
            return await self._long_poll(job_id, extension)
        return await self._poll(job_id)

    async def _probe(self) -> _Extension | None:
        """Probe the capabilities once per service (concurrent first waiters share the probe)."""
        if self._config.job_wait == "poll" or self._probed:
            return self._extension
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.create_task(self._fetch_capabilities())
            self._probe_task.add_done_callback(_retrieve)
        await asyncio.shield(self._probe_task)
        return self._extension

    async def _fetch_capabilities(self) -> None:
        try:
            body = await self._api.get_json(p.EXT_CAPABILITIES)
        except ApiError:
            body = None  # real IBM: 404. Any refusal means "no extensions".
        except TransportError:
            self._probe_task = None  # not cached: the next waiter probes again
            raise
        self._extension = _parse_extension(body)
        self._probed = True
        log.debug("job wait mode: %s", "long-poll" if self._extension else "poll")

    def _not_found(self, job_id: str) -> Mapping[int, tuple[type[ApiError], Mapping[str, Any]]]:
        return {404: (JobNotFoundError, {"job_id": job_id})}

    async def _long_poll(self, job_id: str, ext: _Extension) -> dict[str, Any]:
        path = p.path(ext.path, job_id=job_id)
        slice_s = max(0.1, min(self._config.wait_slice_s, ext.max_timeout))
        params = {"timeout": f"{slice_s:g}"}
        if ext.include_result:  # the final answer carries the result: no GET /results after
            params["include"] = "result"
        assert self._limiter is not None
        while True:
            async with self._limiter:
                self.requests += 1
                response = await self._api.request(
                    "GET",
                    path,
                    params=params,
                    read_timeout=slice_s + 30.0,
                    errors=self._not_found(job_id),
                )
            job = response.json()
            if job_status_of(job)[0] in FINAL_STATUSES:
                return dict(job)
            # Not final after one slice: back of the queue (round-robin, see module docstring).

    async def _poll(self, job_id: str) -> dict[str, Any]:
        path = p.path(p.JOB, job_id=job_id)
        delay = self._config.poll_min_s
        assert self._limiter is not None
        while True:
            async with self._limiter:
                self.requests += 1
                job = await self._api.get_json(
                    path, params={"exclude_params": "true"}, errors=self._not_found(job_id)
                )
            if job_status_of(job)[0] in FINAL_STATUSES:
                return dict(job)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            cap = max(self._config.poll_max_s, len(self._waits) / self._config.poll_rate)
            delay = min(delay * 1.5, cap)


def _parse_extension(body: Any) -> _Extension | None:
    try:
        wait = body["extensions"]["job_wait"]
        path = wait["path"]
        max_timeout = float(wait.get("max_timeout", p.EXT_WAIT_MAX_SECONDS))
        include_result = wait.get("include_result") is True
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not isinstance(path, str) or not path.startswith("/") or "{job_id}" not in path:
        return None
    return _Extension(path, max_timeout, include_result)
