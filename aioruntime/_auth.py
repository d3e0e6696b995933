"""IAM token management: :class:`TokenManager` holds the bearer token and refreshes it.

The API key is traded for an IAM token (spec 2.2 A) by a ``fetch`` coroutine the transport
supplies (the request itself lives in :mod:`aioruntime._http`, the only module that touches
HTTP); :func:`_token_lifetime` reads the lifetime out of IAM's answer. The token is refreshed at
80 % of its lifetime. There is never more than one refresh in flight: callers arriving while the
current token is still valid keep using it and the refresh runs in the background; callers
arriving without a usable token all await the same refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from ._tasks import _retrieve
from .errors import TransportError

__all__ = ["TokenManager"]


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
