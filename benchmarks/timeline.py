"""The timeline figure of batch-N: the seed "execution modes" picture, drawn from measured stages.

One panel per mode (job, batch, session), sharing the time axis so their lengths compare. Each
panel has the QPU on top and the classical lanes below it; every job draws its pre- and
post-processing spans on the lane row :func:`~benchmarks.analysis.assign_lanes` gave them and its
QPU span on the QPU row. Colour says the mode; pre-processing is drawn lighter than
post-processing. The data is the jobs' own record: the lane stages from the job metrics'
``emulator.stages``, the QPU spans from the results' execution spans (see
:func:`~benchmarks.workloads._common.timings_of`) — the same spans the official
``draw_execution_spans`` draws, and the same picture and colours as the emulator's live
dashboard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from .analysis import JobTiming, assign_lanes, busy_fraction

__all__ = ["MODE_COLOURS", "draw_timeline"]

MODE_COLOURS = {"job": "#7f7f7f", "batch": "#1f77b4", "session": "#ff7f0e"}


def draw_timeline(
    modes: Mapping[str, Sequence[JobTiming]],
    path: Path,
    *,
    lanes: int,
    title: str,
    walls: Mapping[str, float] | None = None,
) -> Path:
    """Write the PNG to ``path`` (matplotlib's Agg backend, no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = [m for m in modes if modes[m]]
    fig, axes = plt.subplots(
        len(names),
        1,
        sharex=True,
        squeeze=False,
        layout="constrained",
        figsize=(12, 1.2 + 1.6 * len(names) * (lanes + 1) / 6),
    )
    for ax, name in zip(axes[:, 0], names, strict=True):
        jobs = modes[name]
        colour = MODE_COLOURS.get(name, "#2ca02c")
        t0 = min(j.pre_start for j in jobs)
        assignment = assign_lanes(jobs)
        rows = max(lanes, assignment.rows)
        qpu_row = rows  # drawn on top
        for row, _job_id, kind, span in assignment.items:
            ax.broken_barh(
                [(span.start - t0, span.length)],
                (row + 0.1, 0.8),
                facecolors=colour,
                alpha=0.45 if kind == "pre" else 0.9,
                edgecolor="white",
                linewidth=0.4,
            )
        for job in jobs:
            ax.broken_barh(
                [(job.qpu_start - t0, job.q)],
                (qpu_row + 0.1, 0.8),
                facecolors=colour,
                edgecolor="black",
                linewidth=0.4,
            )
        ax.set_yticks(
            [r + 0.5 for r in range(rows + 1)],
            [f"lane {r + 1}" for r in range(rows)] + ["QPU"],
            fontsize=8,
        )
        ax.set_ylim(0, rows + 1)
        busy = busy_fraction([j.qpu_span for j in jobs])
        window = max(j.post_end for j in jobs) - t0
        label = f"{name} mode: {len(jobs)} jobs, emulator window {window:.2f} s"
        if walls and name in walls:
            label += f", client wall {walls[name]:.2f} s"
        label += f", QPU busy {busy:.0%} of its window"
        ax.set_title(label, fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("wall seconds since the mode's first job entered a lane")
    handles = [Patch(facecolor=MODE_COLOURS.get(n, "#2ca02c"), label=n) for n in names]
    handles += [
        Patch(facecolor="#999999", alpha=0.45, label="pre-processing (lighter)"),
        Patch(facecolor="#999999", alpha=0.9, label="post-processing"),
        Patch(facecolor="white", edgecolor="black", label="QPU span (outlined)"),
    ]
    fig.legend(
        handles=handles, loc="outside lower center", fontsize=8, ncol=len(handles), frameon=False
    )
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
