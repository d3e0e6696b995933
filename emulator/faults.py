"""Faults on purpose, so users can test their retry logic (as LocalStack's chaos API allows).

A :class:`FaultPlan` is set through the admin API and is off by default. Its random choices come
from one ``random.Random(seed)``, so a run with the same seed and the same request order injects
the same faults.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from aioruntime import protocol as p

__all__ = ["FaultPlan", "Faults"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultPlan:
    seed: int = 0
    #: Probability that a runtime request is answered with an error *instead* of being handled.
    error_rate: float = 0.0
    #: The statuses to draw from (5xx are retried by the official client, 429 is not).
    error_statuses: tuple[int, ...] = (500, 503, 429)
    #: Probability that ``POST /jobs`` creates the job and *then* answers 500.
    error_after_create_rate: float = 0.0
    #: Probability that a job fails during processing with an "injected fault" reason.
    job_failure_rate: float = 0.0
    #: Added latency before every runtime request, milliseconds.
    latency_ms: float = 0.0
    #: A stall inside the worker process at the start of each job's pre-processing,
    #: milliseconds (a slow classical stage; also a window to kill a worker mid-job).
    worker_delay_ms: float = 0.0
    #: Every store write fails as on a full disk (SQLITE_FULL): new work gets 507, nothing
    #: changes, and it all recovers when this is cleared.
    disk_full: bool = False
    #: Only requests whose path contains one of these substrings are affected (empty: all).
    paths: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FaultPlan:
        """The plan a ``PUT /admin/faults`` body describes; ValueError names what is wrong (the
        admin API answers 400 with it), so no plan can fail later, on a request it applies to."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(body) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        values = dict(body)
        for key in ("error_statuses", "paths"):
            if key in values:
                if not isinstance(values[key], list):
                    raise ValueError(f"{key} must be a list")
                values[key] = tuple(values[key])
        plan = cls(**values)
        if not _is_int(plan.seed):
            raise ValueError("seed must be an integer")
        numbers = ("error_rate", "error_after_create_rate", "job_failure_rate", "latency_ms")
        for name in (*numbers, "worker_delay_ms"):
            value = getattr(plan, name)
            if not (_is_number(value) and 0 <= value < math.inf):
                raise ValueError(f"{name} must be a number >= 0")
        for rate in (plan.error_rate, plan.error_after_create_rate, plan.job_failure_rate):
            if not 0.0 <= rate <= 1.0:
                raise ValueError("rates must be between 0 and 1")
        if not plan.error_statuses or not all(
            _is_int(s) and 400 <= s <= 599 for s in plan.error_statuses
        ):
            raise ValueError("error_statuses must be a non-empty list of 4xx/5xx statuses")
        if not all(isinstance(s, str) for s in plan.paths):
            raise ValueError("paths must be a list of strings")
        return plan

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Faults:
    """The active plan and its random stream."""

    def __init__(self) -> None:
        self.plan = FaultPlan()
        self._rng = random.Random(0)
        self.injected = 0

    def set(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._rng = random.Random(plan.seed)
        self.injected = 0

    def _applies(self, path: str) -> bool:
        return not self.plan.paths or any(s in path for s in self.plan.paths)

    def draw(self, rate: float) -> bool:
        if rate > 0 and self._rng.random() < rate:
            self.injected += 1
            return True
        return False

    def fail_job(self) -> bool:
        return self.draw(self.plan.job_failure_rate)

    def middleware(self) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
        @web.middleware
        async def faults_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            plan = self.plan
            if not self._applies(request.path):
                return await handler(request)
            if plan.latency_ms:
                await asyncio.sleep(plan.latency_ms / 1000)
            if self.draw(plan.error_rate):
                status = self._rng.choice(plan.error_statuses)
                headers = {"Retry-After": "1"} if status in (429, 503) else {}
                return web.json_response(
                    p.error_body(p.ErrorCode.INTERNAL, f"Injected fault ({status}).", status),
                    status=status,
                    headers=headers,
                )
            response = await handler(request)
            if (
                request.method == "POST"
                and request.path.endswith(p.JOBS)
                and response.status == 200
                and self.draw(plan.error_after_create_rate)
            ):
                return web.json_response(
                    p.error_body(
                        p.ErrorCode.INTERNAL, "Injected fault after the job was created.", 500
                    ),
                    status=500,
                )
            return response

        return faults_middleware
