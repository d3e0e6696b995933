"""overhead: the end-to-end latency of a trivial job, one at a time.

The PUB is one qubit, a Hadamard and a measurement, transpiled for ``ibm_fez``, with ``shots``
shots. Each client sends it ``reps`` times, waiting for each result before the next:

* **aer in-process**: ``qiskit_aer.primitives.SamplerV2().run([pub]).result()``, no service;
* **aioruntime**: ``await (await AsyncSamplerV2(mode=backend).run([pub])).result()``;
* **aioruntime executor**: the same with ``AsyncExecutorSamplerV2``, IBM's recommended path
  (the PUB becomes a ``QuantumProgram`` on the client, an ``executor`` job runs it, the client
  decodes the bits into a ``PrimitiveResult``); not part of the target, reported beside it;
* **official**: ``SamplerV2(mode=backend).run([pub]).result()`` with ``qiskit-ibm-runtime``.
  Its ``result()`` polls the job status every 0.5 s in job mode (``RuntimeJobV2.
  wait_for_final_state``), so its latency is mostly that poll interval.

Aer and aioruntime's two paths take turns: ``rounds`` rounds, each a block of Aer's
repetitions, then aioruntime's, then the executor's (``reps`` in all per client, split evenly),
the first ``warmup`` of each block not counted. The target is a difference of two medians, and
a shared machine's speed drifts within seconds (Aer's own p50 over 50 runs moved between 0.78
and 1.23 ms from one second to the next): measured one client after the other, the drift went
into the difference. Taking turns puts each client in every phase of the run; each block starts
warm, as a loop of jobs runs. The official client (0.5 s a job) runs after, at most
``official_reps`` times.

For aioruntime the emulator's stage times split each latency into the emulator's pipeline
(first lane entry to last lane exit) and the rest (client encode/decode, HTTP, storage, waking
the waiter).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from ..analysis import STAGES, JobTiming, summarize
from ..circuits import trivial_pub
from ..harness import BACKEND, Bench, wall
from ..report import Target, WorkloadResult
from ._common import counts_total

NAME = "overhead"


@dataclass(frozen=True, slots=True, kw_only=True)
class Params:
    #: Counted repetitions per client (Aer, aioruntime, its executor path).
    reps: int = 300
    #: Turns the clients take; each takes ``reps / rounds`` (and ``warmup``) per turn.
    rounds: int = 6
    #: Uncounted repetitions at the start of each block.
    warmup: int = 3
    shots: int = 100
    #: Target (instant clock): aioruntime median - Aer median ≤ this, in ms.
    added_ms_max: float = 3.0
    official: bool = True
    #: The official client's counted repetitions, at most (each waits for a 0.5 s poll).
    official_reps: int = 50


def _blocks(prm: Params) -> list[int]:
    """Counted repetitions in each of a client's blocks: ``reps`` split over the rounds."""
    rounds = max(1, min(prm.rounds, prm.reps))
    return [prm.reps // rounds + (i < prm.reps % rounds) for i in range(rounds)]


def jobs(params: Params) -> int:
    per_client = params.reps + params.warmup * len(_blocks(params))
    official = min(params.reps, params.official_reps) + params.warmup
    return 3 * per_client + (official if params.official else 0)


def run(bench: Bench, params: Params) -> WorkloadResult:
    aio = bench.run(lambda: _interleaved(bench, params))
    isa = aio.pop("isa")
    latencies: dict[str, list[float]] = aio.pop("latencies")
    if params.official:
        latencies["official"] = _official(bench, params, isa)
    return _result(bench, params, latencies, aio)


def _time_blocking_runs(
    bench: Bench, prm: Params, sampler: Any, isa: Any, who: str, reps: int
) -> list[float]:
    """Wall seconds of ``reps`` blocking ``sampler.run(...).result()`` calls, after
    ``prm.warmup`` untimed ones."""
    out = []
    for i in range(prm.warmup + reps):
        t0 = wall()
        result = sampler.run([isa], shots=prm.shots).result()
        elapsed = wall() - t0
        if counts_total(result) != prm.shots:
            raise RuntimeError(f"{who} returned the wrong number of shots")
        if i >= prm.warmup:
            out.append(elapsed)
        bench.progress.advance()
    return out


async def _interleaved(bench: Bench, prm: Params) -> dict[str, Any]:
    """Aer, aioruntime and aioruntime's executor path taking turns (see the module's doc)."""
    from qiskit_aer.primitives import SamplerV2

    from aioruntime import AsyncExecutorSamplerV2, AsyncSamplerV2

    latencies: dict[str, list[float]] = {
        "aer in-process": [],
        "aioruntime": [],
        "aioruntime executor": [],
    }
    counted: list[Any] = []
    spans: list[tuple[float, float]] = []
    async with bench.service() as service:
        backend = await service.backend(BACKEND)
        isa = trivial_pub(backend.target)
        aer, sampler, executor = (
            SamplerV2(),
            AsyncSamplerV2(mode=backend),
            AsyncExecutorSamplerV2(mode=backend),
        )
        for turn, reps in enumerate(_blocks(prm), 1):
            bench.progress.describe(f"{NAME} [{bench.clock}] turn {turn}: aer in-process")
            # Blocking on the loop on purpose: nothing else runs on it between jobs.
            latencies["aer in-process"] += _time_blocking_runs(bench, prm, aer, isa, "Aer", reps)
            bench.progress.describe(f"{NAME} [{bench.clock}] turn {turn}: aioruntime")
            times, jobs_, spans_ = await _time_async_runs(bench, prm, sampler, isa, reps)
            latencies["aioruntime"] += times
            counted += jobs_
            spans += spans_
            bench.progress.describe(f"{NAME} [{bench.clock}] turn {turn}: aioruntime executor")
            times, _, _ = await _time_async_runs(bench, prm, executor, isa, reps)
            latencies["aioruntime executor"] += times
        bodies = await asyncio.gather(*(job.metrics() for job in counted))
    timings = [
        JobTiming.from_metrics(job.job_id(), body)
        for job, body in zip(counted, bodies, strict=True)
    ]
    phases = [_phases(body, t, *span) for body, t, span in zip(bodies, timings, spans, strict=True)]
    return {"isa": isa, "latencies": latencies, "timings": timings, "phases": phases}


async def _time_async_runs(
    bench: Bench, prm: Params, sampler: Any, isa: Any, reps: int
) -> tuple[list[float], list[Any], list[tuple[float, float]]]:
    """Wall seconds of ``reps`` ``await (await sampler.run(...))`` calls after ``prm.warmup``
    untimed ones, with their jobs and their spans on the epoch clock."""
    latencies, counted, spans = [], [], []
    for i in range(prm.warmup + reps):
        t0, epoch0 = wall(), time.time()
        job = await sampler.run([isa], shots=prm.shots)
        result = await job
        elapsed, epoch1 = wall() - t0, time.time()
        if counts_total(result) != prm.shots:
            raise RuntimeError(f"job {job.job_id()} returned the wrong number of shots")
        if i >= prm.warmup:
            latencies.append(elapsed)
            counted.append(job)
            spans.append((epoch0, epoch1))
        bench.progress.advance()
    return latencies, counted, spans


#: One trivial job's latency cut at the server's timestamps (all on this machine's wall clock:
#: client and emulator share it). The phases follow each other, so they add up to the latency.
PHASES = (
    ("client encode + POST", "start", "created"),
    ("store + lane admission", "created", "pre_start"),
    ("pre-process", "pre_start", "pre_end"),
    ("QPU turn", "pre_end", "qpu_start"),
    ("QPU (Aer + hold)", "qpu_start", "qpu_end"),
    ("post lane turn", "qpu_end", "post_start"),
    ("post-process", "post_start", "post_end"),
    ("finish", "post_end", "finished"),
    ("store, wake, GET result, decode", "finished", "done"),
)


def _phases(body: dict[str, Any], t: JobTiming, start: float, done: float) -> dict[str, float]:
    stamps = body.get("timestamps") or {}
    points = {
        "start": start,
        "done": done,
        "created": datetime.fromisoformat(stamps["created"]).timestamp(),
        "finished": datetime.fromisoformat(stamps["finished"]).timestamp(),
        **{name: getattr(t, name) for name in STAGES},
    }
    return {label: points[b] - points[a] for label, a, b in PHASES}


def _official(bench: Bench, prm: Params, isa: Any) -> list[float]:
    from qiskit_ibm_runtime import SamplerV2

    bench.progress.describe(f"{NAME} [{bench.clock}] official client")
    backend = bench.official_service().backend(BACKEND)
    sampler = SamplerV2(mode=backend)
    reps = min(prm.reps, prm.official_reps)
    return _time_blocking_runs(bench, prm, sampler, isa, "the official client", reps)


def _result(
    bench: Bench, prm: Params, latencies: dict[str, list[float]], aio: dict[str, Any]
) -> WorkloadResult:
    stats = {name: summarize(values) for name, values in latencies.items()}
    aer_p50 = stats["aer in-process"]["p50"]
    rows = []
    for name, s in stats.items():
        rows.append(
            {
                "client": name,
                "jobs": s["n"],
                "p50_ms": s["p50"] * 1e3,
                "p95_ms": s["p95"] * 1e3,
                "mean_ms": s["mean"] * 1e3,
                "added_p50_ms": (s["p50"] - aer_p50) * 1e3,
            }
        )
    timings = aio["timings"]
    split = {
        label: summarize([ph[label] for ph in aio["phases"]])["p50"] * 1e3 for label, _, _ in PHASES
    }
    added = (stats["aioruntime"]["p50"] - aer_p50) * 1e3
    notes = [
        "aioruntime latency by phase (p50 ms each; they follow each other): "
        + "; ".join(f"{label} {ms:.1f}" for label, ms in split.items())
    ]
    if prm.official:
        notes.append(
            "the official client's result() polls every 0.5 s for a job-mode job "
            "(RuntimeJobV2.wait_for_final_state)"
        )
    targets = []
    if bench.clock == "instant":
        targets.append(
            Target(
                name="aioruntime added p50 vs Aer",
                value=added,
                op="<=",
                limit=prm.added_ms_max,
                unit=" ms",
            )
        )
    return WorkloadResult(
        workload=NAME,
        clock=bench.clock,
        params={**asdict(prm), "backend": BACKEND},
        rows=rows,
        figures={
            "latency_s": stats,
            "aioruntime_phases_p50_ms": split,
            "added_p50_ms": added,
            "aioruntime_jobs": [t.as_dict() for t in timings],
            "latencies_s": latencies,
        },
        targets=targets,
        notes=notes,
    )
