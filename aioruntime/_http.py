"""``ApiClient``: the Runtime API over a transport.

:class:`ApiClient` adds the headers the official client sends (spec 1.3), trades the API key for
an IAM token (on behalf of its :class:`~aioruntime._auth.TokenManager`), retries like the
official client (spec 1.4: 5xx in the force list, POST included, ``Retry-After`` answers, lost
connections, exponential backoff; see :meth:`ApiClient._send`), except that a server never
reached fails at once, and turns every failure into the :mod:`aioruntime.errors` tree. The bytes go
through an :class:`~aioruntime._transport.AsyncTransport` (aiohttp unless the service was given
another one), which is where HTTP itself lives.

The configuration it runs on is :class:`~aioruntime._config.ClientConfig`; both it and the token
manager are re-exported here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from . import protocol as p
from ._auth import TokenManager, _token_lifetime
from ._config import VERSION, ClientConfig
from ._transport import AiohttpTransport, AsyncTransport, Params, Request, Response
from .errors import (
    ApiError,
    ConnectError,
    ConnectionLostError,
    NotAuthorizedError,
    RateLimitError,
    ServiceClosedError,
    api_error_class,
)

__all__ = [
    "VERSION",
    "ApiClient",
    "ClientConfig",
    "Response",
    "TokenManager",
    "TransportStatistics",
]

log = logging.getLogger("aioruntime.http")

#: Statuses the official client retries, POST included (``api/session.py: STATUS_FORCELIST``).
RETRY_STATUSES: Final = frozenset({500, 502, 503, 504, 520, 521, 522, 524})
#: Statuses urllib3 retries when they carry ``Retry-After`` (``Retry.RETRY_AFTER_STATUS_CODES``),
#: for the methods it retries at all (``Retry.DEFAULT_ALLOWED_METHODS``: not POST, not PATCH).
RETRY_AFTER_STATUSES: Final = frozenset({413, 429, 503})
RETRY_AFTER_METHODS: Final = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "PUT", "TRACE"})

IAM_TIMEOUT_S: Final = 60.0  # the ibm-cloud-sdk-core default

ErrorMap = Mapping[int, tuple[type[ApiError], Mapping[str, Any]]]


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


class ApiClient:
    """The Runtime API over one :class:`~aioruntime._transport.AsyncTransport`: headers, the
    IAM token, the official retry policy and the error tree.

    Lifecycle: :meth:`open` before the first request, :meth:`aclose` once (it closes the
    transport too); requests outside that window raise :class:`ServiceClosedError`.
    """

    def __init__(self, config: ClientConfig, transport: AsyncTransport | None = None) -> None:
        self.config = config
        self.transport: AsyncTransport = transport or AiohttpTransport(
            max_connections=config.max_connections,
            connect_timeout_s=config.connect_timeout_s,
            read_timeout_s=config.read_timeout_s,
            user_agent=f"aioruntime/{VERSION} aiohttp/{aiohttp.__version__}",
        )
        self.tokens = TokenManager(self._fetch_token)
        self._opened = False
        self._closed = False
        #: Origins (scheme://host:port) that have answered at least once.
        self._reached: set[str] = set()
        self._requests = 0
        self._in_flight = 0
        self._retries = 0

    def _check_open(self) -> None:
        if not self._opened:
            raise ServiceClosedError(
                "The AsyncRuntimeService is not open yet: use "
                "`async with AsyncRuntimeService(...) as service:` or `await service.open()`."
            )
        if self._closed:
            raise ServiceClosedError("The AsyncRuntimeService has been closed.")

    async def open(self) -> None:
        self._opened = True

    async def aclose(self) -> None:
        self._closed = True
        await self.tokens.aclose()
        await self.transport.aclose()

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
            Request(method="POST", url=url, headers=headers, body=form, read_timeout=IAM_TIMEOUT_S),
            idempotent=False,
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
        arguments, e.g. ``{404: (JobNotFoundError, {"job_id": ...})}``), and
        :class:`ServiceClosedError` outside ``open()`` … ``aclose()``.

        ``idempotency_key`` (for ``POST /jobs``) is sent as ``Idempotency-Key``: a server that
        honours it (the emulator does; IBM ignores unknown headers) returns the first job for a
        repeated submission, which makes a POST safe to retry after a dropped connection.
        """
        self._check_open()
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
            request = Request(
                method=method,
                url=url,
                headers=headers,
                params=params,
                body=body,
                read_timeout=read_timeout,
            )
            response = await self._send(
                request, idempotent=method != "POST" or idempotency_key is not None
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

    async def _send(self, request: Request, *, idempotent: bool) -> Response:
        """One request with the official retry policy; returns any HTTP answer (also 4xx).

        Retried, with exponential backoff, at most ``config.retries`` times: the 5xx of
        ``RETRY_STATUSES`` (POST included, as the official client); 413/429/503 carrying
        ``Retry-After`` for the methods urllib3 retries (not POST, not PATCH), waiting as long
        as the server asks (up to 60 s); a connection lost after sending, for idempotent
        requests; a refused connection, up to ``config.connect_retries`` times, but only to a
        server that has answered before (one restarting). A server never reached (wrong URL,
        not started) fails at once with :class:`ConnectError`: retrying would only delay the
        error by the whole backoff (15 s by default).
        """
        origin = _origin(request.url)
        attempt = connects = 0
        while True:
            self._requests += 1
            self._in_flight += 1
            try:
                response = await self.transport.send(request)
            except ConnectError as exc:
                if origin not in self._reached:
                    raise ConnectError(
                        f"{exc} (not retried: {origin} has never answered; is the URL right "
                        "and the server running?)",
                        method=request.method,
                        url=request.url,
                    ) from (exc.__cause__ or exc)
                if connects < self.config.connect_retries and attempt < self.config.retries:
                    connects += 1
                    attempt = await self._backoff(attempt, None)
                    continue
                raise
            except ConnectionLostError:
                # The request may have arrived: only idempotent requests are retried.
                if idempotent and attempt < self.config.retries:
                    attempt = await self._backoff(attempt, None)
                    continue
                raise
            finally:
                self._in_flight -= 1
            self._reached.add(origin)
            if attempt < self.config.retries and _worth_retrying(request.method, response):
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


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _worth_retrying(method: str, response: Response) -> bool:
    if response.status in RETRY_STATUSES:
        return True
    return (
        response.status in RETRY_AFTER_STATUSES
        and method in RETRY_AFTER_METHODS
        and _retry_after(response.headers) is not None
    )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
