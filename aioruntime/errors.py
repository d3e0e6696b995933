"""Every exception aioruntime raises, in one tree.

Four families that never mix: the request got no HTTP answer (:class:`TransportError`); the
server answered with an error status (:class:`ApiError`, carrying the HTTP status and the IBM
error code); a job ended without a result, or waiting for it gave up (:class:`JobError`,
carrying the job id); or the caller misused the API and nothing was sent (:class:`UsageError`).
Apart from them, :class:`WorkerDiedError`: a client worker process died while it prepared or
post-processed a job (the executor primitives' CPU work, see ``aioruntime/_cpu.py``)::

    AioRuntimeError
    ├── TransportError                  no usable HTTP answer (connect, reset, bad body)
    │   ├── ConnectError                    no connection was made; nothing was sent
    │   ├── ConnectionLostError             the connection broke; the request may have arrived
    │   └── RequestTimeoutError             a per-request timeout expired  (also TimeoutError)
    ├── ApiError                        the server answered 4xx/5xx: .status .code .message
    │   ├── BadRequestError                 400 and other 4xx without a class of their own
    │   ├── NotAuthorizedError              401, or IAM refused the API key
    │   ├── NotFoundError                   404
    │   │   ├── BackendNotFoundError            .backend_name
    │   │   ├── JobNotFoundError                .job_id
    │   │   ├── SessionNotFoundError            .session_id
    │   │   └── ProgramNotFoundError            POST /jobs answered 404
    │   ├── InvalidStateError               409, e.g. cancelling a job that is already final
    │   ├── RateLimitError                  429: .retry_after
    │   └── ServerError                     5xx, after the retries ran out
    ├── UsageError                      misuse caught client-side; no request was sent
    │   ├── InputValueError                 a bad argument  (also ValueError)
    │   └── ClosedError                     the service or session is closed
    │       ├── ServiceClosedError
    │       └── SessionClosedError
    ├── JobError                        the job's outcome: .job_id
    │   ├── JobFailedError                  Failed (or ERROR): .reason .reason_code
    │   │   └── JobMaxTimeoutError              ran longer than max_execution_time (1305)
    │   ├── JobCancelledError               the job was cancelled; it has no result
    │   └── JobTimeoutError                 result(timeout=...) expired; the job keeps running
    │                                       (also TimeoutError)
    └── WorkerDiedError                 a client worker process died during a call (also
                                        RuntimeError); a job being prepared was not sent

How they line up with ``qiskit_ibm_runtime.exceptions`` (0.51.0):

=============================  ===================================================
aioruntime                     official client
=============================  ===================================================
``NotAuthorizedError``         ``IBMNotAuthorizedError``
``JobNotFoundError``           ``RuntimeJobNotFound``
``BackendNotFoundError``       ``QiskitBackendNotFoundError``
``ProgramNotFoundError``       ``RuntimeProgramNotFound``
``InvalidStateError``          ``RuntimeInvalidStateError`` (cancel of a final job)
``JobCancelledError``          ``RuntimeInvalidStateError`` (result of a cancelled job)
``JobFailedError``             ``RuntimeJobFailureError``
``JobMaxTimeoutError``         ``RuntimeJobMaxTimeoutError``
``JobTimeoutError``            ``RuntimeJobTimeoutError``
``InputValueError``            ``IBMInputValueError``
``SessionClosedError``         ``IBMRuntimeError("The session is closed.")``
``ApiError`` (other statuses)  ``RequestsApiError`` / ``IBMRuntimeError``
=============================  ===================================================

Cancellation is never wrapped: ``asyncio.CancelledError`` always propagates as itself.
"""

from __future__ import annotations

__all__ = [
    "AioRuntimeError",
    "ApiError",
    "BackendNotFoundError",
    "BadRequestError",
    "ClosedError",
    "ConnectError",
    "ConnectionLostError",
    "InputValueError",
    "InvalidStateError",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobMaxTimeoutError",
    "JobNotFoundError",
    "JobTimeoutError",
    "NotAuthorizedError",
    "NotFoundError",
    "ProgramNotFoundError",
    "RateLimitError",
    "RequestTimeoutError",
    "ServerError",
    "ServiceClosedError",
    "SessionClosedError",
    "SessionNotFoundError",
    "TransportError",
    "UsageError",
    "WorkerDiedError",
    "api_error_class",
]


class AioRuntimeError(Exception):
    """Base of every exception aioruntime raises."""


# -- transport -----------------------------------------------------------------------------------


