"""``AsyncRuntimeJob``, the awaitable job handle, and :class:`JobWaits`, the waiting machinery.

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
import urllib.parse
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio

from . import protocol as p
from ._http import ClientConfig, Transport, _retrieve
from .errors import (
    ApiError,
    InputValueError,
    InvalidStateError,
    JobCancelledError,
    JobFailedError,
    JobMaxTimeoutError,
    JobNotFoundError,
    JobTimeoutError,
    ServiceClosedError,
    TransportError,
)

if TYPE_CHECKING:
    from qiskit.primitives.containers import PrimitiveResult

    from .backend import AsyncBackend
    from .service import AsyncRuntimeService

__all__ = ["FINAL_STATUSES", "AsyncRuntimeJob", "JobWaits", "WaitStatistics"]

log = logging.getLogger("aioruntime.job")

#: The official client's final statuses (``RuntimeJobV2.JOB_FINAL_STATES``).
FINAL_STATUSES: Final = frozenset({"DONE", "CANCELLED", "ERROR"})

_UNSET: Any = object()


def job_status_of(job: Mapping[str, Any]) -> tuple[str, str | None, int | None]:
    """``(official status, reason, reason_code)`` of a job body (spec 3.1)."""
    state = job.get("state")
    if not isinstance(state, Mapping) or not isinstance(state.get("status"), str):
        raise TransportError(f"job body without state.status: {str(job)[:200]}")
    raw_code = state.get("reason_code", state.get("reasonCode"))
    code = int(raw_code) if isinstance(raw_code, (int, str)) and str(raw_code).isdigit() else None
    reason = state.get("reason") or None
    return p.client_job_status(state["status"], code), reason, code


def _job_path(template: str, job_id: str) -> str:
    return template.format(job_id=urllib.parse.quote(job_id, safe=""))


# -- waiting -------------------------------------------------------------------------------------


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


@dataclass(eq=False, slots=True)
class _SharedWait:
    task: asyncio.Task[dict[str, Any]]
    refs: int = 0


class JobWaits:
    """Shared, bounded waiting for jobs to reach a final state (see the module docstring)."""

    def __init__(self, transport: Transport, config: ClientConfig) -> None:
        self._transport = transport
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
            body = await self._transport.get_json(p.EXT_CAPABILITIES)
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
        path = _job_path(ext.path, job_id)
        slice_s = max(0.1, min(self._config.wait_slice_s, ext.max_timeout))
        assert self._limiter is not None
        while True:
            async with self._limiter:
                self.requests += 1
                response = await self._transport.request(
                    "GET",
                    path,
                    params={"timeout": f"{slice_s:g}"},
                    read_timeout=slice_s + 30.0,
                    errors=self._not_found(job_id),
                )
            job = response.json()
            if job_status_of(job)[0] in FINAL_STATUSES:
                return dict(job)
            # Not final after one slice: back of the queue (round-robin, see module docstring).

    async def _poll(self, job_id: str) -> dict[str, Any]:
        path = _job_path(p.JOB, job_id)
        delay = self._config.poll_min_s
        assert self._limiter is not None
        while True:
            async with self._limiter:
                self.requests += 1
                job = await self._transport.get_json(
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
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(path, str) or not path.startswith("/") or "{job_id}" not in path:
        return None
    return _Extension(path, max_timeout)


# -- the job handle ------------------------------------------------------------------------------


class AsyncRuntimeJob:
    """A submitted primitive job.

    ``await job`` is ``await job.result()``. ``done()`` is derived from the last status seen
    (``status() in {"DONE", "CANCELLED", "ERROR"}``); ``await job.status()`` asks the server
    unless the job is already known to be final, like the official ``RuntimeJobV2``.

    Cancelling a task that awaits the job does not cancel the job on the server; call
    :meth:`cancel` for that.
    """

    def __init__(
        self,
        *,
        service: AsyncRuntimeService,
        job_id: str,
        program_id: str,
        backend: AsyncBackend | None = None,
        backend_name: str | None = None,
        session_id: str | None = None,
        tags: list[str] | None = None,
        private: bool = False,
        creation_date: str | None = None,
        image: str | None = None,
    ) -> None:
        self._service = service
        self._job_id = job_id
        self._program_id = program_id
        self._backend = backend
        self._backend_name = backend_name or (backend.name if backend is not None else None)
        self._session_id = session_id
        self._tags = list(tags or [])
        self._private = private
        self._creation_date = creation_date
        self._image = image
        self._status = "INITIALIZING"
        self._reason: str | None = None
        self._reason_code: int | None = None
        self._result: Any = _UNSET
        self._result_lock = asyncio.Lock()

    # -- identity ----------------------------------------------------------------------------

    def job_id(self) -> str:
        return self._job_id

    @property
    def primitive_id(self) -> str:
        return self._program_id

    @property
    def session_id(self) -> str | None:
        """The session or batch the job belongs to (None in job mode)."""
        return self._session_id

    @property
    def tags(self) -> list[str]:
        return list(self._tags)

    @property
    def private(self) -> bool:
        return self._private

    @property
    def creation_date(self) -> str | None:
        """ISO-8601 creation time as the server reported it (None for a job just submitted)."""
        return self._creation_date

    @property
    def image(self) -> str | None:
        return self._image

    @property
    def backend_name(self) -> str | None:
        return self._backend_name

    def backend(self) -> AsyncBackend | None:
        """The backend the job runs on (None if the service could not load it)."""
        return self._backend

    @property
    def last_status(self) -> str:
        """The last status seen, without asking the server ("INITIALIZING" before any)."""
        return self._status

    def done(self) -> bool:
        """True once the job is known to be final (DONE, CANCELLED or ERROR).

        Unlike the official ``RuntimeJobV2.done()`` (true only for DONE), this follows
        ``asyncio.Future.done()``: finished, one way or another. Use ``last_status`` to tell.
        """
        return self._status in FINAL_STATUSES

    def __repr__(self) -> str:
        return (
            f"<AsyncRuntimeJob id={self._job_id!r} program={self._program_id!r} "
            f"backend={self._backend_name!r} status={self._status!r}>"
        )

    # -- state -------------------------------------------------------------------------------

    def _update(self, job: Mapping[str, Any]) -> None:
        status, reason, code = job_status_of(job)
        if self._status in FINAL_STATUSES and status not in FINAL_STATUSES:
            return  # never step back from a final state (e.g. after cancel())
        self._status = status
        if reason:
            self._reason = f"Error code {code}; {reason}" if code is not None else reason
            self._reason_code = code
        if job.get("session_id") and not self._session_id:
            self._session_id = str(job["session_id"])
        if isinstance(job.get("tags"), list):
            self._tags = [str(t) for t in job["tags"]]
        if job.get("created") and not self._creation_date:
            self._creation_date = str(job["created"])
        if job.get("backend") and not self._backend_name:
            self._backend_name = str(job["backend"])

    async def status(self) -> str:
        """The official status name: INITIALIZING, QUEUED, RUNNING, DONE, CANCELLED or ERROR.

        Final statuses are cached; until then each call is one ``GET /jobs/{id}``."""
        if self._status not in FINAL_STATUSES:
            job = await self._service._http.get_json(
                _job_path(p.JOB, self._job_id),
                params={"exclude_params": "true"},
                errors={404: (JobNotFoundError, {"job_id": self._job_id})},
            )
            self._update(job)
        return self._status

    async def wait(self, timeout: float | None = None) -> str:  # noqa: ASYNC109
        """Wait until the job is final and return its status (does not raise for failures).

        Raises :class:`JobTimeoutError` after ``timeout`` seconds; the job keeps running."""
        cm = asyncio.timeout(timeout)
        try:
            async with cm:
                await self._wait_final()
        except TimeoutError:
            if cm.expired():
                raise self._timeout_error(timeout) from None
            raise
        return self._status

    async def _wait_final(self) -> None:
        if self._status not in FINAL_STATUSES:
            self._update(await self._service._waits.wait_final(self._job_id))

    def _timeout_error(self, timeout: float | None) -> JobTimeoutError:
        return JobTimeoutError(
            f"Timed out after {timeout} s waiting for job {self._job_id} (last status "
            f"{self._status}); the job was not cancelled and keeps running.",
            job_id=self._job_id,
            timeout=timeout or 0.0,
        )

    async def result(self, timeout: float | None = None) -> PrimitiveResult:  # noqa: ASYNC109
        """Wait for the job and return its ``PrimitiveResult`` (decoded off the event loop).

        Raises :class:`JobFailedError` / :class:`JobMaxTimeoutError` / :class:`JobCancelledError`
        for unsuccessful jobs, and :class:`JobTimeoutError` when ``timeout`` seconds pass first
        (the job keeps running on the server).
        """
        cm = asyncio.timeout(timeout)
        try:
            async with cm:
                return await self._result_value()
        except TimeoutError:
            if cm.expired():
                raise self._timeout_error(timeout) from None
            raise

    def __await__(self) -> Generator[Any, None, PrimitiveResult]:
        return self.result().__await__()

    async def _result_value(self) -> Any:
        if self._result is not _UNSET:
            return self._result
        await self._wait_final()
        await self._raise_for_outcome()
        async with self._result_lock:  # concurrent awaiters of this handle decode once
            if self._result is _UNSET:
                response = await self._service._http.request(
                    "GET",
                    _job_path(p.JOB_RESULTS, self._job_id),
                    accept_json=False,
                    errors={404: (JobNotFoundError, {"job_id": self._job_id})},
                )
                self._result = await self._service._decode(response.body) if response.body else None
        return self._result

    async def _raise_for_outcome(self) -> None:
        if self._status == "CANCELLED":
            raise JobCancelledError(
                f"Unable to retrieve result for job {self._job_id}. Job was cancelled.",
                job_id=self._job_id,
            )
        if self._status == "ERROR":
            message = self._reason or await self._results_text()
            cls = (
                JobMaxTimeoutError if self._reason_code == p.REASON_RAN_TOO_LONG else JobFailedError
            )
            prefix = "" if cls is JobMaxTimeoutError else "Unable to retrieve job result. "
            raise cls(
                f"{prefix}{message}",
                job_id=self._job_id,
                reason=self._reason,
                reason_code=self._reason_code,
            )

    async def _results_text(self) -> str:
        """The error text the server keeps in ``/results`` for failed jobs (from the last
        ``Traceback`` on, as the official client cuts it)."""
        try:
            response = await self._service._http.request(
                "GET", _job_path(p.JOB_RESULTS, self._job_id), accept_json=False
            )
        except ApiError:
            return ""
        text = response.text()
        index = text.rfind("Traceback")
        return text[index:] if index != -1 else text

    async def error_message(self) -> str | None:
        """Why the job failed (None unless its status is ERROR)."""
        if await self.status() != "ERROR":
            return None
        if self._reason_code == p.REASON_RAN_TOO_LONG:
            return (
                f"Job {self._job_id} ran longer than maximum execution time. "
                f"Job was cancelled:\n{await self._results_text()}"
            )
        return f"Job {self._job_id} has failed:\n{self._reason or await self._results_text()}"

    # -- operations --------------------------------------------------------------------------

    async def cancel(self) -> None:
        """Cancel the job on the server (``POST /jobs/{id}/cancel``).

        Raises :class:`InvalidStateError` when the job is already final (409). Like the official
        client, the local status becomes CANCELLED without re-reading the job."""
        await self._service._http.request(
            "POST",
            _job_path(p.JOB_CANCEL, self._job_id),
            accept_json=False,
            errors={
                404: (JobNotFoundError, {"job_id": self._job_id}),
                409: (InvalidStateError, {"job_id": self._job_id}),
            },
        )
        self._status = "CANCELLED"

    async def metrics(self) -> dict[str, Any]:
        """``GET /jobs/{id}/metrics``: timestamps, usage and more."""
        body = await self._service._http.get_json(
            _job_path(p.JOB_METRICS, self._job_id),
            errors={404: (JobNotFoundError, {"job_id": self._job_id})},
        )
        return dict(body or {})

    async def usage(self, partial: bool = False) -> float:
        """QPU usage in seconds: 0 until the usage is final, unless ``partial``."""
        usage = (await self.metrics()).get("usage") or {}
        if not partial and usage.get("status", "pending") == "pending":
            return 0.0
        return float(usage.get("qpu_charge_time_seconds") or 0.0)

    async def logs(self) -> str:
        """``GET /jobs/{id}/logs`` (an empty string when the server has none)."""
        try:
            response = await self._service._http.request(
                "GET", _job_path(p.JOB_LOGS, self._job_id), accept_json=False
            )
        except ApiError as exc:
            if exc.status == 404:
                return ""
            raise
        return response.text()

    async def inputs(self) -> dict[str, Any]:
        """The job's decoded ``params`` (``GET /jobs/{id}`` with params, decoded off the loop)."""
        response = await self._service._http.request(
            "GET",
            _job_path(p.JOB, self._job_id),
            errors={404: (JobNotFoundError, {"job_id": self._job_id})},
        )
        job = await self._service._decode(response.body)
        params = job.get("params") if isinstance(job, dict) else None
        return dict(params or {})

    async def update_tags(self, new_tags: list[str]) -> list[str]:
        """Replace the job's tags (``PUT /jobs/{id}/tags``, exactly 204) and re-read them."""
        if not isinstance(new_tags, list) or not all(isinstance(t, str) for t in new_tags):
            raise InputValueError("job tags must be a list of strings")
        response = await self._service._http.request(
            "PUT",
            _job_path(p.JOB_TAGS, self._job_id),
            body=p.dumps({"tags": list(dict.fromkeys(new_tags))}),
            accept_json=False,
            errors={404: (JobNotFoundError, {"job_id": self._job_id})},
        )
        if response.status != 204:
            raise ApiError(
                f"Updating the tags of job {self._job_id} answered {response.status}, not 204.",
                status=response.status,
            )
        job = await self._service._http.get_json(
            _job_path(p.JOB, self._job_id), params={"exclude_params": "true"}
        )
        self._tags = [str(t) for t in job.get("tags") or []]
        return list(self._tags)
