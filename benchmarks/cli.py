"""``python -m benchmarks``: run the workloads against a freshly started emulator, print the
table, write the JSON (and the batch-N timelines) under ``--out``."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import machine
from .harness import PLACEMENTS, WORKERS, Bench, Progress, running_emulator, warm_up
from .report import WorkloadResult, render_results, run_stamp, write_json
from .workloads import batch_n, fan_out, overhead, two_vqe

__all__ = ["RunPlan", "build_parser", "main", "plan_from_args", "run_plan"]

WORKLOADS = ("batch-n", "two-vqe", "overhead", "fan-out")
DEFAULT_CLOCKS = ("instant", "scaled:0.01")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunPlan:
    workloads: tuple[str, ...] = WORKLOADS
    clocks: tuple[str, ...] = DEFAULT_CLOCKS
    batch_n: batch_n.Params = field(default_factory=batch_n.Params)
    two_vqe: two_vqe.Params = field(default_factory=two_vqe.Params)
    overhead: overhead.Params = field(default_factory=overhead.Params)
    fan_out: fan_out.Params = field(default_factory=fan_out.Params)
    out_dir: Path = DEFAULT_OUT
    lanes: int = 5
    #: "thread": the emulator in this process (EmulatorThread); "process": its own process.
    emulator: str = "process"
    #: The emulator's worker plane: "process" (local worker processes) or "ray" (Ray actors).
    workers: str = "process"
    warm: bool = True
    #: Freeze the client's loaded objects out of the garbage collector's reach after the
    #: warm-up (``gc.freeze``), as a latency-minded user of any qiskit process would: a full
    #: collection walks ~165,000 objects (qiskit, Aer, the targets), 150 ms on this machine,
    #: and stalls the client's loop and its codec threads alike.
    gc_freeze: bool = True
    progress: bool = True
    label: str = "full"

    @classmethod
    def quick(cls, **kwargs: Any) -> RunPlan:
        """Every workload and clock, smaller: under two minutes on two cores."""
        plan = cls(
            batch_n=batch_n.Params(n=10),
            two_vqe=two_vqe.Params(maxiter=10),
            overhead=overhead.Params(reps=10, rounds=2, warmup=1),
            fan_out=fan_out.Params(n=200),
            label="quick",
        )
        return replace(plan, **kwargs)

    @classmethod
    def demo(cls, **kwargs: Any) -> RunPlan:
        """The headline: batch-N under the scaled clock."""
        return replace(cls(workloads=("batch-n",), clocks=("scaled:0.01",), label="demo"), **kwargs)

    def jobs(self) -> int:
        per_clock = {
            "batch-n": batch_n.jobs(self.batch_n),
            "two-vqe": two_vqe.jobs(self.two_vqe),
            "overhead": overhead.jobs(self.overhead),
            "fan-out": fan_out.jobs(self.fan_out),
        }
        return sum(per_clock[w] for w in self.workloads) * len(self.clocks)


def _runner(name: str, plan: RunPlan) -> Callable[[Bench], WorkloadResult]:
    if name == "batch-n":
        return lambda b: batch_n.run(b, plan.batch_n)
    if name == "two-vqe":
        return lambda b: two_vqe.run(b, plan.two_vqe)
    if name == "overhead":
        return lambda b: overhead.run(b, plan.overhead)
    if name == "fan-out":
        return lambda b: fan_out.run(b, plan.fan_out)
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")


@dataclass(slots=True)
class RunOutcome:
    results: list[WorkloadResult]
    files: list[Path]
    info: dict[str, Any]
    table: str


def run_plan(plan: RunPlan) -> RunOutcome:
    """Start the emulator once per clock, warm it, run the workloads, write the files."""
    for name in plan.workloads:
        _runner(name, plan)  # unknown names fail before anything starts
    stamp = run_stamp()
    progress = Progress(plan.jobs(), enabled=plan.progress)
    results: list[WorkloadResult] = []
    startup: dict[str, Any] = {}
    info: dict[str, Any] = {
        "plan": plan.label,
        "emulator": plan.emulator,
        "workers": plan.workers,
        "client_gc_frozen": plan.gc_freeze,
        "machine": machine.describe(),
        "source": machine.source(),
        "load_before": machine.load(),
        "cpu_probe_before_ms": machine.cpu_probe_ms(),
    }
    t_run = time.perf_counter()
    try:
        for clock in plan.clocks:
            progress.describe(f"starting the emulator [{clock}]")
            t0 = time.perf_counter()
            with running_emulator(
                clock, lanes=plan.lanes, where=plan.emulator, workers=plan.workers
            ) as emu:
                started = time.perf_counter() - t0
                progress.describe(f"warming the workers [{clock}]")
                warmed = warm_up(emu) if plan.warm else 0.0
                if plan.gc_freeze:
                    gc.collect()
                    gc.freeze()
                startup[clock] = {"emulator_start_s": started, "warm_up_s": warmed}
                bench = Bench(
                    emu=emu,
                    clock=clock,
                    out_dir=plan.out_dir,
                    stamp=stamp,
                    progress=progress,
                    lanes=plan.lanes,
                )
                for name in plan.workloads:
                    t1 = time.perf_counter()
                    result = _runner(name, plan)(bench)
                    result.elapsed_s = time.perf_counter() - t1
                    results.append(result)
    finally:
        progress.close()
    info.update(
        startup=startup,
        total_s=time.perf_counter() - t_run,
        load_after=machine.load(),
        cpu_probe_after_ms=machine.cpu_probe_ms(),
    )
    files = write_json(results, plan.out_dir, stamp=stamp, run_info=info)
    table = render_results(results)
    return RunOutcome(results, files, info, table)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark aioruntime and the emulator: what concurrent submission buys.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="every workload, smaller (under two minutes on two cores)",
    )
    size.add_argument(
        "--demo", action="store_true", help="the headline workload only: batch-N under scaled:0.01"
    )
    p.add_argument("--workloads", help=f"comma-separated, from {','.join(WORKLOADS)}")
    p.add_argument("--clock", help="comma-separated clock modes, e.g. instant,scaled:0.01")
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="directory for the JSON and PNG files (default benchmarks/results)",
    )
    p.add_argument("--n", type=int, help="batch-N: number of jobs (default 20; quick 10)")
    p.add_argument(
        "--fan-out",
        type=int,
        dest="fan_out",
        help="fan-out: number of jobs (default 1000; quick 200)",
    )
    p.add_argument(
        "--emulator",
        choices=PLACEMENTS,
        default="process",
        help="run the emulator in its own process, as users run it (default: its own GIL, "
        "as a remote service), or in a thread of this process",
    )
    p.add_argument(
        "--workers",
        choices=WORKERS,
        default="process",
        help="the emulator's worker plane: local worker processes (default) or Ray actors on "
        "a local Ray instance (needs pip install 'aioruntime[ray]')",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-warm-up",
        action="store_true",
        help="skip the warm-up jobs (the first workload then pays the workers' imports)",
    )
    p.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave the client's objects to the garbage collector (its full collections then "
        "stall the client for ~150 ms now and then)",
    )
    p.add_argument(
        "--no-official",
        action="store_true",
        help="skip the official client's runs (overhead, two-vqe)",
    )
    return p


def plan_from_args(args: argparse.Namespace) -> RunPlan:
    plan = RunPlan.quick() if args.quick else RunPlan.demo() if args.demo else RunPlan()
    changes: dict[str, Any] = {
        "out_dir": args.out,
        "progress": not args.no_progress,
        "warm": not args.no_warm_up,
        "gc_freeze": not args.no_gc_freeze,
        "emulator": args.emulator,
        "workers": args.workers,
    }
    if args.workloads:
        changes["workloads"] = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    if args.clock:
        from emulator.config import ClockSpec

        clocks = tuple(c.strip() for c in args.clock.split(",") if c.strip())
        for c in clocks:
            ClockSpec.parse(c)  # a bad clock fails now, not after the first emulator ran
        changes["clocks"] = clocks
    if args.n:
        changes["batch_n"] = replace(plan.batch_n, n=args.n)
    if args.fan_out:
        changes["fan_out"] = replace(plan.fan_out, n=args.fan_out)
    if args.no_official:
        changes["overhead"] = replace(plan.overhead, official=False)
        changes["two_vqe"] = replace(plan.two_vqe, official=False)
    return replace(plan, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = plan_from_args(args)
        for name in plan.workloads:
            _runner(name, plan)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The official client logs a WARNING per service built ("Loading account with the given
    # token"); it says nothing about the measurements.
    logging.getLogger("qiskit_ibm_runtime").setLevel(logging.ERROR)
    desc = machine.describe()
    print(
        f"benchmarks ({plan.label}): workloads {', '.join(plan.workloads)}; clocks "
        f"{', '.join(plan.clocks)}; emulator in a {plan.emulator}, {plan.workers} workers; "
        "machine: "
        f"{desc['nproc']} cores, {desc['cpu_model']}, "
        f"{desc['memory_gib']:.1f} GiB; load {machine.load()}",
        flush=True,
    )
    outcome = run_plan(plan)
    print(outcome.table)
    starts = ", ".join(
        f"{c}: start {s['emulator_start_s']:.1f} s + warm-up {s['warm_up_s']:.1f} s"
        for c, s in outcome.info["startup"].items()
    )
    print(
        f"\nemulator {starts}; total {outcome.info['total_s']:.1f} s; "
        f"load before/after {outcome.info['load_before']} / {outcome.info['load_after']}; "
        f"CPU probe before/after {outcome.info['cpu_probe_before_ms']:.1f} / "
        f"{outcome.info['cpu_probe_after_ms']:.1f} ms (benchmarks.machine.cpu_probe_ms)"
    )
    for result in outcome.results:
        for artifact in result.artifacts:
            print(f"wrote {artifact}")
    for path in outcome.files:
        print(f"wrote {path}")
    return 0
