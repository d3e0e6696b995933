"""The dashboard's routes: the page, its assets, and the server-sent event stream.

* ``GET /`` — the page (``static/index.html``); ``GET /dashboard/static/...`` — its script and
  style sheet (no build step, nothing fetched from the internet).
* ``GET /dashboard/events`` — ``text/event-stream``. Each ``state`` event carries the whole live
  picture (:meth:`DashboardModel.snapshot_json`, encoded once per change and shared by every
  viewer) plus the timeline spans this viewer has not had yet; its ``id`` is the span cursor,
  so a reconnecting ``EventSource`` resumes where it stopped (``Last-Event-ID``).

Back-pressure, so that a thousand jobs in flight or a slow viewer never slow the scheduler:
events only mark the model changed; each viewer's loop sends at most one frame per
:data:`FRAME_INTERVAL_S` (everything that changed meanwhile is in it), and never builds the next
frame before the last one was written — a slow viewer skips frames instead of queuing them —
and a viewer that cannot take a frame within :data:`WRITE_TIMEOUT_S` is dropped.

Access: open when the emulator listens on loopback only. Otherwise the page and the stream
(which name every tenant's jobs and sessions) need the admin key: ``Authorization: Bearer
<admin key>``, or once ``/?key=<admin key>``, which sets a cookie derived from the key and
redirects to ``/`` so the key leaves the address bar. Unauthenticated viewers get a form.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import secrets
from pathlib import Path

from aiohttp import web

from ..api.keys import CONFIG, DASHBOARD
from ..config import Config

__all__ = ["FRAME_INTERVAL_S", "WRITE_TIMEOUT_S", "add_routes", "is_loopback"]

STATIC = Path(__file__).with_name("static")
#: At most one frame per viewer this often (seconds): events in between are coalesced.
FRAME_INTERVAL_S = 0.15
#: A viewer whose connection does not take a frame within this long is dropped.
WRITE_TIMEOUT_S = 10.0
#: A comment line this often keeps idle connections (and proxies) open.
KEEPALIVE_S = 15.0
COOKIE = "aioruntime_dashboard"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (``127.0.0.0/8``, ``::1``, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, or "" (every interface): not loopback-only


def _cookie_value(config: Config) -> str:
    # Derived from the admin key, so the key itself is never stored in the browser.
    key = config.admin_key.encode()
    return hmac.new(key, b"aioruntime-dashboard-v1", hashlib.sha256).hexdigest()


def _authorised(request: web.Request) -> bool:
    config = request.app[CONFIG]
    if is_loopback(config.host):
        return True
    bearer = request.headers.get("Authorization", "")
    if secrets.compare_digest(bearer.encode(), f"Bearer {config.admin_key}".encode()):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return secrets.compare_digest(cookie.encode(), _cookie_value(config).encode())


_LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>aioruntime emulator</title><link rel="stylesheet" href="/dashboard/static/dashboard.css">
</head><body class="login"><main><h1>aioruntime emulator</h1>
<p>This emulator listens beyond loopback: its dashboard needs the admin key
(printed at start, or <code>--admin-key</code>).</p>{error}
<form method="get" action="/"><input type="password" name="key" placeholder="admin key"
autocomplete="current-password" autofocus> <button type="submit">Open the dashboard</button></form>
</main></body></html>"""


async def index(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    if (key := request.query.get("key")) is not None:
        if secrets.compare_digest(key.encode(), config.admin_key.encode()):
            response = web.HTTPSeeOther("/")
            response.set_cookie(
                COOKIE, _cookie_value(config), httponly=True, samesite="Strict", path="/"
            )
            raise response
        return _login(401, '<p class="error">That is not the admin key.</p>')
    if not _authorised(request):
        return _login(401, "")
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


def _login(status: int, error: str) -> web.Response:
    return web.Response(status=status, text=_LOGIN.format(error=error), content_type="text/html")


async def stream(request: web.Request) -> web.StreamResponse:
    if not _authorised(request):
        return web.json_response({"error": "the dashboard needs the admin key"}, status=401)
    model = request.app[DASHBOARD]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    try:
        cursor = int(request.headers.get("Last-Event-ID", "0"))
    except ValueError:
        cursor = 0
    seen = -1
    with contextlib.suppress(ConnectionError, TimeoutError):
        await response.write(b"retry: 2000\n\n")
        while not model.closing:
            try:
                async with asyncio.timeout(KEEPALIVE_S):
                    await model.changed(seen)
            except TimeoutError:
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await response.write(b": keepalive\n\n")
                continue
            if model.closing:
                break
            seen = model.version
            spans, cursor = model.spans_since(cursor)
            data = '{"spans":' + json.dumps(spans) + ',"state":' + model.snapshot_json() + "}"
            frame = f"id: {cursor}\nevent: state\ndata: {data}\n\n".encode()
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await response.write(frame)
            await asyncio.sleep(FRAME_INTERVAL_S)  # coalesce: what changes meanwhile waits
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/dashboard/events", stream)
    app.router.add_static("/dashboard/static/", STATIC, append_version=False)
