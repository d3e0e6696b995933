"""Prometheus metrics: ``GET /metrics``, open, with no job id or instance CRN in it.

Each app has its own :class:`~prometheus_client.CollectorRegistry` (never the global one), so
several emulators in one process do not clash. Two kinds of series:

* counted as things happen, from the scheduler's events (:mod:`emulator.events`) and an HTTP
  middleware: ``aioruntime_jobs_total{backend,program,state}`` (jobs that reached a final
  state), ``aioruntime_job_stage_seconds{backend,stage}`` (wall seconds of ``pre``,
  ``qpu_wait``, ``qpu`` and ``post``, from a finished job's stage timestamps),
  ``aioruntime_quantum_seconds_total{backend}`` (modelled QPU seconds charged) and
  ``aioruntime_http_requests_total{route,method,status}`` (the route's template, never the raw
  path, so ids never become labels);
* read at scrape time by :class:`SchedulerCollector` from :meth:`Scheduler.statistics` and the
  session index: jobs queued and running, lanes busy and capacity, the QPU busy and its waiting
  jobs, a backend paused, sessions by backend, mode and state.

These counters count what this process saw: after a restart they start again from zero, as
Prometheus expects of counters.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from .events import Event, JobChanged

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = ["STAGE_BUCKETS", "EmulatorMetrics", "SchedulerCollector"]

#: Wall seconds, from a few milliseconds (instant clock) to an hour (realtime).
STAGE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
#: (stage label, from stamp, to stamp).
_STAGES = (
    ("pre", "pre_start", "pre_end"),
    ("qpu_wait", "pre_end", "qpu_start"),
    ("qpu", "qpu_start", "qpu_end"),
    ("post", "post_start", "post_end"),
)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SchedulerCollector:
    """Gauges read from the scheduler when Prometheus scrapes (nothing before it started)."""

    def __init__(self) -> None:
        self.scheduler: Scheduler | None = None

    def collect(self) -> Iterator[Metric]:
        scheduler = self.scheduler
        if scheduler is None:
            return
        gauges = {
            name: GaugeMetricFamily(f"aioruntime_{name}", doc, labels=["backend"])
            for name, doc in (
                ("jobs_queued", "Jobs waiting for a classical lane (Queued)."),
                ("jobs_running", "Jobs holding a lane (Running)."),
                ("lanes_busy", "Classical lanes in use."),
                ("lanes_capacity", "Classical lanes (jobs in classical processing at once)."),
                ("qpu_busy", "1 while a job is on the QPU."),
                ("qpu_waiting", "Pre-processed jobs waiting for their QPU turn."),
                ("backend_paused", "1 while the admin API holds the backend's lanes."),
            )
        }
        for b in scheduler.statistics().backends:
            values = {
                "jobs_queued": b.queued,
                "jobs_running": b.running,
                "lanes_busy": b.lanes.busy,
                "lanes_capacity": b.lanes.width,
                "qpu_busy": int(b.qpu_busy),
                "qpu_waiting": b.qpu_ready,
                "backend_paused": int(b.paused),
            }
            for name, value in values.items():
                gauges[name].add_metric([b.backend], value)
        yield from gauges.values()
        sessions = GaugeMetricFamily(
            "aioruntime_sessions",
            "Sessions and batches by backend, mode (dedicated, batch) and state.",
            labels=["backend", "mode", "state"],
        )
        tally = Tally((s.backend, s.mode, s.state) for s in scheduler.store.sessions())
        for labels, count in sorted(tally.items()):
            sessions.add_metric(list(labels), count)
        yield sessions


class EmulatorMetrics:
    """The app's registry, its counters, the HTTP middleware and the ``/metrics`` handler."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "aioruntime_jobs",
            "Jobs that reached a final state.",
            ["backend", "program", "state"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "aioruntime_job_stage_seconds",
            "Wall seconds of each stage of a finished job (pre, qpu_wait, qpu, post).",
            ["backend", "stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.quantum_seconds = Counter(
            "aioruntime_quantum_seconds",
            "Modelled QPU seconds charged to finished jobs (model time).",
            ["backend"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "aioruntime_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.collector = SchedulerCollector()
        self.registry.register(self.collector)

    def attach(self, scheduler: Scheduler | None) -> None:
        self.collector.scheduler = scheduler

    def on_event(self, event: Event) -> None:
        """Count a job that reached its final state (an events listener: O(1))."""
        if not isinstance(event, JobChanged) or event.old_state is None:
            return
        job = event.job
        if not job.terminal:
            return
        self.jobs.labels(job.backend, job.program_id, job.state).inc()
        if job.usage_seconds:
            self.quantum_seconds.labels(job.backend).inc(job.usage_seconds)
        stamps = job.stages
        for stage, start, end in _STAGES:
            if start in stamps and end in stamps:
                seconds = _seconds(stamps[start], stamps[end])
                self.stage_seconds.labels(job.backend, stage).observe(max(0.0, seconds))

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count every answered request by its route's template (the outermost middleware;
        a request cancelled by a disconnect or a shutdown was not answered, and is not
        counted)."""
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self._count(request, exc.status)
            raise
        except Exception:
            self._count(request, 500)
            raise
        self._count(request, response.status)
        return response

    def _count(self, request: web.Request, status: int) -> None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        self.http_requests.labels(route, method, str(status)).inc()

    async def handler(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
