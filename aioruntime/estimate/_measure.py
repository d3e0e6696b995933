"""Measuring a workload with dry runs: :func:`estimate_workload`.

Each distinct :class:`JobSpec` is submitted once with ``dry_run=True``: to the backend's mock
twin, validated and pre-processed for real, with its modelled QPU time back
(``estimated_running_time_seconds``, ``job.usage_estimation()``), never run on the QPU, never
billed. The same REST calls work against IBM wherever IBM offers dry runs. From each dry run:

* Q: ``usage_estimation()["quantum_seconds"]``;
* the server's classical seconds before and after the QPU: the emulator's stage times
  (``metrics()["emulator"]["stages"]``); elsewhere, ``running`` → ``finished`` split in halves;
* the client's own seconds: ``run()`` up to the accepted submission, and decoding the (mock)
  result, which is the post-processing a real result gets.

Specs are measured one at a time, so no measurement slows another; the same spec object listed
several times (the CLI's ``--jobs N``) is measured once. An executor Estimator with PEC or PEA
learns its noise first: that noise-learner job is part of the workload, and is measured too; a
repeated spec learns only the first time, as one ``AsyncExecutorEstimatorV2`` running the same
layers again does (an optimizer loop).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from .. import protocol as p
from .._executor_work import warm
from .._submit import mock_twin
from ..errors import ApiError
from ..executor import AsyncExecutor
from ..executor_primitives import AsyncExecutorEstimatorV2, AsyncExecutorSamplerV2
from ..primitives import AsyncEstimatorV2, AsyncSamplerV2
from ._model import JobEstimate, ModeEstimate, modes

if TYPE_CHECKING:
    from ..backend import AsyncBackend
    from ..job import AsyncRuntimeJob

__all__ = ["JobSpec", "Primitive", "WorkloadEstimate", "estimate_workload"]

Primitive = Literal["sampler", "estimator", "executor_sampler", "executor_estimator", "executor"]

#: IBM's published figure, used when the server does not say (``GET …/aioruntime/capabilities``).
DEFAULT_LANES = 5


@dataclass(frozen=True, slots=True, eq=False)
class JobSpec:
    """One ``run()`` of a workload: the primitive (``sampler`` / ``estimator`` are the legacy
    ``AsyncSamplerV2`` / ``AsyncEstimatorV2``; ``executor_*`` the client-side ones;
    ``executor`` takes a ``QuantumProgram`` as ``pubs``), its PUBs and options (a dict or the
    primitive's options model), and the ``shots`` / ``precision`` argument of ``run()``."""

    primitive: Primitive
    pubs: Any
    options: Any = None
    shots: int | None = None
    precision: float | None = None
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.primitive


@dataclass(frozen=True, slots=True)
class WorkloadEstimate:
    """Each job's figures and what the workload costs and takes in each mode."""

    backend: str
    jobs: tuple[JobEstimate, ...]
    modes: tuple[ModeEstimate, ...]
    lanes: int
    workers: int
    idle_s: float
    interactive_ttl_s: float
    notes: tuple[str, ...] = field(default=())

    def mode(self, name: str) -> ModeEstimate:
        """The figures of ``"jobs"``, ``"batch"`` or ``"session"``."""
        return next(m for m in self.modes if m.mode == name)

    def table(self) -> str:
        """The estimate as a plain-text table (what ``python -m aioruntime.estimate`` prints):
        each measured job once, with how many times the workload runs it."""
        counts = Counter(job.job_ids for job in self.jobs)
        lines = [
            f"{self.backend}: {len(self.jobs)} job(s), measured by dry runs on its mock twin "
            f"(nothing ran on the QPU, nothing was billed)",
            "",
            f"{'job':<24} {'program':<13} {'n':>3} {'QPU s':>8} {'server s':>9} {'client s':>9}",
        ]
        for job in {job.job_ids: job for job in self.jobs}.values():
            lines.append(
                f"{job.label[:24]:<24} {job.program:<13} {counts[job.job_ids]:>3} "
                f"{job.quantum_s:>8.3f} {job.classical_s:>9.3f} {job.client_s:>9.3f}"
            )
        lines += ["", f"{'mode':<8} {'billed QPU s':>12} {'wall s':>9}  how"]
        for m in self.modes:
            lines.append(f"{m.mode:<8} {m.billed_s:>12.2f} {m.wall_s:>9.2f}  {m.how}")
        lines += ["", *self.notes]
        return "\n".join(lines).rstrip() + "\n"


def _primitive(spec: JobSpec, backend: AsyncBackend) -> Any:
    classes: dict[str, Any] = {
        "sampler": AsyncSamplerV2,
        "estimator": AsyncEstimatorV2,
        "executor_sampler": AsyncExecutorSamplerV2,
        "executor_estimator": AsyncExecutorEstimatorV2,
        "executor": AsyncExecutor,
    }
    options = spec.options
    if isinstance(options, BaseModel):  # the primitive may set a learned noise model on it
        options = options.model_copy(deep=True)
    return classes[spec.primitive](backend, options)


async def _submit(primitive: Any, spec: JobSpec) -> AsyncRuntimeJob:
    if spec.primitive == "executor":
        return await primitive.run(spec.pubs, dry_run=True)  # type: ignore[no-any-return]
    if spec.primitive.endswith("sampler"):
        return await primitive.run(spec.pubs, shots=spec.shots, dry_run=True)  # type: ignore[no-any-return]
    return await primitive.run(spec.pubs, precision=spec.precision, dry_run=True)  # type: ignore[no-any-return]


def _seconds(start: Any, stop: Any) -> float:
    if not start or not stop:
        return 0.0
    delta = datetime.fromisoformat(str(stop)) - datetime.fromisoformat(str(start))
    return max(0.0, delta.total_seconds())


async def _measure(
    job: AsyncRuntimeJob, label: str, client_pre_s: float, *, decode: bool = True
) -> JobEstimate:
    await job.wait()
    client_post_s = 0.0
    if decode:  # the mock result: raises if the dry run failed validation
        began = time.perf_counter()
        await job.result()
        client_post_s = time.perf_counter() - began
    metrics = await job.metrics()
    stages = (metrics.get("emulator") or {}).get("stages") or {}
    if stages:
        pre = _seconds(stages.get("pre_start"), stages.get("pre_end"))
        post = _seconds(stages.get("post_start"), stages.get("post_end"))
    else:  # IBM: no stages; a dry run's running time is its classical processing
        stamps = metrics.get("timestamps") or {}
        pre = post = _seconds(stamps.get("running"), stamps.get("finished")) / 2
    estimate = (await job.usage_estimation())["quantum_seconds"] or 0.0
    return JobEstimate(
        label=label,
        program=job.primitive_id,
        quantum_s=float(estimate),
        pre_s=pre,
        post_s=post,
        client_pre_s=client_pre_s,
        client_post_s=client_post_s,
        job_ids=(job.job_id(),),
    )


async def _dry_run(spec: JobSpec, backend: AsyncBackend) -> list[JobEstimate]:
    primitive = _primitive(spec, backend)
    out: list[JobEstimate] = []
    if isinstance(primitive, AsyncExecutorEstimatorV2):
        final = primitive.finalize_options().resilience
        needs_noise = final.pec_mitigation or (
            final.zne_mitigation and final.zne.amplifier == "pea"
        )
        if needs_noise and primitive.options.resilience.layer_noise_model is None:
            began = time.perf_counter()
            model = await primitive.learn_noise(spec.pubs, dry_run=True)
            (learner,) = primitive.noise_learner_jobs
            client = time.perf_counter() - began
            learned = await _measure(learner, f"{spec.name} (noise)", client, decode=False)
            out.append(learned)
            primitive.options.resilience.layer_noise_model = model
    began = time.perf_counter()
    job = await _submit(primitive, spec)
    out.append(await _measure(job, spec.name, time.perf_counter() - began))
    return out


async def _lanes(backend: AsyncBackend) -> int:
    try:
        body = await backend.context.api.get_json(p.EXT_CAPABILITIES)
    except ApiError:
        return DEFAULT_LANES
    lanes = (body or {}).get("lanes") if isinstance(body, dict) else None
    return int(lanes) if isinstance(lanes, int) and lanes > 0 else DEFAULT_LANES


async def estimate_workload(
    backend: AsyncBackend,
    specs: Sequence[JobSpec],
    *,
    idle_s: float = 0.0,
    interactive_ttl_s: float = 60.0,
    max_ttl_s: float = 8 * 3600.0,
    lanes: int | None = None,
) -> WorkloadEstimate:
    """Dry-run each distinct spec on ``backend``'s mock twin and model the workload.

    ``idle_s``: the user's time between a result and the next ``run()`` in a session;
    ``interactive_ttl_s`` / ``max_ttl_s``: the session's TTLs (IBM's 60 s and 8 h by default);
    ``lanes``: classical lanes of the backend (default: what the server reports, else 5).
    Raises what a dry run raises: :class:`~aioruntime.InputValueError` for input the client
    refuses, :class:`~aioruntime.JobFailedError` for input the server refuses."""
    # One-off costs are paid before measuring, not charged to the first job: loading the
    # twin's Target, starting a CPU-pool worker and its imports (one is enough: the
    # measurements run one at a time).
    await mock_twin(backend)
    if any(spec.primitive.startswith("executor") for spec in specs):
        await backend.context.run_cpu(warm)
    measured: dict[int, list[JobEstimate]] = {}
    jobs: list[JobEstimate] = []
    for spec in specs:
        if id(spec) in measured:  # a repeat: the noise it needs was learned the first time
            jobs.extend(j for j in measured[id(spec)] if j.program != "noise-learner")
            continue
        measured[id(spec)] = await _dry_run(spec, backend)
        jobs.extend(measured[id(spec)])
    cpu = backend.context.cpu_statistics()
    workers = cpu.size if cpu.kind == "process" else 1
    lane_count = lanes if lanes is not None else await _lanes(backend)
    notes = (
        "QPU s: each job's modelled QPU time (what IBM bills for it). server s: the server's",
        "classical processing before and after the QPU. client s: this client's own work",
        "(preparing, post-processing). wall s: jobs and session run one job after another;",
        f"batch is the bound of timing-and-scheduling.md §5 with {lane_count} lanes and "
        f"{workers} client workers.",
        "Queueing behind other users' jobs is not included.",
    )
    return WorkloadEstimate(
        backend=backend.name,
        jobs=tuple(jobs),
        modes=modes(
            jobs,
            lanes=lane_count,
            workers=workers,
            idle_s=idle_s,
            interactive_ttl_s=interactive_ttl_s,
            max_ttl_s=max_ttl_s,
        ),
        lanes=lane_count,
        workers=workers,
        idle_s=idle_s,
        interactive_ttl_s=interactive_ttl_s,
        notes=notes,
    )
