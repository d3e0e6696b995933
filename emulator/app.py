"""The app factory: routes, middleware, and the start and stop of the store and scheduler.

``create_app(config)`` returns an aiohttp application. Its cleanup context opens the SQLite
store, starts the scheduler (which re-queues unfinished jobs) and starts warming the worker
processes in the background (the server answers meanwhile; jobs wait for their workers);
on shutdown it cancels the pipelines and closes the store, in reverse order, also when start-up
fails halfway. The observers of the scheduler — the dashboard (``GET /``) and the Prometheus
metrics (``GET /metrics``) — subscribe to its events here, before it starts.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from aioruntime import protocol as p

from .api import cloud, runtime
from .api.admin import admin_app
from .api.keys import (
    CALLER,
    CLOCK,
    CONFIG,
    DASHBOARD,
    DEVICES,
    EVENTS,
    FAULTS,
    METRICS,
    REQUEST_LOG,
    SCHEDULER,
    STORE,
    Caller,
)
from .auth import AuthError, authenticate
from .backends import DEFAULT_BACKENDS, Device, mock_twins, resolve_devices
from .classical import JobInputError
from .clock import make_clock
from .config import Config
from .dashboard import web as dashboard_web
from .dashboard.model import DashboardModel
from .errors import Refused
from .events import Events
from .faults import Faults
from .metrics import EmulatorMetrics
from .scheduler import Scheduler
from .store import Store

__all__ = ["create_app"]

log = logging.getLogger("emulator.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response(p.error_body(code, message, status), status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal leaves as IBM's error body; nothing leaves as a bare 500."""
    try:
        return await handler(request)
    except ConnectionError as exc:
        # The client went away mid-request (mid-body, typically): its fault, nothing to fix,
        # and no one to answer; the answer below is never delivered.
        log.debug("client disconnected during %s %s: %r", request.method, request.path, exc)
        return _error(400, p.ErrorCode.VALIDATION, "The client disconnected.")
    except Refused as exc:
        return _error(exc.status, exc.code, exc.message)
    except JobInputError as exc:
        return _error(400, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = p.ErrorCode.NOT_FOUND if exc.status == 404 else p.ErrorCode.VALIDATION
        if exc.status == 413:
            return _error(
                413,
                p.ErrorCode.VALIDATION,
                f"The request body is larger than {request.app[CONFIG].max_body_bytes} bytes.",
            )
        return _error(exc.status, code, exc.reason or "request refused")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, p.ErrorCode.INTERNAL, "Internal error in the emulator.")


@web.middleware
async def record_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Keeps what each request carried (for protocol-conformance tests), not its payload."""
    body_keys: list[str] | None = None
    if request.can_read_body and request.content_type == "application/json":
        try:
            body = json.loads(await request.read())
            if isinstance(body, dict):
                body_keys = sorted(body)
                if isinstance(body.get("params"), dict):
                    body_keys += sorted(f"params.{k}" for k in body["params"])
        except (ValueError, RecursionError):
            body_keys = None
    request.app[REQUEST_LOG].append(
        {
            "method": request.method,
            "path": request.path,
            "query": sorted(request.query.keys()),
            "headers": sorted(h.lower() for h in request.headers),
            "body_keys": body_keys,
        }
    )
    return await handler(request)


@web.middleware
async def runtime_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Runtime routes need a valid token and a ``Service-CRN`` the key may use (else 401)."""
    config = request.config_dict[CONFIG]
    try:
        principal = authenticate(config, request.headers.get("Authorization"))
    except AuthError:
        return _error(401, p.ErrorCode.INVALID_CREDENTIALS, "Invalid or expired credentials.")
    crn = request.headers.get(p.HEADER_SERVICE_CRN)
    if crn is None and len(principal.instances) == 1:
        crn = principal.instances[0]
    if crn is None or crn not in principal.instances:
        return _error(
            401,
            p.ErrorCode.NOT_AUTHORIZED,
            "You are not authorized to use this instance (Service-CRN).",
        )
    request[CALLER] = Caller(instance=crn, key_id=principal.key_id)
    return await handler(request)


def _runtime_app(faults: Faults) -> web.Application:
    sub = web.Application(
        middlewares=[
            cast(Middleware, faults.middleware()),
            cast(Middleware, runtime_auth_middleware),
        ]
    )
    sub.add_routes(runtime.routes())
    return sub


