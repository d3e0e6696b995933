"""``python -m benchmarks.scaleout``: QPU-bound throughput against the number of backends, on
each worker plane.

The emulator runs in its own process (``EmulatorProcess``) and serves ``B`` aliases of
``ibm_manila`` (``b0=ibm_manila,b1=ibm_manila,...``), ``--lanes`` lanes each, under
``scaled:K``: a job holds its backend's QPU for ``K *`` its modelled QPU time (a trivial
100-shot job is modelled at about 2 s), so jobs are QPU-bound and each backend completes at
most ``1 / (K * q)`` jobs per second. For ``n`` = 1, 2, 4, ... ``B``, ``--jobs`` jobs per backend
are sent at once with aioruntime, in job mode, to the first ``n`` backends; throughput is their
number over the wall time from the first submission to the last result, next to the bound
``n / (K * q)``. Everything on the emulator's side that is not the QPU hold (its event loop,
the lanes' pre- and post-processing, the QPUs' Aer calls, and with Ray the actor calls) must
keep up with ``n`` backends: where throughput leaves the bound, that is what ran out.

With ``--workers ray`` the emulator starts a local Ray instance (``--ray-address`` joins a
cluster instead): on one machine, Ray cannot add CPUs, only its own costs; across machines it
adds the nodes' cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import machine
from .harness import WORKERS, aio_service
from .report import run_stamp

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def backend_names(count: int) -> list[str]:
    return [f"b{i}" for i in range(count)]


def _counts(sizes: int) -> list[int]:
    out, n = [], 1
    while n < sizes:
        out.append(n)
        n *= 2
    return [*out, sizes]


async def _round(emu: Any, names: Sequence[str], per_backend: int) -> dict[str, Any]:
    from aioruntime import AsyncSamplerV2

    from .circuits import trivial_pub

    async with aio_service(emu) as service:
        backends = [await service.backend(name) for name in names]
        pubs = [trivial_pub(b.target) for b in backends]

        async def one(backend: Any, pub: Any) -> float:
            job = await AsyncSamplerV2(mode=backend).run([pub], shots=100)
            result = await job
            assert result[0].data.meas.num_shots == 100
            return float(await job.usage())

        t0 = time.perf_counter()
        usages = await asyncio.gather(
            *(
                one(b, pub)
                for b, pub in zip(backends, pubs, strict=True)
                for _ in range(per_backend)
            )
        )
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "jobs": len(usages), "q_s": statistics.fmean(usages)}


def run(
    workers: str, *, backends: int, per_backend: int, clock: str, lanes: int, address: str | None
) -> list[dict[str, Any]]:
    from emulator.config import ClockSpec
    from emulator.testing import EmulatorProcess

    scale = ClockSpec.parse(clock).scale
    names = backend_names(backends)
    spec = ",".join(f"{n}=ibm_manila" for n in names)
    args = ["--clock", clock, "--backends", spec, "--lanes", str(lanes), "--ephemeral"]
    args += ["--workers", workers, *(["--ray-address", address] if address else [])]
    rows = []
    t0 = time.perf_counter()
    with EmulatorProcess(*args) as emu:
        started = time.perf_counter() - t0
        # unmeasured, at full concurrency: every backend's lanes and QPU start (Ray starts an
        # actor in seconds, at most as many at once per node as it has CPUs)
        asyncio.run(_round(emu, names, per_backend))
        for n in _counts(backends):
            measured = asyncio.run(_round(emu, names[:n], per_backend))
            bound = n / (scale * measured["q_s"])
            rows.append(
                {
                    "workers": workers,
                    "backends": n,
                    **measured,
                    "jobs_per_s": measured["jobs"] / measured["wall_s"],
                    "bound_jobs_per_s": bound,
                    "emulator_start_s": started,
                }
            )
            print(_row(rows[-1]), flush=True)
        emu.stop()
    return rows


def actor_memory(workers: str) -> list[dict[str, Any]]:
    """RSS and PSS of each worker of an emulator serving the default backends: warmed, then
    after one noisy (``full``) Bell job per backend (Aer and the noise model loaded). PSS counts
    shared pages proportionally: the process plane's workers share their zygote's pages, Ray's
    actors import everything each on their own."""
    import psutil

    from emulator.config import Config
    from emulator.testing import EmulatorThread

    from .circuits import trivial_pub

    def snapshot(emu: EmulatorThread) -> dict[int, tuple[str, int, int]]:
        plane: Any = emu.scheduler.plane
        if workers == "ray":
            roles = {a["pid"]: a["role"] for a in plane.statistics()["actors"]}
        else:
            roles = {pid: "lane" for pid in plane.lane_pool.pids}
            roles |= {pid: "qpu" for pid in plane.qpu_pool.pids}
        out = {}
        for pid, role in roles.items():
            info = psutil.Process(pid).memory_full_info()
            out[pid] = (role, info.rss, info.pss)
        return out

    async def one_job_each(emu: EmulatorThread) -> None:
        from aioruntime import AsyncSamplerV2

        async with aio_service(emu) as service:
            jobs = []
            for name in ("ibm_fez", "ibm_torino", "ibm_manila"):
                backend = await service.backend(name)
                # the job's noise level goes as an experimental option (see the README)
                sampler = AsyncSamplerV2(
                    mode=backend, options={"experimental": {"noise_level": "full"}}
                )
                jobs.append(await sampler.run([trivial_pub(backend.target)], shots=100))
            await asyncio.gather(*jobs)

    config = Config(port=0, workers=workers, data_dir=Path(":memory:"))
    with EmulatorThread(config) as emu:
        emu.run(emu.scheduler.warm, timeout=600)  # joins the background warm-up, if running
        warmed = snapshot(emu)
        asyncio.run(one_job_each(emu))
        used = snapshot(emu)
    return [
        {
            "workers": workers,
            "pid": pid,
            "role": role,
            "warmed_mib": rss / 2**20,
            "warmed_pss_mib": pss / 2**20,
            "after_a_job_mib": used.get(pid, (role, 0, 0))[1] / 2**20,
            "after_a_job_pss_mib": used.get(pid, (role, 0, 0))[2] / 2**20,
        }
        for pid, (role, rss, pss) in sorted(warmed.items(), key=lambda kv: kv[1][0])
    ]


def call_overhead(workers: str, calls: int) -> dict[str, float]:
    """Median wall ms of one plane call, one at a time, on a warmed plane (no emulator): a
    trivial call, and one carrying 100 kB each way (a prepared job's order of size)."""
    import operator

    from emulator.workers import ProcessPlane

    async def measure() -> dict[str, float]:
        plane: Any
        if workers == "ray":
            from emulator.rayplane import RayPlane

            plane = RayPlane(backends={"b0": "manila"}, lanes=1)
        else:
            plane = ProcessPlane(backends=1, lanes=1)
        try:
            await plane.warm(("manila",))
            out = {}
            payload = b"x" * 100_000
            for name, func, args in [
                ("trivial_ms", operator.add, (1, 2)),
                ("100kB_ms", operator.concat, (payload, b"")),
            ]:
                times = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    await plane.lane(func, *args)
                    times.append((time.perf_counter() - t0) * 1e3)
                out[name] = statistics.median(times)
            return out
        finally:
            await plane.aclose()

    return asyncio.run(measure())


def _row(r: dict[str, Any]) -> str:
    share = r["jobs_per_s"] / r["bound_jobs_per_s"]
    return (
        f"{r['workers']:>8} {r['backends']:>8} {r['jobs']:>5} {r['wall_s']:>8.2f} "
        f"{r['jobs_per_s']:>9.1f} {r['bound_jobs_per_s']:>9.1f} {share:>8.2f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__)
    p.add_argument("--workers", default="process,ray", help="comma-separated, from process,ray")
    p.add_argument("--backends", type=int, default=8, help="aliases of ibm_manila (default 8)")
    p.add_argument("--jobs", type=int, default=8, help="jobs per backend per round (default 8)")
    p.add_argument("--clock", default="scaled:0.1", help="a scaled clock (default scaled:0.1)")
    p.add_argument("--lanes", type=int, default=2, help="lanes per backend (default 2)")
    p.add_argument("--ray-address", default=None, help="with ray: join this cluster")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--memory", action="store_true", help="instead: RSS of each worker, default backends"
    )
    p.add_argument(
        "--calls", type=int, default=0, help="instead: median time of N plane calls, per plane"
    )
    args = p.parse_args(argv)
    planes = [w.strip() for w in args.workers.split(",") if w.strip()]
    if unknown := set(planes) - set(WORKERS):
        print(f"error: unknown worker plane(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if args.calls:
        for workers in planes:
            times = call_overhead(workers, args.calls)
            print(f"{workers:>8} " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()))
        return 0
    if args.memory:
        print(
            f"{'workers':>8} {'role':>12} {'warmed RSS':>11} {'PSS':>6} {'after a job RSS':>16} "
            f"{'PSS':>6}  (MiB)"
        )
        for workers in planes:
            for r in actor_memory(workers):
                print(
                    f"{workers:>8} {r['role']:>12} {r['warmed_mib']:>11.0f} "
                    f"{r['warmed_pss_mib']:>6.0f} {r['after_a_job_mib']:>16.0f} "
                    f"{r['after_a_job_pss_mib']:>6.0f}",
                    flush=True,
                )
        return 0
    print(
        f"scale-out, {args.clock}, {args.lanes} lanes, {args.jobs} jobs per backend; load "
        f"{machine.load()}"
    )
    print(
        f"{'workers':>8} {'backends':>8} {'jobs':>5} {'wall_s':>8} {'jobs/s':>9} "
        f"{'bound/s':>9} {'of bound':>8}"
    )
    rows = []
    for workers in planes:
        rows += run(
            workers,
            backends=args.backends,
            per_backend=args.jobs,
            clock=args.clock,
            lanes=args.lanes,
            address=args.ray_address,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scaleout_{run_stamp()}.json"
    info = {"machine": machine.describe(), "load_after": machine.load(), "args": vars(args)}
    path.write_text(json.dumps({"run": info, "rows": rows}, indent=1, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
