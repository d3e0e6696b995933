"""fan-out: many trivial jobs submitted at once with aioruntime, in job mode.

``n`` tasks start together; each submits the trivial PUB (1 qubit, ``shots`` shots) with
``AsyncSamplerV2(mode=backend)`` and awaits its result. Throughput is ``n`` / (wall time from the
first submission to the last result). A job's latency runs from its task's start to its decoded
result, so it includes the time spent queued behind the others. Errors are every exception a
task raised and every result with the wrong number of shots.

Memory: by default the emulator runs in this process (its event loop is a thread here) and its
CPU work in worker processes that are children of this process. The peak is the largest sum,
sampled every 50 ms, of this process's RSS and all its children's RSS; this process also holds
the client and its 1000 job handles, so the figure is an upper bound on the emulator's own
memory. RSS counts shared library pages once per process. CPU: per job, from the threads' and
processes' CPU times before and after (see :func:`benchmarks.harness.cpu_snapshot`).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..analysis import busy_fraction, concurrent_bound, summarize
from ..circuits import trivial_pub
from ..harness import BACKEND, Bench, RssSampler, cpu_snapshot, emulator_memory, wall
from ..machine import cores
from ..report import Target, WorkloadResult
from ._common import counts_total, timings_of

if TYPE_CHECKING:
    from aioruntime import AsyncRuntimeJob

NAME = "fan-out"
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Params:
    n: int = 1000
    shots: int = 100
    #: Targets (instant clock): zero errors, at least this many jobs/s.
    min_jobs_per_s: float = 300.0


def jobs(params: Params) -> int:
    return params.n


def run(bench: Bench, params: Params) -> WorkloadResult:
    before = emulator_memory()
    with RssSampler(interval=0.05) as sampler:
        measured = bench.run(lambda: _measure(bench, params))
    return _result(bench, params, measured, before, sampler)


def _cpu_per_job(start: dict[str, float], end: dict[str, float], n: int) -> dict[str, float]:
    """CPU milliseconds per job spent in each place between two :func:`cpu_snapshot` calls
    (workers that started or ended in between are counted only while alive at both)."""
    return {k: max(0.0, end[k] - start.get(k, 0.0)) / n * 1e3 for k in end}


async def _measure(bench: Bench, prm: Params) -> dict[str, Any]:
    from aioruntime import AsyncSamplerV2

    bench.progress.describe(f"{NAME} [{bench.clock}] {prm.n} jobs")
    async with bench.service() as service:
        backend = await service.backend(BACKEND)
        isa = trivial_pub(backend.target)
        sampler = AsyncSamplerV2(mode=backend)
        errors: list[str] = []
        handles: list[AsyncRuntimeJob] = []

        async def one() -> float | None:
            t0 = wall()
            try:
                job = await sampler.run([isa], shots=prm.shots)
                handles.append(job)
                result = await job
                if counts_total(result) != prm.shots:
                    raise RuntimeError(f"job {job.job_id()}: wrong number of shots")
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return None
            finally:
                bench.progress.advance()
            return wall() - t0

        cpu0 = cpu_snapshot()
        t0 = wall()
        latencies = await asyncio.gather(*(one() for _ in range(prm.n)))
        elapsed = wall() - t0
        cpu1 = cpu_snapshot()
        stats = service.statistics()
        timings = await timings_of([j for j in handles if j.done()])
    return {
        "cpu_ms_per_job": _cpu_per_job(cpu0, cpu1, prm.n),
        "timings": timings,
        "wall_s": elapsed,
        "latencies": [lat for lat in latencies if lat is not None],
        "errors": errors,
        "client_statistics": repr(stats),
        "emulator_statistics": repr(bench.emu.statistics().backend(BACKEND))
        if hasattr(bench.emu, "statistics")
        else None,
    }


def _result(
    bench: Bench, prm: Params, m: dict[str, Any], before: dict[str, Any], rss: RssSampler
) -> WorkloadResult:
    lat = summarize(m["latencies"])
    throughput = prm.n / m["wall_s"]
    errors = len(m["errors"])
    peak = rss.peak or before
    timings = m["timings"]
    stages: dict[str, Any] = {}
    if timings:
        bound = concurrent_bound(timings, bench.lanes)
        stages = {
            "bound": bound.as_dict(),
            "max_jobs_per_s": len(timings) / bound.value,
            "qpu_busy_fraction": busy_fraction([t.qpu_span for t in timings]),
            "q_s": summarize([t.q for t in timings]),
            "c_pre_s": summarize([t.c_pre for t in timings]),
            "c_post_s": summarize([t.c_post for t in timings]),
        }
    rows = [
        {
            "jobs": prm.n,
            "wall_s": m["wall_s"],
            "jobs_per_s": throughput,
            "p50_ms": lat["p50"] * 1e3,
            "p95_ms": lat["p95"] * 1e3,
            "errors": errors,
            "Q_p50_ms": stages["q_s"]["p50"] * 1e3 if stages else float("nan"),
            "bound_jobs_per_s": stages.get("max_jobs_per_s", float("nan")),
            "qpu_busy": stages.get("qpu_busy_fraction", float("nan")),
            "peak_rss_MiB": peak["total_rss"] / MIB,
            "main_MiB": peak["main_rss"] / MIB,
            "workers_MiB": peak["children_rss"] / MIB,
            "workers": peak["children"],
        }
    ]
    targets = [Target(name="fan-out errors", value=float(errors), op="==", limit=0.0)]
    if bench.clock == "instant":
        targets.append(
            Target(
                name="fan-out throughput",
                value=throughput,
                op=">=",
                limit=prm.min_jobs_per_s,
                unit=" jobs/s",
            )
        )
    notes = [
        "bound_jobs_per_s: n / max(C_pre + ΣQ + C_post, Σ(C+Q)/L) from the jobs' own stage times "
        "(the most this run's QPU and lanes could have delivered); Q_p50_ms: median QPU span",
        "peak RSS = this process (the client; the emulator's event loop too when it runs in a "
        "thread) + all its child processes (the emulator's workers; its own process too with "
        f"--emulator process), sampled every 50 ms ({rss.samples} samples); before the run: "
        f"{before['total_rss'] / MIB:.0f} MiB ({before['children']} child processes)",
    ]
    cpu = m["cpu_ms_per_job"]
    cpu_total = sum(cpu.values())
    notes.append(
        "CPU per job (ms): "
        + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
        + f"; total {cpu_total:.1f} ms, so {cores()} cores could do at most "
        f"{cores() / cpu_total * 1e3:.0f} jobs/s"
        if cpu_total > 0
        else "CPU per job: not measured"
    )
    if m["errors"]:
        notes.append(f"first error: {m['errors'][0]}")
    return WorkloadResult(
        workload=NAME,
        clock=bench.clock,
        params={**asdict(prm), "backend": BACKEND},
        rows=rows,
        figures={
            "latency_s": lat,
            "throughput_jobs_per_s": throughput,
            "errors": m["errors"],
            "cpu_ms_per_job": cpu,
            "stages": stages,
            "memory_before": before,
            "memory_peak": peak,
            "rss_samples": rss.samples,
            "client_statistics": m["client_statistics"],
            "emulator_statistics": m["emulator_statistics"],
        },
        targets=targets,
        notes=notes,
    )
