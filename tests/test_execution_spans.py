"""The plots people expect, from real emulator results: the official ``draw_execution_spans``
(plotly, through the ``visualization`` extra) and the benchmarks' timeline PNG, both from the
same record — the results' execution spans and the job metrics' stage times."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import pytest
import pytest_asyncio
from circuits import bell, to_isa
from qiskit_ibm_runtime.visualization import draw_execution_spans

from aioruntime import AsyncBackend, AsyncSamplerV2
from benchmarks.timeline import draw_timeline
from benchmarks.workloads._common import timings_of

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def finished(manila: AsyncBackend) -> tuple[list[Any], list[Any]]:
    """Three Sampler jobs in job mode, done: (jobs, results)."""
    sampler = AsyncSamplerV2(mode=manila)
    jobs = list(
        await asyncio.gather(*(sampler.run([to_isa(bell(), "manila")], shots=50) for _ in range(3)))
    )
    return jobs, list(await asyncio.gather(*jobs))


async def test_the_official_draw_execution_spans_draws_a_real_result(
    finished: tuple[list[Any], list[Any]],
) -> None:
    jobs, results = finished
    spans = [r.metadata["execution"]["execution_spans"] for r in results]
    figure = draw_execution_spans(*spans, names=[job.job_id() for job in jobs])
    assert isinstance(figure, go.Figure)
    assert [trace.name for trace in figure.data] == [job.job_id() for job in jobs]
    for trace, job_spans in zip(figure.data, spans, strict=True):
        (span,) = job_spans
        assert list(trace.x) == [span.start, span.stop, None]
        assert span.size == 50 and span.duration > 0
    # the spans are the instants the emulator's metrics give as the QPU stage
    for job, job_spans in zip(jobs, spans, strict=True):
        stages = (await job.metrics())["emulator"]["stages"]
        assert datetime.fromisoformat(stages["qpu_start"]) == job_spans.start
        assert datetime.fromisoformat(stages["qpu_end"]) == job_spans.stop


async def test_the_benchmark_timeline_draws_the_same_spans(
    finished: tuple[list[Any], list[Any]], tmp_path: Path
) -> None:
    jobs, results = finished
    timings = await timings_of(jobs, {j.job_id(): r for j, r in zip(jobs, results, strict=True)})
    for timing, result in zip(timings, results, strict=True):
        spans = result.metadata["execution"]["execution_spans"]
        assert timing.qpu_start == spans.start.timestamp()
        assert timing.qpu_end == spans.stop.timestamp()
        assert timing.pre_end <= timing.qpu_start <= timing.qpu_end <= timing.post_start
    png = draw_timeline({"job": timings}, tmp_path / "timeline.png", lanes=5, title="job mode")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
