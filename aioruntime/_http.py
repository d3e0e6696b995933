"""Transport and authentication: the only module that touches HTTP.

* :class:`ClientConfig` is the one frozen configuration, built once at the edge from arguments
  and the environment variables the official client reads (nothing else in aioruntime reads
  ``os.environ``).
* :class:`TokenManager` trades the API key for an IAM bearer token (spec 2.2 A) and refreshes it
  at 80 % of its lifetime. There is never more than one refresh in flight: callers arriving while
  the current token is still valid keep using it and the refresh runs in the background;
  callers arriving without a usable token all await the same refresh.
* :class:`Transport` owns the one ``aiohttp.ClientSession`` (one connection pool) of a service,
  adds the headers the official client sends (spec 1.3), retries like it does (spec 1.4: 5xx in
  the force list and connection failures, POST included, exponential backoff) and turns every
  failure into the :mod:`aioruntime.errors` tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import aiohttp
import jwt

from . import protocol as p
from .errors import (
    ApiError,
    InputValueError,
    NotAuthorizedError,
    RateLimitError,
    RequestTimeoutError,
    ServiceClosedError,
    TransportError,
    api_error_class,
)

__all__ = [
    "VERSION",
    "ClientConfig",
    "Response",
    "TokenManager",
    "Transport",
    "TransportStatistics",
]

log = logging.getLogger("aioruntime.http")

VERSION: Final = "0.1.0"

#: Statuses the official client retries, POST included (``api/session.py: STATUS_FORCELIST``).
RETRY_STATUSES: Final = frozenset({500, 502, 503, 504, 520, 521, 522, 524})

DEFAULT_IAM_URL: Final = "https://iam.cloud.ibm.com"
STAGING_IAM_URL: Final = "https://iam.test.cloud.ibm.com"
IAM_TIMEOUT_S: Final = 60.0  # the ibm-cloud-sdk-core default

Params = Sequence[tuple[str, str]] | Mapping[str, str] | None
ErrorMap = Mapping[int, tuple[type[ApiError], Mapping[str, Any]]]


def _client_application(environ: Mapping[str, str]) -> str:
    """The ``X-Qx-Client-Application`` telemetry header, in the official client's format."""
    if environ.get("USAGE_DATA_OPT_OUT", "False") == "True":
        return f"aioruntime-{VERSION}"
    parts = [f"aioruntime-{VERSION}"]
    for dist in ("qiskit_ibm_runtime", "qiskit", "qiskit_aer"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            parts.append(f"{dist}-{importlib.metadata.version(dist)}")
    return f"qiskit-version-2/{','.join(parts)}/aioruntime"


def default_runtime_url(instance: str) -> str:
    """IBM's regional Runtime URL for a CRN (what the official default resolver builds)."""
    fields = instance.split(":")
    region = fields[5] if instance.startswith("crn:") and len(fields) > 5 else "us-east"
    prefix = "" if region in ("", "us-east") else f"{region}."
    return f"https://{prefix}quantum.cloud.ibm.com/api/v1"


def normalize_iam_url(url: str) -> str:
    """``IAM_URL`` without a trailing ``/identity/token`` (the path is appended per request)."""
    url = url.rstrip("/")
    if url.endswith(p.IAM_TOKEN):
        url = url[: -len(p.IAM_TOKEN)]
    return url


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Everything a service needs, resolved once. Build it with :meth:`build`."""

    runtime_url: str
    token: str = field(repr=False)
    instance: str
    iam_url: str
    #: Size of the one connection pool.
    max_connections: int = 100
    #: Long-polls / status polls in flight at once, across all awaited jobs (see ``job.py``).
    max_concurrent_waits: int = 64
    #: How long one long-poll may hold a wait slot before it rotates to the back of the queue.
    wait_slice_s: float = 10.0
    #: "auto": use the emulator's wait extension when offered, else poll; "poll": always poll.
    job_wait: Literal["auto", "poll"] = "auto"
    poll_min_s: float = 0.1
    poll_max_s: float = 5.0
    #: Upper bound of the steady-state status-poll rate of all waiters together (per second).
    poll_rate: float = 20.0
    #: Mirror the official client's ``GET /instances/usage`` + ``GET /backends/{name}/status``
    #: before every job submission (off by default: two extra round trips per job).
    preflight_checks: bool = False
    connect_timeout_s: float = 10.0
    #: Read timeout of ordinary requests (the official client has none); ``POST /jobs`` gets
    #: ``submit_timeout_s`` like the official 900 s.
    read_timeout_s: float = 300.0
    submit_timeout_s: float = 900.0
    retries: int = 5
    backoff_s: float = 0.5
    client_application: str = f"aioruntime-{VERSION}"

    def __post_init__(self) -> None:
        if self.max_concurrent_waits < 1:
            raise InputValueError("max_concurrent_waits must be at least 1")
        if self.max_connections <= self.max_concurrent_waits:
            raise InputValueError(
                "max_connections must exceed max_concurrent_waits, or waiting jobs would take "
                "every connection and starve other requests"
            )
        if self.wait_slice_s <= 0 or self.poll_min_s <= 0 or self.poll_max_s < self.poll_min_s:
            raise InputValueError("wait_slice_s, poll_min_s and poll_max_s must be positive")
        if self.poll_rate <= 0:
            raise InputValueError("poll_rate must be positive")
        if self.job_wait not in ("auto", "poll"):
            raise InputValueError("job_wait must be 'auto' or 'poll'")

    @classmethod
    def build(
        cls,
        *,
        url: str | None = None,
        token: str | None = None,
        instance: str | None = None,
        iam_url: str | None = None,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> ClientConfig:
        """Arguments first, then ``QISKIT_IBM_TOKEN`` / ``QISKIT_IBM_URL`` /
        ``QISKIT_IBM_INSTANCE`` / ``IAM_URL`` (the variables the official client reads)."""
        env = os.environ if environ is None else environ
        token = token or env.get("QISKIT_IBM_TOKEN")
        instance = instance or env.get("QISKIT_IBM_INSTANCE")
        url = url or env.get("QISKIT_IBM_URL")
        if not token:
            raise InputValueError(
                "No API key: pass token=... or set QISKIT_IBM_TOKEN (an IBM Cloud API key)."
            )
        if not instance:
            raise InputValueError(
                "No instance: pass instance=<CRN> or set QISKIT_IBM_INSTANCE. aioruntime does "
                "not search IBM Cloud for instances; give the instance CRN."
            )
        if not url:
            url = default_runtime_url(instance)
        if not url.startswith(("http://", "https://")):
            raise InputValueError(f"url must be an http(s) URL, got {url!r}")
        if iam_url is None:
            iam_url = env.get("IAM_URL")
        if not iam_url:
            staging = instance.startswith("crn:") and instance.split(":")[2:3] == ["staging"]
            iam_url = STAGING_IAM_URL if staging else DEFAULT_IAM_URL
        options.setdefault("client_application", _client_application(env))
        return cls(
            runtime_url=url.rstrip("/"),  # used verbatim (no region resolver), spec 1.2
            token=token,
            instance=instance,
            iam_url=normalize_iam_url(iam_url),
            **options,
        )


# -- IAM -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    refresh_at: float
    expire_at: float


class TokenManager:
    """Holds the IAM token; one refresh at a time.

    ``fetch`` returns ``(access_token, lifetime_seconds)``. Deadlines are taken from the local
    monotonic clock at receipt (robust to clock skew): refresh at 80 % of the lifetime (as the
    official SDK does), treat as expired 10 s before the end.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[tuple[str, float]]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._token: _Token | None = None
        self._task: asyncio.Task[None] | None = None
        self.refreshes = 0

    async def get(self) -> str:
        """A valid token; waits for a refresh only when there is no usable token."""
        now = self._clock()
        tok = self._token
        if tok is not None and now < tok.refresh_at:
            return tok.value
        if tok is not None and now < tok.expire_at:
            self._start_refresh()  # proactive, in the background; keep using the current one
            return tok.value
        task = self._start_refresh()
        # Shielded: a cancelled caller must not cancel the refresh other callers wait for.
        await asyncio.shield(task)
        tok = self._token
        assert tok is not None
        return tok.value

    def invalidate(self, value: str) -> None:
        """Drop ``value`` (the server refused it), unless a newer token already replaced it."""
        if self._token is not None and self._token.value == value:
            self._token = None

    def _start_refresh(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._refresh(), name="aioruntime-iam-refresh")
            self._task.add_done_callback(_retrieve)
        return self._task

    async def _refresh(self) -> None:
        try:
            value, lifetime = await self._fetch()
        except Exception:
            tok = self._token
            if tok is not None:  # background refresh failed: retry in a little while
                self._token = _Token(tok.value, self._clock() + 5.0, tok.expire_at)
            raise
        now = self._clock()
        lifetime = max(float(lifetime), 1.0)
        self._token = _Token(
            value, now + 0.8 * lifetime, now + lifetime - min(10.0, 0.1 * lifetime)
        )
        self.refreshes += 1

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a background task's exception as retrieved (it is re-raised to any awaiter)."""
    if not task.cancelled():
        task.exception()


def _token_lifetime(body: Mapping[str, Any]) -> tuple[str, float]:
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise TransportError("IAM answered without an access_token")
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        return token, float(claims["exp"]) - float(claims["iat"])
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        expires_in = body.get("expires_in")
        if isinstance(expires_in, (int, float)) and expires_in > 0:
            return token, float(expires_in)
        raise TransportError("IAM token is not a JWT with exp/iat and has no expires_in") from None


# -- HTTP ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    method: str
    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """Plain JSON (for bodies that carry no RuntimeEncoder values)."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError as exc:
            raise TransportError(
                f"{self.method} {self.url} answered {self.status} with a body that is not JSON",
                method=self.method,
                url=self.url,
            ) from exc


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    requests_sent: int
    requests_in_flight: int
    retries: int
    token_refreshes: int
    max_connections: int


def parse_error_body(body: bytes) -> tuple[str | None, int | None]:
    """``(message, code)`` from IBM's ``errors`` list, the singular ``error`` object, or IAM's
    ``errorMessage``/``errorCode``."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    item: Any = None
    if isinstance(obj.get("errors"), list) and obj["errors"]:
        item = obj["errors"][0]
    elif isinstance(obj.get("error"), dict):
        item = obj["error"]
    if isinstance(item, dict):
        raw_code = item.get("code")
        code = (
            int(raw_code) if isinstance(raw_code, (int, str)) and str(raw_code).isdigit() else None
        )
        message = item.get("message")
        return (str(message) if message else None), code
    if "errorMessage" in obj:
        return f"{obj.get('errorCode', '')}: {obj['errorMessage']}".strip(": "), None
    if isinstance(obj.get("message"), str):
        return obj["message"], None
    return None, None


class Transport:
    """One ``aiohttp.ClientSession`` and the Runtime API's headers, retries and errors."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self.tokens = TokenManager(self._fetch_token)
        self._requests = 0
        self._in_flight = 0
        self._retries = 0

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise ServiceClosedError(
                "The AsyncRuntimeService is not open yet: use "
                "`async with AsyncRuntimeService(...) as service:` or `await service.open()`."
            )
        if self._session.closed:
            raise ServiceClosedError("The AsyncRuntimeService has been closed.")
        return self._session

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.config.max_connections)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.config.connect_timeout_s,
                sock_read=self.config.read_timeout_s,
            ),
            headers={"User-Agent": f"aioruntime/{VERSION} aiohttp/{aiohttp.__version__}"},
            # The official client sends Accept only where it asks for JSON (spec 1.3).
            skip_auto_headers=("Accept",),
            raise_for_status=False,
        )

    async def aclose(self) -> None:
        await self.tokens.aclose()
        if self._session is not None:
            await self._session.close()

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            requests_sent=self._requests,
            requests_in_flight=self._in_flight,
            retries=self._retries,
            token_refreshes=self.tokens.refreshes,
            max_connections=self.config.max_connections,
        )

    # -- IAM ---------------------------------------------------------------------------------

    async def _fetch_token(self) -> tuple[str, float]:
        url = self.config.iam_url + p.IAM_TOKEN
        form = {
            "grant_type": p.IAM_GRANT_TYPE,
            "apikey": self.config.token,
            "response_type": "cloud_iam",
        }
        headers = {"Accept": "application/json"}
        response = await self._send(
            "POST", url, headers=headers, data=form, read_timeout=IAM_TIMEOUT_S, idempotent=False
        )
        if response.status >= 400:
            message, _ = parse_error_body(response.body)
            cls: type[ApiError] = (
                NotAuthorizedError
                if response.status in (400, 401, 403)
                else api_error_class(response.status)
            )
            raise cls(
                f"IAM refused the API key: {message or response.text()[:200]}",
                status=response.status,
                method="POST",
                url=url,
                body=response.text(),
            )
        return _token_lifetime(response.json() or {})

    # -- Runtime API -------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.config.runtime_url + path

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        body: str | None = None,
        accept_json: bool = True,
        read_timeout: float | None = None,
        errors: ErrorMap | None = None,
        idempotency_key: str | None = None,
    ) -> Response:
        """Send one Runtime API request (``path`` relative to the runtime URL).

        Raises :class:`TransportError` when no answer came, an :class:`ApiError` subclass for an
        error status (``errors`` maps a status to a more specific class and its extra keyword
        arguments, e.g. ``{404: (JobNotFoundError, {"job_id": ...})}``).

        ``idempotency_key`` (for ``POST /jobs``) is sent as ``Idempotency-Key``: a server that
        honours it (the emulator does; IBM ignores unknown headers) returns the first job for a
        repeated submission, which makes a POST safe to retry after a dropped connection.
        """
        url = self.url(path)
        refreshed = False
        while True:
            token = await self.tokens.get()
            headers = {
                p.HEADER_API_VERSION: p.API_VERSION,
                p.HEADER_SERVICE_CRN: self.config.instance,
                "Authorization": f"Bearer {token}",
                p.HEADER_CLIENT_APP: self.config.client_application,
            }
            if accept_json:
                headers["Accept"] = "application/json"
            if body is not None:
                headers["Content-Type"] = "application/json"
            if idempotency_key is not None:
                headers[p.HEADER_IDEMPOTENCY_KEY] = idempotency_key
            response = await self._send(
                method,
                url,
                params=params,
                headers=headers,
                data=body,
                read_timeout=read_timeout,
                idempotent=method != "POST" or idempotency_key is not None,
            )
            if response.status == 401 and not refreshed:
                # The token may have been revoked or the server restarted with a new secret:
                # get a new one once (concurrent callers share the refresh), then give up.
                self.tokens.invalidate(token)
                refreshed = True
                continue
            if response.status >= 400:
                raise self._error(response, errors)
            return response

    async def get_json(
        self, path: str, *, params: Params = None, errors: ErrorMap | None = None
    ) -> Any:
        return (await self.request("GET", path, params=params, errors=errors)).json()

    def _error(self, response: Response, errors: ErrorMap | None) -> ApiError:
        message, code = parse_error_body(response.body)
        message = message or response.text()[:500] or f"HTTP {response.status}"
        cls, extra = (errors or {}).get(response.status, (api_error_class(response.status), {}))
        kwargs: dict[str, Any] = dict(extra)
        if issubclass(cls, RateLimitError):
            kwargs["retry_after"] = _retry_after(response.headers)
        return cls(
            message,
            status=response.status,
            code=code,
            method=response.method,
            url=response.url,
            body=response.text(),
            **kwargs,
        )

    async def _send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        params: Params = None,
        data: str | Mapping[str, str] | None = None,
        read_timeout: float | None = None,
        idempotent: bool,
    ) -> Response:
        """One request with the official retry policy; returns any HTTP answer (also 4xx)."""
        attempt = 0
        extra: dict[str, Any] = {}
        if read_timeout is not None:
            extra["timeout"] = aiohttp.ClientTimeout(
                total=None, sock_connect=self.config.connect_timeout_s, sock_read=read_timeout
            )
        while True:
            self._requests += 1
            self._in_flight += 1
            try:
                async with self.session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=headers,
                    **extra,
                ) as resp:
                    body = await resp.read()
                    response = Response(method, url, resp.status, resp.headers, body)
            except TimeoutError as exc:
                raise RequestTimeoutError(
                    f"{method} {url} timed out", method=method, url=url
                ) from exc
            except aiohttp.ClientConnectorError as exc:
                # Nothing was sent: safe to retry for every method.
                if attempt < self.config.retries:
                    attempt = await self._backoff(attempt, None)
                    continue
                raise TransportError(
                    f"cannot connect for {method} {url}: {exc}", method=method, url=url
                ) from exc
            except (
                aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError,
                aiohttp.ClientPayloadError,
            ) as exc:
                # The request may have arrived: only idempotent methods are retried.
                if idempotent and attempt < self.config.retries:
                    attempt = await self._backoff(attempt, None)
                    continue
                raise TransportError(
                    f"{method} {url} failed: {exc!r}", method=method, url=url
                ) from exc
            except aiohttp.ClientError as exc:
                raise TransportError(
                    f"{method} {url} failed: {exc!r}", method=method, url=url
                ) from exc
            finally:
                self._in_flight -= 1
            if response.status in RETRY_STATUSES and attempt < self.config.retries:
                attempt = await self._backoff(attempt, _retry_after(response.headers))
                continue
            return response

    async def _backoff(self, attempt: int, retry_after: float | None) -> int:
        self._retries += 1
        delay = self.config.backoff_s * (2**attempt)
        if retry_after is not None:
            delay = max(delay, min(retry_after, 60.0))
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))
        return attempt + 1


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