async def health(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    devices: dict[str, Device] = request.app[DEVICES]
    return web.json_response(
        {
            "status": "ok",
            "backends": sorted(n for n, d in devices.items() if not d.mock),
            "clock": str(config.clock),
            "lanes": config.lanes,
            "runtime_paths": list(p.RUNTIME_PREFIXES),
            "workers": "ready" if request.app[SCHEDULER].ready.is_set() else "starting",
        }
    )


class _ClientFaultsAtDebug(logging.Filter):
    """aiohttp logs a request it could not parse (an oversized request line or header, a
    malformed message) or a peer that vanished with a full traceback at ERROR, though it
    answered 400 and the fault is the client's: such records are demoted to DEBUG, so one
    scanner or flaky client cannot flood an operator's logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (HttpProcessingError, ConnectionError)):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _demote_client_faults() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ClientFaultsAtDebug) for f in server_log.filters):
        server_log.addFilter(_ClientFaultsAtDebug())


def create_app(config: Config) -> web.Application:
    """Build the emulator application for ``config`` (not started)."""
    _demote_client_faults()
    devices = resolve_devices(config.backends or DEFAULT_BACKENDS)
    devices += mock_twins(devices)  # dry_run=True targets: ibm_fez → mock_fez
    metrics = EmulatorMetrics()
    # cast: @web.middleware returns a plain Callable, aiohttp's Middleware protocol names params
    middlewares = [
        cast(Middleware, metrics.middleware),
        cast(Middleware, error_middleware),
        # A runtime URL saved with a trailing slash makes the official client ask for
        # "…/experimental//backends": redirect to the merged path instead of a 404, which the
        # client would swallow into an empty backends() list.
        web.normalize_path_middleware(append_slash=False, merge_slashes=True),
    ]
    if config.record_requests:
        middlewares.append(cast(Middleware, record_middleware))
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[DEVICES] = {d.name: d for d in devices}
    app[CLOCK] = make_clock(config.clock)
    app[REQUEST_LOG] = []
    app[FAULTS] = Faults()
    app[EVENTS] = events = Events()
    app[METRICS] = metrics
    app[DASHBOARD] = dashboard = DashboardModel()
    events.subscribe(metrics.on_event)
    events.subscribe(dashboard.on_event)
    app.on_shutdown.append(_close_streams)  # before the runner waits for open handlers
    app.router.add_get(p.HEALTH, health)
    app.router.add_get("/metrics", metrics.handler)
    dashboard_web.add_routes(app)
    app.add_routes(cloud.routes())
    for prefix in p.RUNTIME_PREFIXES:
        app.add_subapp(prefix, _runtime_app(app[FAULTS]))
    app.add_subapp("/admin", admin_app())
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    async with AsyncExitStack() as stack:
        if config.data_dir is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="aioruntime-emulator-"))
            path: Path | str = Path(tmp) / "emulator.sqlite3"
        elif str(config.data_dir) == ":memory:":
            path = ":memory:"
        else:
            path = config.data_dir / "emulator.sqlite3"
        store = await stack.enter_async_context(Store(path, max_pages=config.store_max_pages))
        clock = app[CLOCK]
        if (anchor := await store.get_meta("clock")) is not None:
            clock.resume(anchor)  # TTL clocks of stored sessions carry on where they were
        if (anchor := clock.anchor()) is not None:
            await store.set_meta("clock", anchor)
        scheduler = Scheduler(
            config=config,
            store=store,
            clock=clock,
            devices=list(app[DEVICES].values()),
            faults=app[FAULTS],
            events=app[EVENTS],
        )
        app[DASHBOARD].attach(scheduler)
        app[METRICS].attach(scheduler)
        stack.callback(app[METRICS].attach, None)
        stack.callback(app[DASHBOARD].detach)
        await stack.enter_async_context(scheduler)
        scheduler.start_warming()  # /health answers at once; jobs wait for their workers
        app[STORE] = store
        app[SCHEDULER] = scheduler
        names: list[str] = list(app[DEVICES].keys())
        log.info(
            "emulator ready: %s, clock %s, %d lanes",
            ", ".join(names),
            config.clock,
            config.lanes,
        )
        yield


async def _close_streams(app: web.Application) -> None:
    app[DASHBOARD].close()


def runtime_url(base_url: str, *, experimental: bool = False) -> str:
    """The runtime base URL for a server at ``base_url``."""
    return base_url.rstrip("/") + p.RUNTIME_PREFIXES[1 if experimental else 0]
