"""Transport: the only module that touches HTTP.

:class:`Transport` owns the one ``aiohttp.ClientSession`` (one connection pool) of a service,
adds the headers the official client sends (spec 1.3), retries like it does (spec 1.4: 5xx in
the force list and connection failures, POST included, exponential backoff) and turns every
failure into the :mod:`aioruntime.errors` tree. It also sends the IAM token request, on behalf of
its :class:`~aioruntime._auth.TokenManager`.

The configuration it runs on is :class:`~aioruntime._config.ClientConfig`; both it and the token
manager are re-exported here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from . import protocol as p
from ._auth import TokenManager, _token_lifetime
from ._config import VERSION, ClientConfig
from .errors import (
    ApiError,
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

#: Statuses the official client retries, POST included (``api/session.py: STATUS_FORCELIST``).
RETRY_STATUSES: Final = frozenset({500, 502, 503, 504, 520, 521, 522, 524})

IAM_TIMEOUT_S: Final = 60.0  # the ibm-cloud-sdk-core default

Params = Sequence[tuple[str, str]] | Mapping[str, str] | None
ErrorMap = Mapping[int, tuple[type[ApiError], Mapping[str, Any]]]


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
