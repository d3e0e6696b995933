"""Concurrency at scale against the real emulator: a hundred jobs in one batch, the event loop
staying responsive while jobs run and results decode, one waiter per job, and two VQE optimizers
sharing one session. Each scenario uses its own backend so the emulator statistics it asserts on
are its own."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from circuits import ghz
from client_helpers import LoopLagProbe
from qiskit.transpiler import generate_preset_pass_manager

from aioruntime import AsyncBatch, AsyncRuntimeService, AsyncSamplerV2
from emulator.testing import EmulatorThread

pytestmark = pytest.mark.asyncio(loop_scope="module")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "concurrent_vqe.py"


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("concurrent_vqe", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("concurrent_vqe", module)
    spec.loader.exec_module(module)
    return module


async def test_hundred_sampler_runs_in_one_batch(
    service: AsyncRuntimeService, emulator: EmulatorThread, record_property: Any
) -> None:
    torino = await service.backend("ibm_torino")
    pm = generate_preset_pass_manager(optimization_level=1, target=torino.target, seed_transpiler=1)
    isa = pm.run(ghz(3))
    tag = f"hundred-{os.getpid()}"
    start = time.perf_counter()
    async with AsyncBatch(torino) as batch:
        sampler = AsyncSamplerV2(mode=batch, options={"environment": {"job_tags": [tag]}})
        jobs = await asyncio.gather(*(sampler.run([isa], shots=100) for _ in range(100)))
        submitted = time.perf_counter() - start
        results = await asyncio.gather(*jobs)
    elapsed = time.perf_counter() - start
    assert len({j.job_id() for j in jobs}) == 100 and {j.session_id for j in jobs} == {
        batch.session_id
    }
    assert all(r[0].data.meas.num_shots == 100 for r in results)
    assert all(set(r[0].data.meas.get_counts()) <= {"000", "111"} for r in results)
    stats = (await anyio.to_thread.run_sync(emulator.statistics)).backend("ibm_torino")
    assert stats.completed == 100
    assert stats.lanes.peak_busy > 1, stats  # classical lanes worked in parallel
    waits = service.statistics().waits
    assert waits.mode == "long-poll" and waits.requests <= 2 * 100 + 10  # no polling storm
    record_property("batch100_seconds", round(elapsed, 2))
    print(
        f"\n100 batch jobs: submitted in {submitted:.2f} s, all results in {elapsed:.2f} s; "
        f"lanes peak_busy={stats.lanes.peak_busy}, wait requests={waits.requests}"
    )

    # paging by count: 100 jobs come back 20 per page
    start_log = len(emulator.requests)
    listed = [j async for j in service.jobs(job_tags=[tag], limit=None)]
    assert len(listed) == 100
    assert {j.job_id() for j in listed} == {j.job_id() for j in jobs}
    pages = [r for r in emulator.requests[start_log:] if r["path"].endswith("/jobs")]
    assert len(pages) == 5


async def test_event_loop_stays_responsive(
    service: AsyncRuntimeService, record_property: Any
) -> None:
    """While 20 jobs (4 PUBs of 4096 shots each) are encoded, submitted, awaited and decoded,
    nothing the client runs on the event loop blocks it: within any 5 ms sleep of a probe task
    the loop thread burns less than 20 ms of CPU (its own CPU time, which a busy machine does
    not inflate). How late the probe wakes in wall time depends on the machine's load as much
    as on the client, so it is recorded and printed, not asserted (the benchmarks measure
    latency). The heap that exists before the measurement (qiskit, the in-process emulator,
    the 156-qubit Target) is frozen out of the garbage collector first, as a latency-minded
    client does: a full collection pauses every thread for 0.1-0.3 s.
    """
    fez = await service.backend("ibm_fez")
    pm = generate_preset_pass_manager(optimization_level=1, target=fez.target, seed_transpiler=1)
    circuits = [pm.run(ghz(12)) for _ in range(4)]
    gc.collect()
    gc.freeze()
    try:
        async with LoopLagProbe() as probe:
            async with AsyncBatch(fez) as batch:
                sampler = AsyncSamplerV2(mode=batch)
                jobs = await asyncio.gather(*(sampler.run(circuits, shots=4096) for _ in range(20)))
                results = await asyncio.gather(*jobs)
    finally:
        gc.unfreeze()
    assert all(len(r) == 4 and r[3].data.meas.num_shots == 4096 for r in results)
    record_property("max_loop_lag_ms", round(probe.max_lag * 1000, 2))
    record_property("reference_thread_lag_ms", round(probe.reference_max_lag * 1000, 2))
    record_property("max_loop_cpu_ms", round(probe.max_loop_cpu * 1000, 2))
    print(
        f"\nloop lag over {len(probe.lags)} probes while 20 jobs ran and decoded: max "
        f"{probe.max_lag * 1000:.1f} ms, median {statistics.median(probe.lags) * 1000:.2f} ms; "
        f"loop-thread CPU per probe max {probe.max_loop_cpu * 1000:.1f} ms; an idle reference "
        f"thread was up to {probe.reference_max_lag * 1000:.1f} ms late"
    )
    assert probe.max_loop_cpu < 0.020


async def test_awaiters_of_one_job_share_one_waiter(
    service: AsyncRuntimeService, emulator: EmulatorThread
) -> None:
    manila = await service.backend("ibm_manila")
    isa = generate_preset_pass_manager(optimization_level=1, target=manila.target).run(ghz(2))
    job = await AsyncSamplerV2(mode=manila).run([isa], shots=10)
    again = await service.job(job.job_id())  # a second handle to the same job
    start = len(emulator.requests)
    results = await asyncio.gather(*(h.result() for h in (job, again) for _ in range(50)))
    assert len({id(r) for r in results}) == 2  # decoded once per handle
    waits = [r for r in emulator.requests[start:] if r["path"].endswith(f"{job.job_id()}/wait")]
    assert len(waits) == 1


async def test_two_vqe_optimizers_share_one_session(
    service: AsyncRuntimeService, record_property: Any
) -> None:
    example = load_example()
    # fewer evaluations than the example's defaults: enough to converge near the minimum
    summary = await example.run_two_vqe(
        service, "ibm_manila", precision=0.01, maxiter={"COBYLA": 45, "Nelder-Mead": 60}
    )
    exact = summary["exact_energy"]
    assert exact == pytest.approx(-(2**0.5))
    optimizers = summary["optimizers"]
    assert set(optimizers) == {"COBYLA", "Nelder-Mead"}
    for method, entry in optimizers.items():
        # Both went most of the way down from the start (+1.32 at x0 = 1). How far depends on
        # the shot stream, which the fixed seed makes one path among many: over 8 seeds, each
        # optimizer ended 0.01-0.25 above the minimum (the emulator's sampling before and
        # after it drew shots from exact probabilities), so not within 0.1 as by luck before.
        assert abs(entry["energy"] - exact) < 0.35, (method, entry["energy"])
        assert entry["nfev"] == len(entry["history"]) > 10
    assert summary["session_id"]
    # both ran in the one session, told apart by their job tags
    for entry in optimizers.values():
        tagged = [j async for j in service.jobs(job_tags=[entry["tag"]], limit=None)]
        assert len(tagged) == entry["nfev"]
        assert {j.session_id for j in tagged} == {summary["session_id"]}
    # and concurrently: their wall times overlap almost entirely
    walls = [entry["wall_s"] for entry in optimizers.values()]
    assert summary["wall_s"] < sum(walls)
    record_property("vqe_seconds", round(summary["wall_s"], 1))
    print(
        f"\nVQE: {summary['jobs']} jobs in {summary['wall_s']:.1f} s; "
        + ", ".join(f"{m} {e['energy']:+.4f} ({e['nfev']} evals)" for m, e in optimizers.items())
    )


async def test_cancelling_the_vqe_run_stops_both_optimizers_and_closes_the_session(
    service: AsyncRuntimeService, emulator: EmulatorThread
) -> None:
    example = load_example()
    loop = asyncio.get_running_loop()
    evaluations: dict[str, int] = {}
    underway = asyncio.Event()

    def progress(method: str, count: int, energy: float) -> None:  # in a worker thread
        evaluations[method] = count
        if len(evaluations) == 2 and min(evaluations.values()) >= 2:
            loop.call_soon_threadsafe(underway.set)

    start = len(emulator.requests)
    run = asyncio.create_task(
        example.run_two_vqe(service, "ibm_manila", maxiter={"COBYLA": 500}, progress=progress)
    )
    await underway.wait()
    at_cancel = dict(evaluations)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, timeout=60)
    # each optimizer stopped at its next evaluation: at most one more job each
    assert all(evaluations[m] <= at_cancel[m] + 1 for m in at_cancel)
    sent = [r for r in emulator.requests[start:] if r["method"] == "PATCH"]
    assert len(sent) == 1  # the session was closed on the way out
