"""batch-N: N independent Sampler jobs, one at a time versus all at once in a batch or session.

The same N PUBs (one parametrised ``efficient_su2`` circuit, N random parameter vectors) are
sent three times with aioruntime:

* **job**: ``AsyncSamplerV2(mode=backend)``; submit, await the result, then the next job;
* **batch**: all N submitted at once inside ``async with AsyncBatch(backend)``;
* **session**: the same inside ``async with AsyncSession(backend)``.

Wall time is the client's: from entering the mode (the batch/session is created then) to the
last result decoded. The bound comes from the emulator's own stage times of that mode's jobs
(:mod:`benchmarks.analysis`): ``Σ(C+Q)`` for job mode, ``max(C̄_pre + ΣQ + C̄_post, Σ(C+Q)/L)`` for
the concurrent modes.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..analysis import (
    JobTiming,
    busy_fraction,
    concurrent_bound,
    ideal_speedup,
    job_mode_estimate,
)
from ..circuits import su2_pubs
from ..harness import BACKEND, Bench, Stopwatch
from ..report import Target, WorkloadResult, result_filename
from ..timeline import draw_timeline
from ._common import counts_total, timings_of

if TYPE_CHECKING:
    from aioruntime import AsyncRuntimeJob

NAME = "batch-n"
MODES = ("job", "batch", "session")


@dataclass(frozen=True, slots=True, kw_only=True)
class Params:
    n: int = 20
    qubits: int = 8
    reps: int = 2
    shots: int = 1000
    #: Targets (scaled clocks only): wall ≤ bound x (1 + tolerance); QPU busy ≥ busy_min.
    tolerance: float = 0.05
    busy_min: float = 0.98


def jobs(params: Params) -> int:
    return params.n * len(MODES)


@dataclass(slots=True)
class ModeRun:
    wall_s: float
    cores: float  # average cores busy in this process tree while the mode ran
    jobs: list[AsyncRuntimeJob]
    timings: list[JobTiming]
    usage_s: float


def run(bench: Bench, params: Params) -> WorkloadResult:
    runs: dict[str, ModeRun] = bench.run(lambda: _measure(bench, params))
    return _result(bench, params, runs)


async def _measure(bench: Bench, prm: Params) -> dict[str, ModeRun]:
    from aioruntime import AsyncBatch, AsyncSamplerV2, AsyncSession

    progress = bench.progress
    async with bench.service() as service:
        backend = await service.backend(BACKEND)
        isa, values = su2_pubs(
            backend.target, n=prm.n, qubits=prm.qubits, reps=prm.reps, seed=bench.seed
        )
        runs: dict[str, ModeRun] = {}
        results: dict[str, Any] = {}  # by job id: their execution spans draw the QPU row

        async def one(sampler: AsyncSamplerV2, x: Any) -> AsyncRuntimeJob:
            job = await sampler.run([(isa, x)], shots=prm.shots)
            result = results[job.job_id()] = await job
            if counts_total(result) != prm.shots:
                raise RuntimeError(f"job {job.job_id()} returned the wrong number of shots")
            progress.advance()
            return job

        progress.describe(f"{NAME} [{bench.clock}] job mode")
        sampler = AsyncSamplerV2(mode=backend)
        with Stopwatch() as sw:
            job_jobs = [await one(sampler, x) for x in values]
        usages = await asyncio.gather(*(j.usage() for j in job_jobs))
        runs["job"] = ModeRun(
            sw.wall_s, sw.cores, job_jobs, await timings_of(job_jobs, results), sum(usages)
        )

        for name, cls in (("batch", AsyncBatch), ("session", AsyncSession)):
            progress.describe(f"{NAME} [{bench.clock}] {name} mode")
            mode = cls(backend)
            with Stopwatch() as sw:
                async with mode:
                    sampler = AsyncSamplerV2(mode=mode)
                    mode_jobs = list(await asyncio.gather(*(one(sampler, x) for x in values)))
            usage = await _settled_usage(mode)
            timings = await timings_of(mode_jobs, results)
            runs[name] = ModeRun(sw.wall_s, sw.cores, mode_jobs, timings, usage)
        return runs


async def _settled_usage(mode: Any) -> float:
    """The session's usage once it is closed (a batch or session closes when its last job is
    done after ``close()``; the close lands a moment after the PATCH)."""
    for _ in range(50):
        details = await mode.details()
        if details and details.get("state") == "closed":
            break
        await asyncio.sleep(0.02)
    usage = await mode.usage()
    return float(usage or 0.0)


def _result(bench: Bench, prm: Params, runs: dict[str, ModeRun]) -> WorkloadResult:
    lanes = bench.lanes
    rows: list[dict[str, Any]] = []
    figures: dict[str, Any] = {"modes": {}}
    base = runs["job"]
    for name in MODES:
        r = runs[name]
        t = r.timings
        if name == "job":
            bound_s = iso_bound_s = job_mode_estimate(t)
            bound_info: dict[str, Any] = {"job_mode_estimate_s": bound_s}
        else:
            bound = concurrent_bound(t, lanes)
            bound_s = bound.value
            bound_info = bound.as_dict()
            # The same bound from the job-mode stages, measured one job at a time: what this
            # mode would take if running jobs side by side did not slow each stage down.
            iso_bound_s = concurrent_bound(base.timings, lanes).value
            bound_info["isolated_bound_s"] = iso_bound_s
        busy = busy_fraction([j.qpu_span for j in t])
        window = max(j.post_end for j in t) - min(j.pre_start for j in t)
        c_pre = sum(j.c_pre for j in t) / len(t)
        c_post = sum(j.c_post for j in t) / len(t)
        q = sum(j.q for j in t) / len(t)
        rows.append(
            {
                "mode": name,
                "jobs": len(t),
                "wall_s": r.wall_s,
                "emu_window_s": window,
                "bound_s": bound_s,
                "wall/bound": r.wall_s / bound_s if bound_s > 0 else float("nan"),
                "iso_bound_s": iso_bound_s,
                "speedup": base.wall_s / r.wall_s,
                "qpu_busy": busy,
                "cpu_cores": r.cores,
                "C_pre_ms": c_pre * 1e3,
                "Q_ms": q * 1e3,
                "C_post_ms": c_post * 1e3,
                "usage_s": r.usage_s,
            }
        )
        figures["modes"][name] = {
            "wall_s": r.wall_s,
            "emulator_window_s": window,
            "bound": bound_info,
            "qpu_busy_fraction": busy,
            "usage_model_s": r.usage_s,
            "modelled_quantum_s_total": sum(j.quantum_seconds for j in t),
            "emulator_lag_s_total": sum(j.lag_s for j in t),
            "session_id": r.jobs[0].session_id if r.jobs else None,
            "jobs": [j.as_dict() for j in t],
        }
    c = sum(j.c for j in base.timings) / len(base.timings)
    q = sum(j.q for j in base.timings) / len(base.timings)
    figures["ideal_speedup_large_n"] = ideal_speedup(c, q, lanes)
    figures["job_mode_isolated"] = {"C_s": c, "Q_s": q}
    notes = [
        f"ideal speed-up for large N from job-mode stages: (C+Q)/max(Q, (C+Q)/L) = "
        f"{figures['ideal_speedup_large_n']:.2f} (C={c * 1e3:.1f} ms, Q={q * 1e3:.1f} ms, "
        f"L={lanes})",
        "bound_s: from this mode's own stage times (job: Σ(C+Q); batch/session: "
        "max(C_pre + ΣQ + C_post, Σ(C+Q)/L)); iso_bound_s: the same from the job-mode stages, "
        "i.e. if concurrency did not slow the stages down",
        "cpu_cores: CPU seconds of this process and its children (client, emulator, workers) "
        "per wall second while the mode ran",
        "usage_s is in model seconds: job = Σ quantum_seconds, batch = batch.usage(), "
        "session = session.usage()",
    ]
    targets = []
    if bench.clock.startswith("scaled") or bench.clock == "realtime":
        batch_row = rows[MODES.index("batch")]
        targets = [
            Target(
                name="batch wall / bound",
                value=batch_row["wall/bound"],
                op="<=",
                limit=1.0 + prm.tolerance,
            ),
            Target(name="batch QPU busy", value=batch_row["qpu_busy"], op=">=", limit=prm.busy_min),
        ]
    result = WorkloadResult(
        workload=NAME,
        clock=bench.clock,
        params={**asdict(prm), "lanes": lanes, "backend": BACKEND},
        rows=rows,
        figures=figures,
        targets=targets,
        notes=notes,
    )
    path = bench.out_dir / result_filename(result, bench.stamp, "_timeline.png")
    try:
        draw_timeline(
            {m: runs[m].timings for m in MODES},
            path,
            lanes=lanes,
            title=f"batch-N: {prm.n} Sampler jobs, efficient_su2({prm.qubits}, "
            f"reps={prm.reps}), {prm.shots} shots, {BACKEND}, clock "
            f"{bench.clock}",
            walls={m: runs[m].wall_s for m in MODES},
        )
    except Exception as exc:  # a figure must never lose the numbers
        result.notes.append(f"timeline not drawn: {type(exc).__name__}: {exc}")
    else:
        result.artifacts.append(str(path))
    return result
