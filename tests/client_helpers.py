"""Helpers for the aioruntime client tests.

* :class:`FakeRuntime`: an in-loop aiohttp server on port 0 speaking just enough of the API
  (IAM, capabilities, the wait extension, job GET/results/cancel) for deterministic unit tests of
  the transport, auth and waiting machinery. Job completion is driven by the test
  (:meth:`FakeRuntime.finish`), never by time.
* :class:`MemoryTransport`: an ``AsyncTransport`` that answers a few routes from memory (no
  sockets at all), for ``AsyncRuntimeService(transport=...)``.
* :func:`service_for`: an ``AsyncRuntimeService`` pointed at an ``EmulatorThread``.
* :class:`LoopLagProbe`: measures how late a 5 ms sleep wakes up (event-loop stalls).
* :func:`endpoint`: a recorded request reduced to ``(METHOD, /path/template)``.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from qiskit.primitives.containers import PrimitiveResult

from aioruntime import AsyncRuntimeService
from aioruntime import protocol as p
from aioruntime._transport import Request, Response

if TYPE_CHECKING:
    from emulator.testing import EmulatorThread

API_KEY = "unit-test-key"
INSTANCE = "crn:v1:bluemix:public:quantum-computing:us-east:a/fake::"


def service_for(emu: EmulatorThread, **kwargs: Any) -> AsyncRuntimeService:
    """An AsyncRuntimeService pointed at ``emu`` (not opened)."""
    values: dict[str, Any] = {
        "url": emu.runtime_url,
        "token": emu.api_key,
        "instance": emu.instance,
        "iam_url": emu.base_url,
    }
    values.update(kwargs)
    return AsyncRuntimeService(**values)


_ID = re.compile(r"/(jobs|sessions)/[^/]+")


def endpoint(record: dict[str, Any]) -> tuple[str, str]:
    """``("GET", "/api/v1/jobs/{id}/results")`` for a recorded emulator request."""
    path = _ID.sub(lambda m: f"/{m.group(1)}/{{id}}", record["path"])
    path = path.replace(p.RUNTIME_PREFIXES[1], p.RUNTIME_PREFIXES[0])
    return record["method"], path


class LoopLagProbe:
    """A task that sleeps 5 ms in a loop and records how late each wake-up was, and how much
    CPU the event-loop thread burned meanwhile (``time.thread_time``).

    A late wake-up has two possible causes: work on the loop (callbacks that ran too long: the
    client's fault), or the whole process waiting (OS scheduling on a loaded box, the GIL held
    by another thread, a garbage collection). The loop thread's CPU time over the interval tells
    them apart: a loop that was busy burns CPU; a starved one does not. A plain reference thread
    that only sleeps shows what the process as a whole suffered.
    """

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.samples: list[tuple[float, float]] = []  # (lag, loop-thread CPU seconds)
        self.reference: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._reference, name="lag-reference", daemon=True)

    async def _run(self) -> None:
        while True:
            start, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(self.period)
            lag = time.perf_counter() - start - self.period
            self.samples.append((lag, time.thread_time() - cpu))

    def _reference(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            time.sleep(self.period)
            self.reference.append(time.perf_counter() - start - self.period)

    @property
    def lags(self) -> list[float]:
        return [lag for lag, _ in self.samples]

    @property
    def max_lag(self) -> float:
        return max(self.lags, default=0.0)

    @property
    def max_loop_cpu(self) -> float:
        """The most CPU the loop thread used within one 5 ms sleep (its longest busy stretch,
        roughly)."""
        return max((cpu for _, cpu in self.samples), default=0.0)

    @property
    def reference_max_lag(self) -> float:
        return max(self.reference, default=0.0)

    async def __aenter__(self) -> LoopLagProbe:
        self._thread.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._stop.set()
        self._thread.join()


# -- the fake server -------------------------------------------------------------------------------


class FakeJob:
    def __init__(self, job_id: str) -> None:
        self.id = job_id
        self.status = "Running"
        self.reason: str | None = None
        self.reason_code: int | None = None
        self.result_text = ""
        self.final = asyncio.Event()

    def body(self) -> dict[str, Any]:
        state: dict[str, Any] = {"status": self.status}
        if self.reason:
            state["reason"] = self.reason
        if self.reason_code is not None:
            state["reason_code"] = self.reason_code
        return {
            "id": self.id,
            "backend": "fake_backend",
            "state": state,
            "status": self.status,
            "program": {"id": "sampler"},
            "created": "2026-01-01T00:00:00+00:00",
            "tags": [],
        }


class FakeRuntime:
    """A tiny stand-in for the Runtime API; see the module docstring."""

    def __init__(self, *, wait_extension: bool = True, token_ttl: int = 3600) -> None:
        self.wait_extension = wait_extension
        self.token_ttl = token_ttl
        self.jobs: dict[str, FakeJob] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.iam_calls = 0
        self.iam_forms: list[dict[str, str]] = []
        self.waits_in_flight = 0
        self.max_waits_in_flight = 0
        self.wait_requests = 0
        self.cancels: list[str] = []
        #: Statuses to answer the next runtime requests with, in order (e.g. [503, 503]).
        self.fail_next: list[int] = []
        self.revoked: set[str] = set()
        self.reject_all_tokens = False
        self.server: TestServer | None = None

    # -- control -----------------------------------------------------------------------------

    def job(self, job_id: str) -> FakeJob:
        if job_id not in self.jobs:
            self.jobs[job_id] = FakeJob(job_id)
        return self.jobs[job_id]

    def finish(
        self,
        job_id: str,
        status: str = "Completed",
        *,
        result_text: str = "",
        reason: str | None = None,
        reason_code: int | None = None,
    ) -> None:
        job = self.job(job_id)
        job.status, job.reason, job.reason_code = status, reason, reason_code
        job.result_text = result_text
        job.final.set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    @property
    def runtime_url(self) -> str:
        return self.url + "/api/v1"

    def service(self, **kwargs: Any) -> AsyncRuntimeService:
        values: dict[str, Any] = {
            "url": self.runtime_url,
            "token": API_KEY,
            "instance": INSTANCE,
            "iam_url": self.url,
            "backoff_s": 0.001,
        }
        values.update(kwargs)
        return AsyncRuntimeService(**values)

    def paths(self, method: str | None = None) -> list[str]:
        return [path for m, path, _ in self.requests if method is None or m == method]

    # -- server ------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post(p.IAM_TOKEN, self._iam)
        r = "/api/v1"
        app.router.add_get(r + p.EXT_CAPABILITIES, self._capabilities)
        app.router.add_get(r + p.EXT_JOB_WAIT, self._wait)
        app.router.add_get(r + p.JOB, self._get_job)
        app.router.add_get(r + p.JOB_RESULTS, self._results)
        app.router.add_post(r + p.JOB_CANCEL, self._cancel)
        app.router.add_get(r + p.BACKENDS, self._backends)
        app.router.add_get(r + p.INSTANCES_USAGE, self._usage)
        self.server = TestServer(app, port=0)
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.query)))
        if request.path.startswith("/api/v1"):
            auth = request.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ")
            if not auth.startswith("Bearer ") or token in self.revoked or self.reject_all_tokens:
                return web.json_response(p.error_body(1201, "bad token", 401), status=401)
            if request.headers.get(p.HEADER_SERVICE_CRN) != INSTANCE:
                return web.json_response(p.error_body(1200, "bad instance", 401), status=401)
            if self.fail_next:
                status = self.fail_next.pop(0)
                return web.json_response(p.error_body(1000, "injected", status), status=status)
        response: web.StreamResponse = await handler(request)
        return response

    async def _iam(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.iam_forms.append(form)
        self.iam_calls += 1
        if form.get("apikey") != API_KEY:
            return web.json_response(
                {"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be found."},
                status=400,
            )
        iat = int(time.time())
        token = jwt.encode(
            {"iat": iat, "exp": iat + self.token_ttl, "n": self.iam_calls},
            "fake-runtime-secret-" + "x" * 32,
            algorithm="HS256",
        )
        return web.json_response({"access_token": token, "expires_in": self.token_ttl})

    async def _capabilities(self, request: web.Request) -> web.Response:
        if not self.wait_extension:
            return web.json_response(p.error_body(1291, "not found", 404), status=404)
        return web.json_response(
            {"extensions": {"job_wait": {"path": p.EXT_JOB_WAIT, "max_timeout": 60}}}
        )

    def _found(self, request: web.Request) -> FakeJob:
        job_id = request.match_info["job_id"]
        if job_id.startswith("missing"):
            raise web.HTTPNotFound(
                text='{"errors": [{"code": "1291", "message": "Job not found."}]}',
                content_type="application/json",
            )
        return self.job(job_id)

    async def _wait(self, request: web.Request) -> web.Response:
        job = self._found(request)
        timeout = float(request.query.get("timeout", "60"))
        self.wait_requests += 1
        self.waits_in_flight += 1
        self.max_waits_in_flight = max(self.max_waits_in_flight, self.waits_in_flight)
        try:
            try:
                await asyncio.wait_for(job.final.wait(), timeout)
            except TimeoutError:
                pass
        finally:
            self.waits_in_flight -= 1
        return web.json_response(job.body())

    async def _get_job(self, request: web.Request) -> web.Response:
        return web.json_response(self._found(request).body())

    async def _results(self, request: web.Request) -> web.Response:
        return web.Response(text=self._found(request).result_text, content_type="text/plain")

    async def _cancel(self, request: web.Request) -> web.Response:
        job = self._found(request)
        if job.final.is_set():
            return web.json_response(p.error_body(1218, "already final", 409), status=409)
        self.cancels.append(job.id)
        self.finish(job.id, "Cancelled")
        return web.Response(status=204)

    async def _backends(self, request: web.Request) -> web.Response:
        return web.json_response({"devices": []})

    async def _usage(self, request: web.Request) -> web.Response:
        return web.json_response({"usage_consumed_seconds": 1, "usage_limit_seconds": 10})


# -- the in-memory transport -----------------------------------------------------------------------


def _iam_token(serial: int, ttl: int = 3600) -> str:
    iat = int(time.time())
    return jwt.encode(
        {"iat": iat, "exp": iat + ttl, "n": serial}, "memory-secret-" + "x" * 32, algorithm="HS256"
    )


class MemoryTransport:
    """An ``AsyncTransport`` answering from dictionaries: no sockets, no server, no loop work.

    Routes: the IAM token, ``/backends`` (with configuration, properties and status, from the
    emulator's device snapshots), ``/instances/usage``, ``POST /jobs`` (the job is Completed at
    once, with an empty ``PrimitiveResult``), ``GET /jobs``, ``/jobs/{id}`` and its results;
    everything else (e.g. the capabilities probe) answers 404, as IBM does. ``queues`` maps
    each served backend to its ``queue_length``. ``before_send`` may raise (e.g. a
    ``ConnectError``) to play an unreachable server; ``sent`` records every request.
    """

    def __init__(self, queues: dict[str, int] | None = None) -> None:
        from emulator.backends import device_for_name

        self.queues = dict(queues or {"ibm_manila": 0})
        self.devices = {name: device_for_name(name, "ibm_manila") for name in self.queues}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.results: dict[str, str] = {}
        self.sent: list[Request] = []
        self.before_send: Callable[[Request], None] | None = None
        self.answers: dict[tuple[str, str], list[tuple[int, dict[str, str]]]] = {}
        #: False: ``/backends`` entries carry no status and queue length (ask the status route).
        self.list_queues = True
        self.closed = False

    def routes(self) -> list[tuple[str, str]]:
        """``(METHOD, path)`` of every request sent, ids replaced by ``{id}``."""
        return [
            endpoint({"method": r.method, "path": urllib.parse.urlsplit(r.url).path})
            for r in self.sent
        ]

    def add_job(self, job_id: str, backend: str, *, estimate: float | None = 1.5) -> None:
        body: dict[str, Any] = {
            "id": job_id,
            "backend": backend,
            "state": {"status": "Completed"},
            "status": "Completed",
            "program": {"id": "sampler"},
            "created": "2026-01-01T00:00:00+00:00",
            "tags": [],
        }
        if estimate is not None:
            body["estimated_running_time_seconds"] = estimate
        self.jobs[job_id] = body
        self.results[job_id] = p.dumps(PrimitiveResult([], metadata={"version": 2}))

    async def aclose(self) -> None:
        self.closed = True

    async def send(self, request: Request) -> Response:
        self.sent.append(request)
        if self.before_send is not None:
            self.before_send(request)
        await asyncio.sleep(0)  # a real transport yields to the loop too
        path = urllib.parse.urlsplit(request.url).path
        queued = self.answers.get((request.method, path))
        if queued:
            status, headers = queued.pop(0)
            return Response(request.method, request.url, status, headers, b"")
        status, body = self._answer(request.method, path, dict(request.params or {}), request)
        text = body if isinstance(body, str) else json.dumps(body)
        return Response(request.method, request.url, status, {}, text.encode())

    def _answer(
        self, method: str, path: str, query: dict[str, str], request: Request
    ) -> tuple[int, Any]:
        if (method, path) == ("POST", p.IAM_TOKEN):
            return 200, {"access_token": _iam_token(len(self.sent)), "expires_in": 3600}
        if not path.startswith("/api/v1"):
            return 404, p.error_body(1291, "not found", 404)
        route = path.removeprefix("/api/v1")
        parts = route.strip("/").split("/")
        if (method, route) == ("GET", p.BACKENDS):
            return 200, {"devices": [self._summary(name) for name in self.queues]}
        if method == "GET" and parts[0] == "backends" and len(parts) == 3:
            device = self.devices.get(parts[1])
            if device is None:
                return 404, p.error_body(1007, "no such backend", 404)
            if parts[2] == "configuration":
                return 200, device.configuration
            if parts[2] == "properties":
                return 200, device.properties
            if parts[2] == "status":
                return 200, {
                    "state": True,
                    "status": "active",
                    "length_queue": self.queues[parts[1]],
                    "backend_version": "1.0.0",
                }
        if (method, route) == ("GET", p.INSTANCES_USAGE):
            return 200, {"usage_consumed_seconds": 1, "usage_limit_seconds": 10}
        if (method, route) == ("POST", p.JOBS):
            payload = json.loads(str(request.body))
            job_id = f"job-{len(self.jobs) + 1}"
            self.add_job(job_id, payload["backend"])
            return 200, {"id": job_id, "backend": payload["backend"]}
        if (method, route) == ("GET", p.JOBS):
            return 200, self._list(query)
        if parts[0] == "jobs" and len(parts) >= 2:
            if parts[1] not in self.jobs:
                return 404, p.error_body(1291, "Job not found.", 404)
            if method == "GET" and len(parts) == 2:
                return 200, self.jobs[parts[1]]
            if method == "GET" and parts[2:] == ["results"]:
                return 200, self.results[parts[1]]
        return 404, p.error_body(1291, "not found", 404)

    def _summary(self, name: str) -> dict[str, Any]:
        summary: dict[str, Any] = {"name": name, "qubits": self.devices[name].num_qubits}
        if self.list_queues:
            summary.update(status={"name": "online"}, queue_length=self.queues[name])
        return summary

    def _list(self, query: dict[str, str]) -> dict[str, Any]:
        jobs = [j for j in reversed(self.jobs.values())]
        if "backend" in query:
            jobs = [j for j in jobs if j["backend"] == query["backend"]]
        offset = int(query.get("offset", "0"))
        limit = int(query.get("limit", "20"))
        return {"jobs": jobs[offset : offset + limit], "count": len(jobs)}
