"""The transport seam: one HTTP exchange, and nothing else.

:class:`~aioruntime._http.ApiClient` sends every request through an :class:`AsyncTransport`, as
httpx's ``AsyncClient`` sends through an ``AsyncBaseTransport``: the transport receives a fully
built :class:`Request` (URL, headers, body, read timeout) and returns the :class:`Response`,
whatever its status. Headers, the IAM token, retries and error mapping are the client's job.
``AsyncRuntimeService(transport=...)`` plugs one in (tests answer from memory, no sockets); the
default, :class:`AiohttpTransport`, is the only code in aioruntime that touches aiohttp.

What a transport raises decides what the client may retry:

* :class:`~aioruntime.errors.ConnectError`: no connection was made, so nothing was sent
  (refused, DNS failure, unreachable network);
* :class:`~aioruntime.errors.ConnectionLostError`: the connection broke after the request may
  have arrived (reset, server disconnected, truncated body);
* :class:`~aioruntime.errors.RequestTimeoutError`: the connect or read timeout expired;
* any other :class:`~aioruntime.errors.TransportError`: final (bad URL, …).

``send`` lets ``asyncio.CancelledError`` propagate as itself and releases its connection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from .errors import ConnectError, ConnectionLostError, RequestTimeoutError, TransportError

__all__ = ["AiohttpTransport", "AsyncTransport", "Params", "Request", "Response"]

Params = Sequence[tuple[str, str]] | Mapping[str, str] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    method: str
    url: str
    headers: Mapping[str, str]
    params: Params = None
    #: A JSON text, or a form (sent ``application/x-www-form-urlencoded``), or nothing.
    body: str | Mapping[str, str] | None = None
    #: Seconds to wait for the answer's next bytes; None keeps the transport's default.
    read_timeout: float | None = None


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
        """Plain JSON (for bodies that carry no RuntimeEncoder values); raises
        :class:`TransportError` when the body is not JSON."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError as exc:
            raise TransportError(
                f"{self.method} {self.url} answered {self.status} with a body that is not JSON",
                method=self.method,
                url=self.url,
            ) from exc


class AsyncTransport(Protocol):
    """Sends one request and returns its answer (see the module docstring for what it raises).

    The service that was given a transport closes it in its own ``aclose``."""

    async def send(self, request: Request) -> Response: ...

    async def aclose(self) -> None: ...


class AiohttpTransport:
    """The default transport: one ``aiohttp.ClientSession``, i.e. one connection pool.

    The session is created on the first request (aiohttp wants a running loop for it) and closed
    by :meth:`aclose`; a closed transport refuses further requests with :class:`TransportError`.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 300.0,
        user_agent: str = f"aiohttp/{aiohttp.__version__}",
    ) -> None:
        self._max_connections = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise TransportError("the transport is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._connect_timeout_s, sock_read=self._read_timeout_s
                ),
                headers={"User-Agent": self._user_agent},
                # The official client sends Accept only where it asks for JSON (spec 1.3).
                skip_auto_headers=("Accept",),
                raise_for_status=False,
            )
        return self._session

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()

    async def send(self, request: Request) -> Response:
        method, url = request.method, request.url
        extra: dict[str, Any] = {}
        if request.read_timeout is not None:
            extra["timeout"] = aiohttp.ClientTimeout(
                total=None, sock_connect=self._connect_timeout_s, sock_read=request.read_timeout
            )
        try:
            async with self._client().request(
                method,
                url,
                params=request.params,
                data=request.body,
                headers=dict(request.headers),
                **extra,
            ) as resp:
                body = await resp.read()
                return Response(method, url, resp.status, resp.headers, body)
        except TimeoutError as exc:
            raise RequestTimeoutError(f"{method} {url} timed out", method=method, url=url) from exc
        except aiohttp.ClientConnectorError as exc:  # before ClientOSError, its base class
            raise ConnectError(
                f"cannot connect for {method} {url}: {exc}", method=method, url=url
            ) from exc
        except (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientOSError,
            aiohttp.ClientPayloadError,
        ) as exc:
            raise ConnectionLostError(
                f"{method} {url} failed: {exc!r}", method=method, url=url
            ) from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"{method} {url} failed: {exc!r}", method=method, url=url) from exc
