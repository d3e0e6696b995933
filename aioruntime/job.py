"""``AsyncRuntimeJob``, the awaitable job handle, and :func:`job_from_json`, which builds one
from a job body of ``GET /jobs/{id}`` or ``GET /jobs``.

A handle does not wait by itself: ``await job``, :meth:`AsyncRuntimeJob.wait` and
:meth:`AsyncRuntimeJob.result` go through its context's :class:`~aioruntime._wait.JobWaits`
(one shared, bounded waiter per job id; long-poll when the server offers it, polling with
backoff otherwise; see :mod:`aioruntime._wait`). Cancelling an awaiter never cancels the job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Mapping
from typing import TYPE_CHECKING, Any

from . import protocol as p
from ._wait import FINAL_STATUSES, JobWaits, WaitStatistics, job_status_of
from .errors import (
    ApiError,
    InputValueError,
    InvalidStateError,
    JobCancelledError,
    JobFailedError,
    JobMaxTimeoutError,
    JobNotFoundError,
    JobTimeoutError,
)

if TYPE_CHECKING:
    from qiskit.primitives.containers import PrimitiveResult

    from ._context import ClientContext
    from .backend import AsyncBackend, BackendCatalog

__all__ = ["FINAL_STATUSES", "AsyncRuntimeJob", "JobWaits", "WaitStatistics", "job_from_json"]

_UNSET: Any = object()


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
        context: ClientContext,
        job_id: str,
        program_id: str,
        backend: AsyncBackend | None = None,
        backend_name: str | None = None,
        session_id: str | None = None,
        tags: list[str] | None = None,
        private: bool = False,
        creation_date: str | None = None,
        image: str | None = None,
        light_result: bool = False,
    ) -> None:
        self._context = context
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
        self._estimate: float | None = None
        self._result: Any = _UNSET
        self._result_lock = asyncio.Lock()
        #: The result text the final wait answer carried, until it is decoded.
        self._result_text: str | None = None
        #: The submitting primitive says the result decodes in about a millisecond (no
        #: post-processing): a small one is decoded in this process, not in the CPU pool.
        self._light_result = light_result

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
        if isinstance(text := job.get(p.EXT_WAIT_RESULT_KEY), str) and self._result is _UNSET:
            self._result_text = text
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
        if isinstance(estimate := job.get("estimated_running_time_seconds"), (int, float)):
            self._estimate = float(estimate)

    async def _refresh(self) -> Mapping[str, Any]:
        """``GET /jobs/{id}`` (without params), folded into this handle."""
        job: Mapping[str, Any] = await self._context.api.get_json(
            p.path(p.JOB, job_id=self._job_id),
            params={"exclude_params": "true"},
            errors={404: (JobNotFoundError, {"job_id": self._job_id})},
        )
        self._update(job)
        return job

    async def status(self) -> str:
        """The official status name: INITIALIZING, QUEUED, RUNNING, DONE, CANCELLED or ERROR.

        Final statuses are cached; until then each call is one ``GET /jobs/{id}``."""
        if self._status not in FINAL_STATUSES:
            await self._refresh()
        return self._status

    async def usage_estimation(self) -> dict[str, Any]:
        """The official ``usage_estimation``: ``{"quantum_seconds": s}``, the server's estimate
        of the time the QPU is dedicated to the job (``estimated_running_time_seconds`` of
        ``GET /jobs/{id}``); ``s`` is None while the server has no estimate yet.

        Any job body seen before (``service.job()``, the wait for the result) already carries
        it, so this often sends nothing. Once known it is kept; unlike the official property,
        an answer without an estimate is not kept, so a later call asks again."""
        if self._estimate is None:
            await self._refresh()
        return {"quantum_seconds": self._estimate}

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
            self._update(await self._context.waits.wait_final(self._job_id))

    def _timeout_error(self, timeout: float | None) -> JobTimeoutError:
        return JobTimeoutError(
            f"Timed out after {timeout} s waiting for job {self._job_id} (last status "
            f"{self._status}); the job was not cancelled and keeps running.",
            job_id=self._job_id,
            timeout=timeout or 0.0,
        )

    async def result(self, timeout: float | None = None) -> PrimitiveResult:  # noqa: ASYNC109
        """Wait for the job and return its ``PrimitiveResult`` (decoded off the event loop; an
        ``Executor`` job gives a ``QuantumProgramResult``, a noise learner's its results).

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
            if self._result is _UNSET and self._result_text is not None:
                # The emulator's wait answered with the result (``include=result``).
                self._result = await self._decode(self._result_text)
                self._result_text = None
            if self._result is _UNSET:
                response = await self._context.api.request(
                    "GET",
                    p.path(p.JOB_RESULTS, job_id=self._job_id),
                    accept_json=False,
                    errors={404: (JobNotFoundError, {"job_id": self._job_id})},
                )
                self._result = await self._decode(response.body) if response.body else None
        return self._result

    async def _decode(self, body: bytes | str) -> Any:
        """The result as the official ``RuntimeJobV2.result()`` decodes it: for ``executor`` and
        ``noise-learner`` jobs the program's decoder chain and post-processing (TREX, ZNE, PEC…)
        in the CPU pool, or in this process (as :meth:`ClientContext.run_small` does) when it
        is small and light; otherwise the ``RuntimeDecoder`` in a thread."""
        from ._context import INLINE_DECODE_BYTES
        from ._executor_work import CLIENT_DECODED_PROGRAMS, decode_result

        if self._program_id in CLIENT_DECODED_PROGRAMS:
            if self._light_result and len(body) <= INLINE_DECODE_BYTES:
                return await self._context.run_small(True, decode_result, self._program_id, body)
            return await self._context.run_cpu(decode_result, self._program_id, body)
        return await self._context.decode(body)

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
            response = await self._context.api.request(
                "GET", p.path(p.JOB_RESULTS, job_id=self._job_id), accept_json=False
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
        await self._context.api.request(
            "POST",
            p.path(p.JOB_CANCEL, job_id=self._job_id),
            accept_json=False,
            errors={
                404: (JobNotFoundError, {"job_id": self._job_id}),
                409: (InvalidStateError, {"job_id": self._job_id}),
            },
        )
        self._status = "CANCELLED"

    async def metrics(self) -> dict[str, Any]:
        """``GET /jobs/{id}/metrics``: timestamps, usage and more."""
        body = await self._context.api.get_json(
            p.path(p.JOB_METRICS, job_id=self._job_id),
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
            response = await self._context.api.request(
                "GET", p.path(p.JOB_LOGS, job_id=self._job_id), accept_json=False
            )
        except ApiError as exc:
            if exc.status == 404:
                return ""
            raise
        return response.text()

    async def inputs(self) -> dict[str, Any]:
        """The job's decoded ``params`` (``GET /jobs/{id}`` with params, decoded off the loop)."""
        response = await self._context.api.request(
            "GET",
            p.path(p.JOB, job_id=self._job_id),
            errors={404: (JobNotFoundError, {"job_id": self._job_id})},
        )
        job = await self._context.decode(response.body)
        params = job.get("params") if isinstance(job, dict) else None
        return dict(params or {})

    async def update_tags(self, new_tags: list[str]) -> list[str]:
        """Replace the job's tags (``PUT /jobs/{id}/tags``, exactly 204) and re-read them."""
        if not isinstance(new_tags, list) or not all(isinstance(t, str) for t in new_tags):
            raise InputValueError("job tags must be a list of strings")
        response = await self._context.api.request(
            "PUT",
            p.path(p.JOB_TAGS, job_id=self._job_id),
            body=p.dumps({"tags": list(dict.fromkeys(new_tags))}),
            accept_json=False,
            errors={404: (JobNotFoundError, {"job_id": self._job_id})},
        )
        if response.status != 204:
            raise ApiError(
                f"Updating the tags of job {self._job_id} answered {response.status}, not 204.",
                status=response.status,
            )
        job = await self._refresh()
        self._tags = [str(t) for t in job.get("tags") or []]
        return list(self._tags)


async def job_from_json(raw: Mapping[str, Any], backends: BackendCatalog) -> AsyncRuntimeJob:
    """A handle for the job body ``raw`` (from ``GET /jobs/{id}`` or a ``GET /jobs`` page), with
    its backend loaded through ``backends`` (None when the backend is gone, as for a job on a
    retired device), and its state when the body carries one."""
    program = raw.get("program")
    backend_name = raw.get("backend")
    job = AsyncRuntimeJob(
        context=backends.context,
        job_id=str(raw["id"]),
        program_id=str(program.get("id", "")) if isinstance(program, Mapping) else "",
        backend=await backends.get_or_none(backend_name),
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
