"""Handlers of the Runtime API (spec §2.3 to §2.6) and the emulator's extensions.

Handlers only decode (with :mod:`emulator.api.requests`, where every body, field and query is
parsed and limited), call the scheduler or the store, and encode; the rules live in
:mod:`emulator.scheduler` and :mod:`emulator.sessions`. Every job and session is looked up *for
the caller's instance*: another instance's ids answer 404, exactly like unknown ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from aioruntime import protocol as p
from aioruntime.protocol import ErrorCode, JobState

from ..backends import Device
from ..errors import Refused
from ..store import JobRecord
from . import requests, views
from .keys import CALLER, CONFIG, DEVICES, SCHEDULER, STORE, Caller


def _caller(request: web.Request) -> Caller:
    caller: Caller = request[CALLER]
    return caller


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


#: Response text at least this long is encoded in a thread: tens of MB (a job's params, a
#: result, a long page of jobs) would stall every other request, ``/health`` included.
_THREADED_CHARS = 1 << 20
#: A ``GET /jobs`` page of more jobs than this is JSON-encoded in a thread.
_THREADED_PAGE = 50


def _encode(body: Any) -> str:
    return json.dumps(body)


async def _text(text: str, content_type: str = "application/json") -> web.Response:
    if len(text) < _THREADED_CHARS:
        return web.Response(text=text, content_type=content_type)
    data = await asyncio.to_thread(text.encode)
    return web.Response(body=data, content_type=content_type, charset="utf-8")


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


# -- backends and usage ----------------------------------------------------------------------


async def list_backends(request: web.Request) -> web.Response:
    """Mock twins (dry-run targets) are listed only with ``include_mocks``, as IBM does."""
    stats = request.config_dict[SCHEDULER].statistics()
    mocks = requests.include_mocks(request)
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
    devices: dict[str, Device] = request.config_dict[DEVICES]
    job = await requests.job_submission(
        request, devices, request.config_dict[SCHEDULER].schema_versions
    )
    device = devices[job.backend]
    # 400, not 404: the official client reads a 404 here as "program not found".
    _check_calibration(device, job.calibration_id, status=400)
    rec = await request.config_dict[SCHEDULER].submit(
        instance=_caller(request).instance,
        backend=job.backend,
        program_id=job.program_id,
        params_json=job.params_json,
        session_id=job.session_id,
        tags=job.tags,
        cost=job.cost,
        private=job.private,
        log_level=job.log_level,
        runtime=job.runtime,
        idempotency_key=job.idempotency_key,
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


async def get_job(request: web.Request) -> web.Response:
    rec = _job(request)
    params = None
    # A private job never gives its inputs back (as on IBM).
    if not requests.exclude_params(request) and not rec.private:
        params = await request.config_dict[STORE].params(rec.id)
    estimate = await request.config_dict[SCHEDULER].estimate(rec)
    encode = functools.partial(
        views.job_json_text,
        rec,
        params,
        estimate=estimate,
        calibration_id=_calibration_of(request, rec.backend),
    )
    if params is not None and len(params) >= _THREADED_CHARS:
        return await _text(await asyncio.to_thread(encode))
    return await _text(encode())


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
    return await _text(text, "text/plain")


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
    await request.config_dict[STORE].update_job(rec.id, tags=await requests.new_tags(request))
    return web.Response(status=204)


async def list_jobs(request: web.Request) -> web.Response:
    devices = request.config_dict[DEVICES]
    mocks = frozenset(name for name, d in devices.items() if d.mock)
    flt = requests.job_filter(request, _caller(request).instance, mocks)
    matched = [rec for rec in request.config_dict[STORE].jobs() if flt.matches(rec)]
    if flt.descending:
        matched.reverse()
    page = matched[flt.offset : flt.offset + flt.limit]
    body = {
        "jobs": [
            views.job_body(r, calibration_id=_calibration_of(request, r.backend)) for r in page
        ],
        "count": len(matched),
        "limit": flt.limit,
        "offset": flt.offset,
    }
    text = await asyncio.to_thread(_encode, body) if len(page) > _THREADED_PAGE else _encode(body)
    return await _text(text)


# -- sessions --------------------------------------------------------------------------------


async def create_session(request: web.Request) -> web.Response:
    instance = _caller(request).instance
    devices: dict[str, Device] = request.config_dict[DEVICES]
    asked = await requests.session_creation(request, devices, instance)
    scheduler = request.config_dict[SCHEDULER]
    rec = await scheduler.sessions.create(
        instance=instance, backend=asked.backend, mode=asked.mode, max_ttl=asked.max_ttl
    )
    return _json(views.session_body(rec, scheduler.sessions))


async def get_session(request: web.Request) -> web.Response:
    book = request.config_dict[SCHEDULER].sessions
    rec = book.get(request.match_info["session_id"], _caller(request).instance)
    return _json(views.session_body(rec, book))


async def update_session(request: web.Request) -> web.Response:
    scheduler = request.config_dict[SCHEDULER]
    rec = scheduler.sessions.get(request.match_info["session_id"], _caller(request).instance)
    accepting = await requests.accepting_jobs(request)
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
                "job_wait": {
                    "path": p.EXT_JOB_WAIT,
                    "max_timeout": config.wait_max_s,
                    "include_result": True,
                },
                "statistics": {"path": p.EXT_STATISTICS},
                # POST /jobs with this header twice returns the first job: retrying is safe.
                "idempotent_submit": {"header": p.HEADER_IDEMPOTENCY_KEY},
            },
        }
    )


async def wait_job(request: web.Request) -> web.Response:
    rec = _job(request)
    timeout = requests.wait_timeout(request, request.config_dict[CONFIG].wait_max_s)
    store = request.config_dict[STORE]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await store.wait_final(rec.id)
    final = store.job(rec.id)
    if final is None:
        raise Refused(404, ErrorCode.NOT_FOUND, f"Job {rec.id} not found.")
    text = views.job_json_text(final, calibration_id=_calibration_of(request, final.backend))
    if final.state == JobState.COMPLETED and request.query.get("include") == "result":
        # The result rides along (a JSON string): the client saves GET /jobs/{id}/results.
        result = await store.result(final.id) or ""
        if len(result) < _THREADED_CHARS:
            field = json.dumps(result)
        else:
            field = await asyncio.to_thread(json.dumps, result)
        text = f'{text[:-1]}, "{p.EXT_WAIT_RESULT_KEY}": {field}}}'
    return await _text(text)


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
