"""The cost and time model of a workload: pure functions of each job's measured times.

Inputs, per job (:class:`JobEstimate`): ``quantum_s`` Q, the modelled QPU seconds the server
estimated in a dry run (what IBM bills for it); ``pre_s`` / ``post_s``, the server's classical
seconds before and after the QPU (a lane is held for both, ``timing-and-scheduling.md`` §4);
``client_s``, the client's own seconds for the job (preparing it, decoding its result: the
executor primitives do their twirling, mitigation and post-processing here).

What IBM bills (``timing-and-scheduling.md`` §3; ``emulator/sessions.py`` bills the same way):

* **jobs** and a **batch**: Σ Q. A batch is billed nothing of its own.
* a **dedicated session**: its active windows. A window opens when a job takes the QPU and stays
  open while the session has unfinished jobs, then for the interactive TTL (60 s) while it waits
  for the next one. For jobs run one after another with ``idle_s`` of the user's thinking between
  a result and the next ``run()``, the gap the session waits through is ``client post + idle +
  client pre``: under the TTL the whole gap and the next job's pre-processing are billed; at or
  over it the session bills the TTL, goes inactive, and the next job opens a new window when it
  reaches the QPU. The session is closed after its last job (``async with``: no trailing TTL),
  is billed at least Σ Q and at most its max TTL.

How long it takes (``timing-and-scheduling.md`` §5, revised), with L lanes and W client workers:

* **jobs, one after another** (each awaited before the next): Σ (client + C + Q);
* **batch** (all submitted at once): ``max(C_pre + Σ Q + C_post, Σ (C + Q) / L)``, the §5 lower
  bound (C_pre, C_post: the jobs' means), widened by the client's own share:
  ``+ client pre of the first + client post of the last`` in the first term, and a third term
  ``Σ client / W`` (the client's worker pool is W more servers);
* **session**, jobs one after another with ``idle_s`` between them: Σ (client + C + Q) +
  (N - 1) · idle.

A noise learner's job is followed at once by the estimator job that needs it: no idle time.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["JobEstimate", "ModeEstimate", "batch_wall", "modes", "session_bill"]


@dataclass(frozen=True, slots=True)
class JobEstimate:
    """One job of the workload, as its dry run measured it (seconds)."""

    label: str
    program: str
    quantum_s: float
    pre_s: float = 0.0
    post_s: float = 0.0
    client_pre_s: float = 0.0
    client_post_s: float = 0.0
    #: The dry-run job(s) the figures come from.
    job_ids: tuple[str, ...] = field(default=())

    @property
    def classical_s(self) -> float:
        return self.pre_s + self.post_s

    @property
    def client_s(self) -> float:
        return self.client_pre_s + self.client_post_s


@dataclass(frozen=True, slots=True)
class ModeEstimate:
    """What the workload costs (``billed_s``, QPU usage) and takes (``wall_s``) in one mode."""

    mode: str
    billed_s: float
    wall_s: float
    how: str


def session_bill(
    jobs: Sequence[JobEstimate],
    *,
    idle_s: float,
    interactive_ttl_s: float = 60.0,
    max_ttl_s: float = 8 * 3600.0,
) -> float:
    """The usage of a dedicated session running ``jobs`` one after another (module docstring)."""
    if not jobs:
        return 0.0
    billed = jobs[0].quantum_s + jobs[0].post_s
    for before, job in itertools.pairwise(jobs):
        gap = before.client_post_s + _idle_after(before, idle_s) + job.client_pre_s
        if gap < interactive_ttl_s:
            billed += gap + job.pre_s
        else:
            billed += interactive_ttl_s
        billed += job.quantum_s + job.post_s
    return min(max(billed, sum(j.quantum_s for j in jobs)), max_ttl_s)


def _idle_after(job: JobEstimate, idle_s: float) -> float:
    """The user's idle time after ``job``: none after a noise learner, whose estimator job
    follows at once (``AsyncExecutorEstimatorV2.run`` submits it when the learner is done)."""
    return 0.0 if job.program == "noise-learner" else idle_s


def batch_wall(jobs: Sequence[JobEstimate], *, lanes: int, workers: int) -> float:
    """The §5 bound for ``jobs`` submitted at once (module docstring)."""
    if not jobs:
        return 0.0
    n = len(jobs)
    pipeline = (
        jobs[0].client_pre_s
        + sum(j.pre_s for j in jobs) / n
        + sum(j.quantum_s for j in jobs)
        + sum(j.post_s for j in jobs) / n
        + jobs[-1].client_post_s
    )
    lanes_bound = sum(j.classical_s + j.quantum_s for j in jobs) / max(1, lanes)
    client_bound = sum(j.client_s for j in jobs) / max(1, workers)
    return max(pipeline, lanes_bound, client_bound)


def modes(
    jobs: Sequence[JobEstimate],
    *,
    lanes: int = 5,
    workers: int = 1,
    idle_s: float = 0.0,
    interactive_ttl_s: float = 60.0,
    max_ttl_s: float = 8 * 3600.0,
) -> tuple[ModeEstimate, ...]:
    """Billing and wall time of ``jobs`` as single jobs, as a batch and as a session."""
    quantum = sum(j.quantum_s for j in jobs)
    one_by_one = sum(j.client_s + j.classical_s + j.quantum_s for j in jobs)
    return (
        ModeEstimate("jobs", quantum, one_by_one, "each awaited before the next; billed Σ Q"),
        ModeEstimate(
            "batch",
            quantum,
            batch_wall(jobs, lanes=lanes, workers=workers),
            "all submitted at once; billed Σ Q",
        ),
        ModeEstimate(
            "session",
            session_bill(
                jobs, idle_s=idle_s, interactive_ttl_s=interactive_ttl_s, max_ttl_s=max_ttl_s
            ),
            one_by_one + sum(_idle_after(job, idle_s) for job in jobs[:-1]),
            f"one after another, {idle_s:g} s idle between; billed its active window "
            f"(TTL {interactive_ttl_s:g} s)",
        ),
    )
