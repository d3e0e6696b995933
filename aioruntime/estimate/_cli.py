"""``python -m aioruntime.estimate``: price a workload and time it before it runs.

::

    python -m aioruntime.estimate --backend ibm_fez --workload executor-estimator \\
        --shots 1000 --jobs 10 --idle 5

The connection comes from ``--url`` / ``--token`` / ``--instance`` / ``--iam-url`` or the
official variables (``QISKIT_IBM_URL``, ``QISKIT_IBM_TOKEN``, ``QISKIT_IBM_INSTANCE``,
``IAM_URL``). A workload is a built-in one (``--workload``, :data:`WORKLOADS`), or a Python file
(``--file``) defining ``workload(backend)`` (plain or ``async``) that returns a list of
:class:`~aioruntime.estimate.JobSpec`, or a ``JOBS`` list; ``--jobs N`` repeats it N times.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import runpy
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ._measure import JobSpec, WorkloadEstimate, estimate_workload

if TYPE_CHECKING:
    from ..backend import AsyncBackend

__all__ = ["WORKLOADS", "main"]


def _bell(measure: bool) -> Any:
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    if measure:
        qc.measure_all()
    return qc


def _isa(backend: AsyncBackend, circuit: Any) -> Any:
    from qiskit.transpiler import generate_preset_pass_manager

    pm = generate_preset_pass_manager(optimization_level=1, target=backend.target)
    return pm.run(circuit)


def _observables(isa: Any) -> list[Any]:
    from qiskit.quantum_info import SparsePauliOp

    return [SparsePauliOp(label).apply_layout(isa.layout) for label in ("ZZ", "XX")]


def _sampler(backend: AsyncBackend, shots: int) -> JobSpec:
    return JobSpec("sampler", [_isa(backend, _bell(True))], shots=shots, label="bell sampler")


def _estimator(backend: AsyncBackend, shots: int) -> JobSpec:
    isa = _isa(backend, _bell(False))
    return JobSpec(
        "estimator", [(isa, _observables(isa))], precision=shots**-0.5, label="bell estimator"
    )


def _executor_sampler(backend: AsyncBackend, shots: int) -> JobSpec:
    isa = _isa(backend, _bell(True))
    options = {"twirling": {"enable_gates": True, "enable_measure": True}}
    return JobSpec("executor_sampler", [isa], options, shots=shots, label="bell, twirled")


def _executor_estimator(backend: AsyncBackend, shots: int) -> JobSpec:
    isa = _isa(backend, _bell(False))
    options = {"default_shots": shots}  # resilience level 1: measurement twirling and TREX
    return JobSpec("executor_estimator", [(isa, _observables(isa))], options, label="bell, TREX")


def _executor_pec(backend: AsyncBackend, shots: int) -> JobSpec:
    isa = _isa(backend, _bell(False))
    options = {"default_shots": shots, "resilience": {"pec_mitigation": True}}
    return JobSpec("executor_estimator", [(isa, _observables(isa))], options, label="bell, PEC")


#: Built-in workloads: a Bell pair on the device, one job each, ``--shots`` per job.
WORKLOADS: dict[str, Callable[[AsyncBackend, int], JobSpec]] = {
    "sampler": _sampler,
    "estimator": _estimator,
    "executor-sampler": _executor_sampler,
    "executor-estimator": _executor_estimator,
    "executor-pec": _executor_pec,
}


async def _specs(args: argparse.Namespace, backend: AsyncBackend) -> list[JobSpec]:
    if args.file:
        namespace = runpy.run_path(args.file, run_name="__workload__")
        if "workload" in namespace:
            made = namespace["workload"](backend)
            specs = list(await made if inspect.isawaitable(made) else made)
        else:
            specs = list(namespace["JOBS"])
    else:
        build = WORKLOADS[args.workload]
        specs = [await asyncio.to_thread(build, backend, args.shots)]
    return specs * int(args.jobs)  # the same objects: each distinct spec is dry-run once


async def _run(args: argparse.Namespace) -> WorkloadEstimate:
    from aioruntime import AsyncRuntimeService

    async with AsyncRuntimeService(
        url=args.url, token=args.token, instance=args.instance, iam_url=args.iam_url
    ) as service:
        backend = await service.backend(args.backend)
        return await estimate_workload(
            backend,
            await _specs(args, backend),
            idle_s=args.idle,
            interactive_ttl_s=args.ttl,
            lanes=args.lanes,
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aioruntime.estimate",
        description="What a workload costs as single jobs, a batch and a session, and how long "
        "it takes, from dry runs (nothing runs on the QPU, nothing is billed).",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--workload", choices=sorted(WORKLOADS), default="executor-estimator")
    what.add_argument("--file", help="a Python file defining workload(backend) or JOBS")
    parser.add_argument("--backend", default="ibm_fez")
    parser.add_argument("--shots", type=int, default=1000, help="shots per job (built-ins)")
    parser.add_argument("--jobs", type=int, default=1, help="repeat the workload N times")
    parser.add_argument("--idle", type=float, default=0.0, help="s between jobs in a session")
    parser.add_argument("--ttl", type=float, default=60.0, help="session interactive TTL, s")
    parser.add_argument("--lanes", type=int, help="classical lanes (default: the server's, or 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--url", help="runtime URL (default: $QISKIT_IBM_URL)")
    parser.add_argument("--token", help="API key (default: $QISKIT_IBM_TOKEN)")
    parser.add_argument("--instance", help="instance CRN (default: $QISKIT_IBM_INSTANCE)")
    parser.add_argument("--iam-url", help="IAM URL (default: $IAM_URL or IBM Cloud's)")
    return parser


def main(argv: Sequence[str] | None = None) -> WorkloadEstimate:
    """Parse ``argv``, estimate, print the table (or JSON) and return the estimate."""
    args = _parser().parse_args(argv)
    if args.jobs < 1 or args.shots < 1:
        raise SystemExit("--jobs and --shots must be at least 1")
    estimate = asyncio.run(_run(args))
    if args.json:
        print(json.dumps(asdict(estimate), indent=2))
    else:
        sys.stdout.write(estimate.table())
    return estimate
