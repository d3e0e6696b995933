"""Helpers the workloads share."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..analysis import JobTiming

if TYPE_CHECKING:
    from aioruntime import AsyncRuntimeJob

__all__ = ["counts_total", "timings_of"]


async def timings_of(jobs: Sequence[AsyncRuntimeJob]) -> list[JobTiming]:
    """The measured stages of ``jobs`` (``GET /jobs/{id}/metrics``), read after the timed part."""
    bodies = await asyncio.gather(*(job.metrics() for job in jobs))
    return [
        JobTiming.from_metrics(job.job_id(), body) for job, body in zip(jobs, bodies, strict=True)
    ]


def counts_total(result: Any) -> int:
    """Shots in a Sampler result's first PUB (a sanity check that the job really ran)."""
    data = result[0].data
    register = next(iter(data.values())) if hasattr(data, "values") else data.meas
    return int(register.num_shots)
