"""The maths of the benchmarks, on measured stage times (pure functions, no I/O).

The emulator reports, per job, six wall-clock stage timestamps in ``GET /jobs/{id}/metrics``
(``emulator.stages``): ``pre_start``/``pre_end`` (a classical lane), ``qpu_start``/``qpu_end``
(the QPU) and ``post_start``/``post_end`` (a lane again). From them, for N jobs on one backend with
L lanes (``timing-and-scheduling.md`` §5)::

    C_pre = pre_end - pre_start      C_post = post_end - post_start      C = C_pre + C_post
    Q     = qpu_end - qpu_start      (the QPU span as measured: max(K x modelled, Aer time))

    job mode, one at a time      ≈ Σ (C + Q)                       = N·(C+Q) for equal jobs
    concurrent lower bound       = max(C̄_pre + Σ Q + C̄_post, Σ (C + Q) / L)
                                 = max(C_pre + N·Q + C_post, N·(C+Q)/L) for equal jobs

(§5 revised: a lane is a slot for a job in progress, held from its pre-processing to the end of
its post-processing, so the L lanes are L servers of C + Q each, not of C.)

where C̄ are means over the jobs. The QPU's busy fraction is the union of the QPU spans divided
by the window from the first ``qpu_start`` to the last ``qpu_end``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "STAGES",
    "Bound",
    "JobTiming",
    "LaneAssignment",
    "Span",
    "assign_lanes",
    "busy_fraction",
    "concurrent_bound",
    "ideal_speedup",
    "job_mode_estimate",
    "percentile",
    "summarize",
    "union_length",
]

STAGES = ("pre_start", "pre_end", "qpu_start", "qpu_end", "post_start", "post_end")


def _ts(value: str | float | datetime) -> float:
    """POSIX seconds from an ISO-8601 timestamp (as the emulator writes them), a datetime (as
    execution spans carry them) or a number."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(value).timestamp()


@dataclass(frozen=True, slots=True)
class Span:
    start: float
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True, kw_only=True)
class JobTiming:
    """One job's measured stages (POSIX seconds) and its modelled QPU time (model seconds)."""

    job_id: str
    pre_start: float
    pre_end: float
    qpu_start: float
    qpu_end: float
    post_start: float
    post_end: float
    quantum_seconds: float = 0.0
    lag_s: float = 0.0

    @classmethod
    def from_stages(
        cls,
        job_id: str,
        stages: Mapping[str, str | float | datetime],
        *,
        quantum_seconds: float | None = None,
        lag_s: float | None = None,
    ) -> JobTiming:
        missing = [s for s in STAGES if s not in stages]
        if missing:
            raise ValueError(f"job {job_id} has no {', '.join(missing)} stage timestamps")
        values = {s: _ts(stages[s]) for s in STAGES}
        return cls(
            job_id=job_id,
            quantum_seconds=float(quantum_seconds or 0.0),
            lag_s=float(lag_s or 0.0),
            **values,
        )

    @classmethod
    def from_metrics(
        cls,
        job_id: str,
        metrics: Mapping[str, Any],
        *,
        qpu_span: tuple[datetime, datetime] | None = None,
    ) -> JobTiming:
        """From the body of ``GET /jobs/{id}/metrics`` (its ``emulator`` block). ``qpu_span``
        is the (start, stop) of the result's execution spans, what IBM's results carry too: it
        gives the QPU span (the emulator stamps ``qpu_start``/``qpu_end`` at the same instants,
        so the two agree; the spans are the official record)."""
        emu = metrics.get("emulator") or {}
        stages: dict[str, str | float | datetime] = dict(emu.get("stages") or {})
        if qpu_span is not None:
            stages["qpu_start"], stages["qpu_end"] = qpu_span
        return cls.from_stages(
            job_id,
            stages,
            quantum_seconds=emu.get("modelled_quantum_seconds"),
            lag_s=emu.get("emulator_lag_s"),
        )

    @property
    def c_pre(self) -> float:
        return self.pre_end - self.pre_start

    @property
    def c_post(self) -> float:
        return self.post_end - self.post_start

    @property
    def c(self) -> float:
        return self.c_pre + self.c_post

    @property
    def q(self) -> float:
        return self.qpu_end - self.qpu_start

    @property
    def lane_spans(self) -> tuple[Span, Span]:
        return Span(self.pre_start, self.pre_end), Span(self.post_start, self.post_end)

    @property
    def qpu_span(self) -> Span:
        return Span(self.qpu_start, self.qpu_end)

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            **{s: getattr(self, s) for s in STAGES},
            "c_pre": self.c_pre,
            "q": self.q,
            "c_post": self.c_post,
            "quantum_seconds": self.quantum_seconds,
            "lag_s": self.lag_s,
        }


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0