class TransportError(AioRuntimeError):
    """The request got no usable HTTP answer (connection refused or reset, unreadable body)."""

    def __init__(self, message: str, *, method: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.method = method
        self.url = url


class ConnectError(TransportError):
    """No connection could be made (refused, DNS failure, unreachable network): nothing was
    sent, so any request may be sent again. Raised at once when the server was never reached."""


class ConnectionLostError(TransportError):
    """The connection broke after the request was sent, or while the answer was read: the
    server may have acted on it. Only idempotent requests are sent again."""


class RequestTimeoutError(TransportError, TimeoutError):
    """A single HTTP request timed out (connect or read)."""


# -- server-reported -----------------------------------------------------------------------------


class ApiError(AioRuntimeError):
    """The server answered with an error status.

    ``status`` is the HTTP status; ``code`` the IBM error code from the error body
    (``errors[0].code``, e.g. 1291), or None when the body had none.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: int | None = None,
        method: str | None = None,
        url: str | None = None,
        body: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.method = method
        self.url = url
        self.body = body

    def __str__(self) -> str:
        code = f", IBM error code {self.code}" if self.code is not None else ""
        where = f" ({self.method} {self.url})" if self.method and self.url else ""
        return f"{self.message} [HTTP {self.status}{code}]{where}"


class BadRequestError(ApiError):
    """400, and other 4xx statuses without a class of their own."""


class NotAuthorizedError(ApiError):
    """401 from the Runtime API, or IAM refused the API key."""


class NotFoundError(ApiError):
    """404."""


class BackendNotFoundError(NotFoundError):
    def __init__(self, message: str, *, backend_name: str, **kw: object) -> None:
        kw.setdefault("status", 404)
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.backend_name = backend_name


class JobNotFoundError(NotFoundError):
    def __init__(self, message: str, *, job_id: str, **kw: object) -> None:
        kw.setdefault("status", 404)
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.job_id = job_id


class SessionNotFoundError(NotFoundError):
    def __init__(self, message: str, *, session_id: str, **kw: object) -> None:
        kw.setdefault("status", 404)
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.session_id = session_id


class ProgramNotFoundError(NotFoundError):
    """``POST /jobs`` answered 404 (unknown program id)."""


class InvalidStateError(ApiError):
    """409: the resource's state forbids the operation (cancelling a final job, reopening a
    closed session, a job sent to a session that no longer accepts jobs)."""

    def __init__(self, message: str, *, job_id: str | None = None, **kw: object) -> None:
        kw.setdefault("status", 409)
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.job_id = job_id


class RateLimitError(ApiError):
    """429. ``retry_after`` is the server's ``Retry-After`` in seconds, when it sent one."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        kw.setdefault("status", 429)
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ServerError(ApiError):
    """5xx, after the transport's retries ran out."""


def api_error_class(status: int) -> type[ApiError]:
    """The generic class for an HTTP error status."""
    if status == 401:
        return NotAuthorizedError
    if status == 404:
        return NotFoundError
    if status == 409:
        return InvalidStateError
    if status == 429:
        return RateLimitError
    if status >= 500:
        return ServerError
    return BadRequestError


# -- client-side misuse --------------------------------------------------------------------------


class UsageError(AioRuntimeError):
    """The API was misused; the problem was caught before any request was sent."""


class InputValueError(UsageError, ValueError):
    """An argument is invalid (bad ``max_time``, PUB, option or filter)."""


class ClosedError(UsageError):
    """The object is closed (or not open yet) and cannot do that any more."""


class ServiceClosedError(ClosedError):
    """The :class:`~aioruntime.AsyncRuntimeService` is not open."""


class SessionClosedError(ClosedError):
    """The session or batch was closed or cancelled; it takes no new jobs."""

    def __init__(self, message: str, *, session_id: str | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id


# -- job outcomes --------------------------------------------------------------------------------


class JobError(AioRuntimeError):
    """A job ended without a result, or waiting for it gave up."""

    def __init__(self, message: str, *, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobFailedError(JobError):
    """The job failed. ``reason`` and ``reason_code`` are the server's ``state.reason`` and
    ``state.reason_code`` (e.g. 1002 for a validation error)."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str,
        reason: str | None = None,
        reason_code: int | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id)
        self.reason = reason
        self.reason_code = reason_code


class JobMaxTimeoutError(JobFailedError):
    """The job ran longer than its ``max_execution_time`` and was stopped (reason code 1305).

    Its status is ``ERROR``, as in the official client."""


class JobCancelledError(JobError):
    """The job was cancelled, so it has no result."""


class JobTimeoutError(JobError, TimeoutError):
    """``result(timeout=...)`` expired. The job was **not** cancelled; it keeps running."""

    def __init__(self, message: str, *, job_id: str, timeout: float) -> None:
        super().__init__(message, job_id=job_id)
        self.timeout = timeout


# -- the client's own worker processes -----------------------------------------------------------


class WorkerDiedError(AioRuntimeError, RuntimeError):
    """A worker process of the client died while it ran a call (killed, out of memory, a crash
    in native code). Only that call fails; the pool starts a fresh worker for the next one.
    When the call was a job's preparation, nothing was submitted."""
