"""The admin API (``/admin/...``), behind its own key (``Authorization: Bearer <admin key>``).

* ``GET|PUT|DELETE /admin/faults`` — read, set (a :class:`~emulator.faults.FaultPlan` as JSON) or
  clear the injected faults;
* ``POST /admin/backends/{name}/pause`` (``?lanes=false`` / ``?qpu=false`` to pause only one) and
  ``POST /admin/backends/{name}/resume`` — hold a backend's lanes and QPU;
* ``GET /admin/statistics`` — the scheduler's statistics snapshot, all instances.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from aiohttp import web

from aioruntime import protocol as p

from ..config import same_secret
from ..errors import Refused
from ..faults import FaultPlan
from . import requests
from .keys import CONFIG, DEVICES, FAULTS, SCHEDULER, STORE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    expected = f"Bearer {request.config_dict[CONFIG].admin_key}"
    if not same_secret(request.headers.get("Authorization", ""), expected):
        raise Refused(401, p.ErrorCode.INVALID_CREDENTIALS, "Invalid admin key.")
    return await handler(request)


async def get_faults(request: web.Request) -> web.Response:
    faults = request.config_dict[FAULTS]
    return web.json_response({**faults.plan.to_json(), "injected": faults.injected})


async def put_faults(request: web.Request) -> web.Response:
    body = await requests.body_object(request)
    try:
        plan = FaultPlan.from_json(body)
    except (ValueError, TypeError) as exc:
        raise Refused(400, p.ErrorCode.VALIDATION, f"Bad fault plan: {exc}") from None
    request.config_dict[FAULTS].set(plan)
    request.config_dict[STORE].simulated_full = plan.disk_full
    return web.json_response(plan.to_json())


async def clear_faults(request: web.Request) -> web.Response:
    request.config_dict[FAULTS].set(FaultPlan())
    request.config_dict[STORE].simulated_full = False
    return web.Response(status=204)


def _backend(request: web.Request) -> str:
    name = request.match_info["name"]
    if name not in request.config_dict[DEVICES]:
        raise Refused(404, p.ErrorCode.BACKEND_NOT_FOUND, f"Backend {name} not found.")
    return name


async def pause_backend(request: web.Request) -> web.Response:
    try:
        lanes = p.parse_bool(request.query.get("lanes"), default=True)
        qpu = p.parse_bool(request.query.get("qpu"), default=True)
    except ValueError as exc:
        raise Refused(400, p.ErrorCode.VALIDATION, str(exc)) from None
    request.config_dict[SCHEDULER].pause(_backend(request), lanes=lanes, qpu=qpu)
    return web.Response(status=204)


async def resume_backend(request: web.Request) -> web.Response:
    request.config_dict[SCHEDULER].resume(_backend(request))
    return web.Response(status=204)


async def statistics(request: web.Request) -> web.Response:
    return web.json_response(dataclasses.asdict(request.config_dict[SCHEDULER].statistics()))


def admin_app() -> web.Application:
    app = web.Application(middlewares=[admin_auth])
    app.router.add_get("/faults", get_faults)
    app.router.add_put("/faults", put_faults)
    app.router.add_delete("/faults", clear_faults)
    app.router.add_post("/backends/{name}/pause", pause_backend)
    app.router.add_post("/backends/{name}/resume", resume_backend)
    app.router.add_get("/statistics", statistics)
    return app