def job_mode_estimate(jobs: Sequence[JobTiming]) -> float:
    """``Σ (C + Q)``: the wall time of a client that waits for each job before the next, if
    nothing but the emulator's stages took time."""
    return sum(j.c + j.q for j in jobs)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bound:
    """The concurrent lower bound and its two terms."""

    n: int
    lanes: int
    c_pre: float  # means over the jobs
    c_post: float
    q: float
    qpu_path: float  # C_pre + N·Q + C_post
    lane_path: float  # N·(C+Q) / L

    @property
    def value(self) -> float:
        return max(self.qpu_path, self.lane_path)

    @property
    def limited_by(self) -> str:
        return "qpu" if self.qpu_path >= self.lane_path else "lanes"

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "lanes": self.lanes,
            "c_pre_s": self.c_pre,
            "c_post_s": self.c_post,
            "q_s": self.q,
            "qpu_path_s": self.qpu_path,
            "lane_path_s": self.lane_path,
            "bound_s": self.value,
            "limited_by": self.limited_by,
        }


def concurrent_bound(jobs: Sequence[JobTiming], lanes: int) -> Bound:
    """``max(C̄_pre + Σ Q + C̄_post, Σ (C + Q) / L)`` from measured stages (§5, revised).

    The QPU serves one job at a time, so all the Q happen one after another, after at least one
    pre-processing and before at least one post-processing; each of the L lanes holds one job
    from its pre-processing to the end of its post-processing, its QPU time included."""
    if lanes < 1:
        raise ValueError("lanes must be at least 1")
    if not jobs:
        raise ValueError("no jobs")
    n = len(jobs)
    c_pre, c_post = _mean(j.c_pre for j in jobs), _mean(j.c_post for j in jobs)
    total_q = sum(j.q for j in jobs)
    return Bound(
        n=n,
        lanes=lanes,
        c_pre=c_pre,
        c_post=c_post,
        q=total_q / n,
        qpu_path=c_pre + total_q + c_post,
        lane_path=sum(j.c + j.q for j in jobs) / lanes,
    )


def ideal_speedup(c: float, q: float, lanes: int) -> float:
    """``(C + Q) / max(Q, (C+Q)/L)``: the best speed-up of concurrent submission for large N
    (§5 revised: a lane is held for the job's whole C + Q)."""
    denominator = max(q, (c + q) / lanes)
    return (c + q) / denominator if denominator > 0 else math.inf


def union_length(spans: Iterable[Span]) -> float:
    """Total length covered by ``spans`` (overlaps counted once)."""
    total, cur_start, cur_end = 0.0, None, None
    for span in sorted(spans, key=lambda s: s.start):
        if cur_end is None or span.start > cur_end:
            if cur_end is not None and cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = span.start, span.end
        else:
            cur_end = max(cur_end, span.end)
    if cur_end is not None and cur_start is not None:
        total += cur_end - cur_start
    return total


def busy_fraction(spans: Sequence[Span]) -> float:
    """Union of the spans / (last end - first start); 1.0 for a single span, 0 for none."""
    if not spans:
        return 0.0
    window = max(s.end for s in spans) - min(s.start for s in spans)
    if window <= 0:
        return 1.0
    return union_length(spans) / window


@dataclass(frozen=True, slots=True)
class LaneAssignment:
    """Which lane row each classical span was drawn in."""

    rows: int
    items: tuple[tuple[int, str, str, Span], ...]  # (row, job id, "pre" | "post", span)


def assign_lanes(jobs: Sequence[JobTiming]) -> LaneAssignment:
    """Greedy interval partitioning of the pre and post spans onto lane rows.

    Spans are taken in start order; each goes to the lowest-numbered row that is free at its
    start (a row is free once its previous span has ended; touching spans share a row). With
    the emulator's L lanes this needs at most L rows; more rows would mean more than L jobs in
    classical processing at once."""
    spans = sorted(
        (
            (span, job.job_id, kind)
            for job in jobs
            for kind, span in zip(("pre", "post"), job.lane_spans, strict=True)
        ),
        key=lambda item: (item[0].start, item[0].end),
    )
    row_free_at: list[float] = []
    items = []
    for span, job_id, kind in spans:
        row = next(
            (r for r, free_at in enumerate(row_free_at) if free_at <= span.start), len(row_free_at)
        )
        if row == len(row_free_at):
            row_free_at.append(span.start)
        row_free_at[row] = span.end
        items.append((row, job_id, kind, span))
    return LaneAssignment(rows=len(row_free_at), items=tuple(items))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear interpolation between order statistics (as
    ``numpy.percentile``'s default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p95, min, max."""
    return {
        "n": len(values),
        "mean": _mean(values) if values else math.nan,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
    }
