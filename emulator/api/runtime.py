"""Handlers of the Runtime API (spec §2.3 to §2.6) and the emulator's extensions.

Handlers only decode, call the scheduler or the store, and encode; the rules live in
:mod:`emulator.scheduler` and :mod:`emulator.sessions`. Every job and session is looked up *for
the caller's instance*: another instance's ids answer 404, exactly like unknown ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from aioruntime import protocol as p
from aioruntime.protocol import ErrorCode, JobState, SessionMode

from .. import executor, noise_learner
from ..backends import Device
from ..errors import Refused
from ..store import JobRecord
from . import views
from .keys import CALLER, CONFIG, DEVICES, SCHEDULER, STORE, Caller


def _caller(request: web.Request) -> Caller:
    caller: Caller = request[CALLER]
    return caller


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def _device(request: web.Request) -> Device:
    name = request.match_info["name"]
    device = request.config_dict[DEVICES].get(name)
    if device is None:
        raise Refused(404, ErrorCode.BACKEND_NOT_FOUND, f"Backend {name} not found.")
    return device


def _check_calibration(device: Device, calibration_id: str | None, *, status: int = 404) -> None:
    """Each device has one calibration (``Device.calibration_id``); any other id is unknown.
    The message names the id: the official client logs it when ``backend()`` fails."""
    if calibration_id is not None and calibration_id != device.calibration_id:
        raise Refused(
            status,
            ErrorCode.NOT_FOUND if status == 404 else ErrorCode.VALIDATION,
            f"Calibration {calibration_id!r} not found for backend {device.name}.",
        )


def _calibration_of(request: web.Request, backend: str) -> str | None:
    """The calibration a job on ``backend`` ran with: the device's one calibration (None for a
    device the emulator no longer serves)."""
    device = request.config_dict[DEVICES].get(backend)
    return device.calibration_id if device is not None else None


def _job(request: web.Request) -> JobRecord:
    job_id = request.match_info["job_id"]
    rec = request.config_dict[STORE].job(job_id)
    if rec is None or rec.instance != _caller(request).instance:
        raise Refused(404, ErrorCode.NOT_FOUND, f"Job {job_id} not found.")
    return rec


async def _body_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(
            400, ErrorCode.VALIDATION, f"The request body is not valid JSON: {exc}"
        ) from None
    if not isinstance(body, dict):
        raise Refused(400, ErrorCode.VALIDATION, "The request body must be a JSON object.")
    return body


def _field(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = False
) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise Refused(400, ErrorCode.VALIDATION, f"Missing required field '{name}'.")
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass: a boolean is never accepted as a number
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise Refused(400, ErrorCode.VALIDATION, f"Field '{name}' must be of type {names}.")
    return value


# -- backends and usage ----------------------------------------------------------------------


async def list_backends(request: web.Request) -> web.Response:
    """Mock twins (dry-run targets) are listed only with ``include_mocks``, as IBM does."""
    stats = request.config_dict[SCHEDULER].statistics()
    mocks = bool(_bool_query(request, "include_mocks"))
    devices = [
        views.device_summary(d, stats.backend(d.name).pending)
        for d in request.config_dict[DEVICES].values()
        if mocks or not d.mock
    ]
    return _json({"devices": devices})


async def backend_configuration(request: web.Request) -> web.Response:
    device = _device(request)
    _check_calibration(device, request.query.get("calibration_id"))
    return _json(device.configuration)


async def backend_properties(request: web.Request) -> web.Response:
    device = _device(request)
    _check_calibration(device, request.query.get("calibration_id"))
    return _json(device.properties)


async def backend_status(request: web.Request) -> web.Response:
    device = _device(request)
    # The official client reads ``length_queue`` as ``pending_jobs``: the backend's unfinished
    # jobs (queued and running), which is what ``least_busy()`` compares.
    pending = request.config_dict[SCHEDULER].statistics().backend(device.name).pending
    return _json(
        {
            "state": True,
            "status": "active",
            "message": "available",
            "length_queue": pending,
            "backend_version": device.configuration.get("backend_version", "0.0.0"),
        }
    )


async def instance_usage(request: web.Request) -> web.Response:
    instance = _caller(request).instance
    now = datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return _json(
        {
            "instance_id": instance,
            "plan_id": "emulator",
            "usage_consumed_seconds": request.config_dict[STORE].usage(instance),
            "usage_limit_reached": False,
            "usage_period": {
                "start_time": start.isoformat(),
                "end_time": (start + timedelta(days=32)).replace(day=1).isoformat(),
            },
        }
    )


# -- jobs ------------------------------------------------------------------------------------


async def submit_job(request: web.Request) -> web.Response:
    body = await _body_object(request)
    program_id = _field(body, "program_id", str, required=True)
    if program_id not in p.PROGRAMS:
        raise Refused(
            404,
            ErrorCode.VALIDATION,
            f"Program '{program_id}' not found; the emulator runs {', '.join(p.PROGRAMS)}.",
        )
    backend = _field(body, "backend", str, required=True)
    device = request.config_dict[DEVICES].get(backend)
    if device is None:
        raise Refused(400, ErrorCode.BACKEND_NOT_FOUND, f"Backend {backend} not found.")
    # 400, not 404: the official client reads a 404 here as "program not found".
    _check_calibration(device, _field(body, "calibration_id", str), status=400)
    params = _field(body, "params", dict, required=True)
    _check_params(program_id, params)
    tags = _field(body, "tags", list) or []
    if not all(isinstance(t, str) for t in tags):
        raise Refused(400, ErrorCode.VALIDATION, "Field 'tags' must be a list of strings.")
    cost = _field(body, "cost", (int, float))
    if cost is not None and not (math.isfinite(cost) and cost > 0):
        raise Refused(400, ErrorCode.VALIDATION, "Field 'cost' (max_execution_time) must be > 0.")
    rec = await request.config_dict[SCHEDULER].submit(
        instance=_caller(request).instance,
        backend=backend,
        program_id=program_id,
        params_json=json.dumps(params),
        session_id=_field(body, "session_id", str),
        tags=tags,
        cost=float(cost) if cost is not None else None,
        private=bool(_field(body, "private", bool)),
        log_level=_field(body, "log_level", str) or "WARNING",
        runtime=_field(body, "runtime", str) or "",
        idempotency_key=request.headers.get(p.HEADER_IDEMPOTENCY_KEY),
    )
    answer: dict[str, Any] = {
        "id": rec.id,
        "backend": rec.backend,
        "calibration_id": device.calibration_id,
    }
    if rec.session_id:
        answer["session_id"] = rec.session_id
    if rec.private:
        answer["private"] = True
    return _json(answer)


def _check_params(program_id: str, params: dict[str, Any]) -> None:
    """What can be refused from the JSON alone (nothing is decoded on the event loop)."""
    if program_id == "executor":
        executor.check_request(params)  # JobInputError: answered 400 by the middleware
    elif program_id == "noise-learner":
        noise_learner.check_request(params)
    else:
        pubs = params.get("pubs")
        if not isinstance(pubs, list) or not pubs:
            raise Refused(
                400, ErrorCode.VALIDATION, "Field 'params.pubs' must be a non-empty list."
            )


async def get_job(request: web.Request) -> web.Response:
    rec = _job(request)
    params = None
    # A private job never gives its inputs back (as on IBM).
    if not _bool_query(request, "exclude_params") and not rec.private:
        params = await request.config_dict[STORE].params(rec.id)
    estimate = await request.config_dict[SCHEDULER].estimate(rec)
    text = views.job_json_text(
        rec, params, estimate=estimate, calibration_id=_calibration_of(request, rec.backend)
    )
    return web.Response(text=text, content_type="application/json")


async def job_results(request: web.Request) -> web.Response:
    rec = _job(request)
    if rec.state == JobState.COMPLETED:
        text = await request.config_dict[STORE].result(rec.id) or ""
    elif rec.terminal:
        # The official client reads this text for failed jobs while computing status().
        text = (
            f"Error code {rec.reason_code}; {rec.reason}" if rec.reason_code else (rec.reason or "")
        )
    else:
        raise Refused(409, ErrorCode.INVALID_STATE, f"Job {rec.id} is {rec.state}; no result yet.")
    return web.Response(text=text, content_type="text/plain")


async def job_metrics(request: web.Request) -> web.Response:
    rec = _job(request)
    scheduler = request.config_dict[SCHEDULER]
    return _json(
        views.metrics_body(
            rec, stages=scheduler.live_stages(rec.id), queue=scheduler.queue_info(rec.id)
        )
    )


async def job_logs(request: web.Request) -> web.Response:
    return web.Response(text=_job(request).logs, content_type="text/plain")


async def cancel_job(request: web.Request) -> web.Response:
    rec = _job(request)
    if not await request.config_dict[SCHEDULER].cancel(rec):
        raise Refused(409, ErrorCode.INVALID_STATE, f"Job {rec.id} is already {rec.state}.")
    return web.Response(status=204)


async def delete_job(request: web.Request) -> web.Response:
    rec = _job(request)
    await request.config_dict[SCHEDULER].cancel(rec, reason="deleted by the user")
    await request.config_dict[STORE].delete_job(rec.id)
    return web.Response(status=204)


async def replace_tags(request: web.Request) -> web.Response:
    rec = _job(request)
    tags = _field(await _body_object(request), "tags", list, required=True)
    if not all(isinstance(t, str) for t in tags):
        raise Refused(400, ErrorCode.VALIDATION, "Field 'tags' must be a list of strings.")
    await request.config_dict[STORE].update_job(rec.id, tags=list(tags))
    return web.Response(status=204)


def _iso_query(request: web.Request, name: str) -> datetime | None:
    value = request.query.get(name)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Refused(400, ErrorCode.VALIDATION, f"Query '{name}' must be an ISO date.") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _bool_query(request: web.Request, name: str) -> bool | None:
    if name not in request.query:
        return None
    try:
        return p.parse_bool(request.query[name])
    except ValueError:
        raise Refused(400, ErrorCode.VALIDATION, f"Query '{name}' must be true or false.") from None


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError:
        raise Refused(400, ErrorCode.VALIDATION, f"Query '{name}' must be an integer.") from None
    if not lo <= value <= hi:
        raise Refused(400, ErrorCode.VALIDATION, f"Query '{name}' must be in [{lo}, {hi}].")
    return value


async def list_jobs(request: web.Request) -> web.Response:
    q = request.query
    instance = _caller(request).instance
    limit = _int_query(request, "limit", 200, 0, 1000)
    offset = _int_query(request, "offset", 0, 0, 10**9)
    pending = _bool_query(request, "pending")
    tags = set(q.getall("tags", []))
    after, before = _iso_query(request, "created_after"), _iso_query(request, "created_before")
    devices = request.config_dict[DEVICES]
    mocks = bool(_bool_query(request, "include_mocks"))
    matched = []
    for rec in request.config_dict[STORE].jobs():
        if rec.instance != instance:
            continue
        if not mocks and (d := devices.get(rec.backend)) is not None and d.mock:
            continue  # dry runs are listed only with include_mocks, as IBM does
        if (b := q.get("backend")) and rec.backend != b:
            continue
        if (prog := q.get("program")) and rec.program_id != prog:
            continue
        if (sid := q.get("session_id")) and rec.session_id != sid:
            continue
        if pending is not None and rec.terminal == pending:
            continue
        if tags and not tags.issubset(rec.tags):
            continue
        created = datetime.fromisoformat(rec.created)
        if (after and created < after) or (before and created > before):
            continue
        matched.append(rec)
    if q.get("sort", "DESC").upper() != "ASC":
        matched.reverse()
    page = matched[offset : offset + limit]
    return _json(
        {
            "jobs": [
                views.job_body(r, calibration_id=_calibration_of(request, r.backend)) for r in page
            ],
            "count": len(matched),
            "limit": limit,
            "offset": offset,
        }
    )


# -- sessions --------------------------------------------------------------------------------


async def create_session(request: web.Request) -> web.Response:
    body = await _body_object(request)
    mode = _field(body, "mode", str) or SessionMode.DEDICATED
    if mode not in (SessionMode.DEDICATED, SessionMode.BATCH):
        raise Refused(400, ErrorCode.VALIDATION, "Field 'mode' must be 'dedicated' or 'batch'.")
    backend = _field(body, "backend", str, required=True)
    if backend not in request.config_dict[DEVICES]:
        raise Refused(400, ErrorCode.BACKEND_NOT_FOUND, f"Backend {backend} not found.")
    max_ttl = _field(body, "max_ttl", (int, float))
    if max_ttl is not None and not (math.isfinite(max_ttl) and 0 < max_ttl <= 10**7):
        raise Refused(
            400, ErrorCode.VALIDATION, "Field 'max_ttl' must be a positive number of seconds."
        )
    instance = _caller(request).instance
    if (asked := _field(body, "instance", str)) and asked != instance:
        raise Refused(400, ErrorCode.VALIDATION, "Field 'instance' does not match Service-CRN.")
    scheduler = request.config_dict[SCHEDULER]
    rec = await scheduler.sessions.create(
        instance=instance, backend=backend, mode=mode, max_ttl=max_ttl
    )
    return _json(views.session_body(rec, scheduler.sessions))


async def get_session(request: web.Request) -> web.Response:
    book = request.config_dict[SCHEDULER].sessions
    rec = book.get(request.match_info["session_id"], _caller(request).instance)
    return _json(views.session_body(rec, book))


async def update_session(request: web.Request) -> web.Response:
    scheduler = request.config_dict[SCHEDULER]
    rec = scheduler.sessions.get(request.match_info["session_id"], _caller(request).instance)
    body = await _body_object(request)
    accepting = _field(body, "accepting_jobs", bool)
    if accepting is None:
        raise Refused(400, ErrorCode.VALIDATION, "Only 'accepting_jobs': false can be changed.")
    if accepting and not rec.accepting_jobs:
        raise Refused(409, ErrorCode.SESSION_NOT_ACCEPTING, "A closed session cannot be reopened.")
    if not accepting:
        await scheduler.close_session(rec)
    return web.Response(status=204)


async def cancel_session(request: web.Request) -> web.Response:
    scheduler = request.config_dict[SCHEDULER]
    rec = scheduler.sessions.get(request.match_info["session_id"], _caller(request).instance)
    await scheduler.cancel_session(rec)
    return web.Response(status=204)


# -- extensions ------------------------------------------------------------------------------


async def capabilities(request: web.Request) -> web.Response:
    config = request.config_dict[CONFIG]
    return _json(
        {
            "emulator": True,
            "clock": str(config.clock),
            "lanes": config.lanes,
            "extensions": {
                "job_wait": {"path": p.EXT_JOB_WAIT, "max_timeout": config.wait_max_s},
                "statistics": {"path": p.EXT_STATISTICS},
                # POST /jobs with this header twice returns the first job: retrying is safe.
                "idempotent_submit": {"header": p.HEADER_IDEMPOTENCY_KEY},
            },
        }
    )


async def wait_job(request: web.Request) -> web.Response:
    rec = _job(request)
    config = request.config_dict[CONFIG]
    try:
        timeout = float(request.query.get("timeout", config.wait_max_s))
    except ValueError:
        raise Refused(400, ErrorCode.VALIDATION, "Query 'timeout' must be a number.") from None
    if not (math.isfinite(timeout) and timeout >= 0):
        raise Refused(400, ErrorCode.VALIDATION, "Query 'timeout' must be >= 0.")
    store = request.config_dict[STORE]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(min(timeout, config.wait_max_s)):
            await store.wait_final(rec.id)
    final = store.job(rec.id)
    if final is None:
        raise Refused(404, ErrorCode.NOT_FOUND, f"Job {rec.id} not found.")
    text = views.job_json_text(final, calibration_id=_calibration_of(request, final.backend))
    return web.Response(text=text, content_type="application/json")


async def statistics(request: web.Request) -> web.Response:
    return _json(dataclasses.asdict(request.config_dict[SCHEDULER].statistics()))


def routes() -> web.RouteTableDef:
    r = web.RouteTableDef()
    r.get(p.BACKENDS)(list_backends)
    r.get(p.BACKEND_CONFIGURATION)(backend_configuration)
    r.get(p.BACKEND_PROPERTIES)(backend_properties)
    r.get(p.BACKEND_STATUS)(backend_status)
    r.get(p.INSTANCES_USAGE)(instance_usage)
    r.post(p.JOBS)(submit_job)
    r.get(p.JOBS)(list_jobs)
    r.get(p.JOB)(get_job)
    r.delete(p.JOB)(delete_job)
    r.get(p.JOB_RESULTS)(job_results)
    r.get(p.JOB_METRICS)(job_metrics)
    r.get(p.JOB_LOGS)(job_logs)
    r.post(p.JOB_CANCEL)(cancel_job)
    r.put(p.JOB_TAGS)(replace_tags)
    r.post(p.SESSIONS)(create_session)
    r.get(p.SESSION)(get_session)
    r.patch(p.SESSION)(update_session)
    r.delete(p.SESSION_CLOSE)(cancel_session)
    r.get(p.EXT_CAPABILITIES)(capabilities)
    r.get(p.EXT_JOB_WAIT)(wait_job)
    r.get(p.EXT_STATISTICS)(statistics)
    return r
