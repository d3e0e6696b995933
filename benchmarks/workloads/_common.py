"""Helpers the workloads share."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..analysis import JobTiming

if TYPE_CHECKING:
    from aioruntime import AsyncRuntimeJob

__all__ = ["counts_total", "execution_span", "timings_of"]


async def timings_of(
    jobs: Sequence[AsyncRuntimeJob], results: Mapping[str, Any] | None = None
) -> list[JobTiming]:
    """The measured stages of ``jobs`` (``GET /jobs/{id}/metrics``), read after the timed part;
    with their ``results`` (by job id), the QPU spans are the results' execution spans."""
    bodies = await asyncio.gather(*(job.metrics() for job in jobs))
    results = results or {}
    return [
        JobTiming.from_metrics(
            job.job_id(), body, qpu_span=execution_span(results.get(job.job_id()))
        )
        for job, body in zip(jobs, bodies, strict=True)
    ]


def execution_span(result: Any) -> tuple[datetime, datetime] | None:
    """(start, stop) of a result's ``metadata["execution"]["execution_spans"]``, if any."""
    metadata = getattr(result, "metadata", None) or {}
    spans = (metadata.get("execution") or {}).get("execution_spans")
    if not spans:
        return None
    return spans.start, spans.stop


def counts_total(result: Any) -> int:
    """Shots in a Sampler result's first PUB (a sanity check that the job really ran)."""
    data = result[0].data
    register = next(iter(data.values())) if hasattr(data, "values") else data.meas
    return int(register.num_shots)
