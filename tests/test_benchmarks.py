"""The benchmark harness: its maths on hand-made stage data, the table, the JSON files, the
command line, and one tiny end-to-end run against the real emulator.

Nothing here asserts a speed: the end-to-end run checks structure and sanity only.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.analysis import (
    JobTiming,
    Span,
    assign_lanes,
    busy_fraction,
    concurrent_bound,
    ideal_speedup,
    job_mode_estimate,
    percentile,
    summarize,
    union_length,
)
from benchmarks.cli import RunPlan, build_parser, main, plan_from_args, run_plan
from benchmarks.harness import cpu_snapshot, running_emulator
from benchmarks.report import (
    Target,
    WorkloadResult,
    render_results,
    render_table,
    render_targets,
    write_json,
)
from benchmarks.workloads import batch_n, fan_out, overhead, two_vqe

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def job(
    job_id: str,
    pre: tuple[float, float],
    qpu: tuple[float, float],
    post: tuple[float, float],
    quantum_seconds: float = 2.0,
) -> JobTiming:
    """A job whose stages are given in seconds after T0 (sent as ISO strings, as the emulator
    writes them)."""

    def iso(s: float) -> str:
        return (T0 + timedelta(seconds=s)).isoformat()

    stages = {
        "pre_start": iso(pre[0]),
        "pre_end": iso(pre[1]),
        "qpu_start": iso(qpu[0]),
        "qpu_end": iso(qpu[1]),
        "post_start": iso(post[0]),
        "post_end": iso(post[1]),
    }
    return JobTiming.from_metrics(
        job_id,
        {
            "emulator": {
                "stages": stages,
                "modelled_quantum_seconds": quantum_seconds,
                "emulator_lag_s": 0.0,
            }
        },
    )


def uniform_jobs(n: int, c_pre: float, q: float, c_post: float) -> list[JobTiming]:
    """``n`` equal jobs in job mode: one after the other, nothing overlapping."""
    out, t = [], 0.0
    for i in range(n):
        out.append(
            job(
                f"j{i}",
                (t, t + c_pre),
                (t + c_pre, t + c_pre + q),
                (t + c_pre + q, t + c_pre + q + c_post),
            )
        )
        t += c_pre + q + c_post
    return out


# -- analysis ------------------------------------------------------------------------------------


def test_stage_durations_come_from_the_iso_timestamps() -> None:
    j = job("a", (0.0, 0.25), (0.5, 1.5), (1.5, 1.625))
    assert j.c_pre == pytest.approx(0.25)
    assert j.q == pytest.approx(1.0)
    assert j.c_post == pytest.approx(0.125)
    assert j.c == pytest.approx(0.375)
    assert j.quantum_seconds == 2.0
    assert j.pre_start == pytest.approx(T0.timestamp())


def test_missing_stages_are_an_error_not_a_zero() -> None:
    with pytest.raises(ValueError, match="qpu_end"):
        JobTiming.from_stages(
            "a",
            {
                "pre_start": 0.0,
                "pre_end": 1.0,
                "qpu_start": 1.0,
                "post_start": 2.0,
                "post_end": 3.0,
            },
        )


def test_job_mode_estimate_is_n_times_c_plus_q() -> None:
    jobs = uniform_jobs(10, c_pre=0.1, q=0.3, c_post=0.1)
    assert job_mode_estimate(jobs) == pytest.approx(10 * (0.2 + 0.3))


def test_concurrent_bound_qpu_limited() -> None:
    # C = 0.2, Q = 0.3, L = 5: the QPU path C_pre + N·Q + C_post = 0.1 + 3 + 0.1 wins over
    # N·(C+Q)/L (a lane is held for a job's whole C + Q: §5 revised).
    bound = concurrent_bound(uniform_jobs(10, c_pre=0.1, q=0.3, c_post=0.1), lanes=5)
    assert bound.qpu_path == pytest.approx(3.2)
    assert bound.lane_path == pytest.approx(10 * (0.2 + 0.3) / 5)
    assert bound.value == pytest.approx(3.2)
    assert bound.limited_by == "qpu"
    assert bound.as_dict()["bound_s"] == pytest.approx(3.2)


def test_concurrent_bound_lane_limited() -> None:
    # C = 2.0, Q = 0.1, L = 5: N·(C+Q)/L = 20·2.1/5 = 8.4 beats 1 + 2 + 1 = 4.
    bound = concurrent_bound(uniform_jobs(20, c_pre=1.0, q=0.1, c_post=1.0), lanes=5)
    assert bound.value == pytest.approx(8.4)
    assert bound.limited_by == "lanes"


def test_concurrent_bound_uses_mean_classical_times_and_the_sum_of_qpu_times() -> None:
    jobs = [job("a", (0, 1), (1, 2), (2, 3)), job("b", (0, 3), (3, 5), (5, 6))]
    bound = concurrent_bound(jobs, lanes=1)
    assert bound.c_pre == pytest.approx(2.0)  # (1 + 3) / 2
    assert bound.c_post == pytest.approx(1.0)
    assert bound.qpu_path == pytest.approx(2.0 + (1 + 2) + 1.0)
    assert bound.lane_path == pytest.approx((2 + 1) + (4 + 2))


def test_concurrent_bound_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        concurrent_bound([], lanes=5)
    with pytest.raises(ValueError):
        concurrent_bound(uniform_jobs(1, 0.1, 0.1, 0.1), lanes=0)


def test_ideal_speedup() -> None:
    assert ideal_speedup(c=0.2, q=0.3, lanes=5) == pytest.approx(0.5 / 0.3)
    assert ideal_speedup(c=2.0, q=0.1, lanes=5) == pytest.approx(5.0)  # = L: lanes of C + Q
    assert ideal_speedup(c=0.0, q=0.0, lanes=5) == math.inf


def test_busy_fraction_counts_overlaps_once_and_gaps_as_idle() -> None:
    assert busy_fraction([Span(0, 1), Span(1, 2), Span(3, 4)]) == pytest.approx(3 / 4)
    assert busy_fraction([Span(0, 2), Span(1, 3)]) == pytest.approx(1.0)
    assert busy_fraction([Span(5, 6)]) == pytest.approx(1.0)
    assert busy_fraction([]) == 0.0
    assert union_length([Span(2, 3), Span(0, 1), Span(0.5, 1.5)]) == pytest.approx(2.5)


def test_job_mode_keeps_the_qpu_busy_only_for_q_over_c_plus_q() -> None:
    jobs = uniform_jobs(5, c_pre=0.1, q=0.3, c_post=0.1)
    # window from the first qpu_start to the last qpu_end: 4 gaps of C between 5 spans of Q
    assert busy_fraction([j.qpu_span for j in jobs]) == pytest.approx(1.5 / (1.5 + 4 * 0.2))


def test_lane_assignment_is_greedy_by_interval() -> None:
    # Five jobs enter lanes together and leave at different times; two posts come later.
    jobs = [job(f"j{i}", (0, 1 + i), (10 + i, 11 + i), (11 + i, 12 + i)) for i in range(5)]
    lanes = assign_lanes(jobs)
    assert lanes.rows == 5
    pre_rows = {job_id: row for row, job_id, kind, _ in lanes.items if kind == "pre"}
    assert sorted(pre_rows.values()) == [0, 1, 2, 3, 4]
    # Every post starts after all pres ended: each goes to row 0, freed again by its predecessor
    # (touching spans share a row).
    post_rows = [row for row, _, kind, _ in lanes.items if kind == "post"]
    assert post_rows == [0, 0, 0, 0, 0]


def test_lane_assignment_reuses_the_lowest_free_row() -> None:
    jobs = [
        job("a", (0, 2), (2, 3), (3, 4)),
        job("b", (1, 5), (5, 6), (6, 7)),
        job("c", (2.5, 3), (6, 6.5), (6.5, 8)),
    ]
    lanes = assign_lanes(jobs)
    rows = {(job_id, kind): row for row, job_id, kind, _ in lanes.items}
    assert rows[("a", "pre")] == 0
    assert rows[("b", "pre")] == 1
    assert rows[("c", "pre")] == 0  # a's pre ended at 2
    assert rows[("a", "post")] == 0  # c's pre ended at 3
    assert rows[("b", "post")] == 0
    assert rows[("c", "post")] == 1  # b's post still runs at 6.5
    assert lanes.rows == 2
    # No two spans on one row overlap.
    by_row: dict[int, list[Span]] = {}
    for row, _, _, span in lanes.items:
        by_row.setdefault(row, []).append(span)
    for spans in by_row.values():
        spans.sort(key=lambda s: s.start)
        assert all(a.end <= b.start for a, b in itertools.pairwise(spans))


def test_percentiles_match_numpy() -> None:
    values = [0.011, 0.002, 0.5, 0.03, 0.004, 0.07, 0.0065]
    for q in (0, 50, 95, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert math.isnan(percentile([], 50))
    s = summarize(values)
    assert s["n"] == 7 and s["p50"] == pytest.approx(np.median(values))


# -- targets, table, JSON ------------------------------------------------------------------------


def test_targets_pass_miss_and_margin() -> None:
    under = Target(name="wall/bound", value=1.05, op="<=", limit=1.10)
    assert under.passed and under.verdict() == "PASS"
    assert under.margin == pytest.approx(0.05 / 1.10)
    over = Target(name="busy", value=0.90, op=">=", limit=0.95)
    assert not over.passed and over.verdict() == "MISS"
    assert over.margin == pytest.approx(-0.05 / 0.95)
    errors = Target(name="errors", value=0.0, op="==", limit=0.0)
    assert errors.passed and errors.margin == 0.0
    assert Target(name="errors", value=2.0, op="==", limit=0.0).margin == -2.0
    assert not Target(name="nan", value=math.nan, op="<=", limit=1.0).passed


def sample_result() -> WorkloadResult:
    return WorkloadResult(
        workload="batch-n",
        clock="scaled:0.01",
        params={"n": 20, "shots": 1000},
        rows=[
            {"mode": "job", "wall_s": 12.5, "speedup": 1.0, "usage_s": 47.0},
            {"mode": "session", "wall_s": 4.1234, "speedup": 3.03, "usage_s": float("nan")},
        ],
        figures={
            "nested": {
                "nan": float("nan"),
                "inf": float("inf"),
                "arr": np.arange(3),
                "path": Path("/x"),
            }
        },
        targets=[
            Target(name="batch wall / bound", value=1.04, op="<=", limit=1.1),
            Target(name="batch QPU busy", value=0.9, op=">=", limit=0.95),
        ],
        notes=["a note"],
    )


def test_table_is_aligned_with_numbers_right_and_text_left() -> None:
    text = render_table(sample_result().rows)
    lines = text.splitlines()
    assert lines[0].split() == ["mode", "wall_s", "speedup", "usage_s"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    # Every column starts at the same offset on every line.
    header = lines[0]
    starts = [header.index(c) for c in ("wall_s", "speedup")]
    for line in lines[2:]:
        assert line[: starts[0]].rstrip() in ("job", "session")
    # Numbers are right-aligned: they end where their header ends.
    end = header.index("wall_s") + len("wall_s")
    assert lines[2][:end].endswith("12.5")
    assert lines[3][:end].endswith("4.123")
    assert lines[3].rstrip().endswith("-")  # NaN prints as "-"


def test_rendered_report_has_a_section_per_result_and_the_targets() -> None:
    text = render_results([sample_result()])
    assert "== batch-n | clock scaled:0.01 | n=20, shots=1000" in text
    assert "a note" in text
    targets = render_targets([sample_result()])
    assert "PASS" in targets and "MISS" in targets
    assert "+5.5%" in targets  # (1.1 - 1.04) / 1.1
    assert "-5.3%" in targets  # (0.9 - 0.95) / 0.95


def test_json_files_per_result_and_latest(tmp_path: Path) -> None:
    result = sample_result()
    files = write_json(
        [result], tmp_path, stamp="20260101T000000Z", run_info={"machine": {"nproc": 2}}
    )
    names = [p.name for p in files]
    assert names == ["batch-n_scaled-0.01_20260101T000000Z.json", "latest.json"]

    def strict(text: str) -> Any:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    one = strict(files[0].read_text())
    assert one["stamp"] == "20260101T000000Z"
    assert one["run"]["machine"]["nproc"] == 2
    assert one["result"]["rows"][1]["usage_s"] is None  # NaN → null
    assert one["result"]["figures"]["nested"] == {
        "nan": None,
        "inf": None,
        "arr": [0, 1, 2],
        "path": "/x",
    }
    assert one["result"]["targets"][0]["passed"] is True
    assert one["result"]["targets"][1]["passed"] is False
    latest = strict((tmp_path / "latest.json").read_text())
    assert latest["files"] == [names[0]]
    assert latest["results"][0]["workload"] == "batch-n"


# -- command line --------------------------------------------------------------------------------


def test_plans_from_the_command_line(tmp_path: Path) -> None:
    def plan(*argv: str) -> RunPlan:
        return plan_from_args(build_parser().parse_args([*argv, "--out", str(tmp_path)]))

    full = plan()
    assert full.workloads == ("batch-n", "two-vqe", "overhead", "fan-out")
    assert full.clocks == ("instant", "scaled:0.01")
    assert full.batch_n.n == 20 and full.fan_out.n == 1000
    quick = plan("--quick")
    assert quick.fan_out.n == 200 and quick.batch_n.n < full.batch_n.n
    demo = plan("--demo")
    assert demo.workloads == ("batch-n",) and demo.clocks == ("scaled:0.01",)
    picked = plan(
        "--workloads", "fan-out,overhead", "--clock", "scaled:0.05", "--n", "7", "--no-official"
    )
    assert picked.workloads == ("fan-out", "overhead")
    assert picked.clocks == ("scaled:0.05",)
    assert picked.batch_n.n == 7
    assert not picked.overhead.official and not picked.two_vqe.official
    assert picked.out_dir == tmp_path
    assert full.jobs() > quick.jobs() > demo.jobs() > 0
    assert full.emulator == "process" and plan("--emulator", "thread").emulator == "thread"


def test_overhead_clients_take_turns_in_blocks_that_add_up_to_reps() -> None:
    """Aer, aioruntime and the executor path take ``rounds`` turns each, their counted
    repetitions split evenly (never more turns than repetitions); the official client runs at
    most ``official_reps`` times after them; the job count for the progress bar adds it up."""
    blocks = overhead._blocks
    assert blocks(overhead.Params()) == [50] * 6
    assert blocks(overhead.Params(reps=10, rounds=4)) == [3, 3, 2, 2]
    assert blocks(overhead.Params(reps=2, rounds=6)) == [1, 1]
    assert blocks(overhead.Params(reps=5, rounds=0)) == [5]
    prm = overhead.Params(reps=10, rounds=4, warmup=2, official_reps=3)
    assert overhead.jobs(prm) == 3 * (10 + 4 * 2) + (3 + 2)
    assert overhead.jobs(replace(prm, official=False)) == 3 * (10 + 4 * 2)


def test_bad_arguments_fail_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--workloads", "batch-n,nope", "--no-progress"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["--clock", "sometimes", "--no-progress"]) == 2
    with pytest.raises(SystemExit):
        main(["--quick", "--demo"])


def test_cpu_snapshot_splits_this_process_and_its_children() -> None:
    snap = cpu_snapshot()
    assert {"client loop", "emulator loop", "other threads", "workers"} <= set(snap)
    assert all(v >= 0 for v in snap.values())
    assert snap["client loop"] > 0  # this test runs on the main thread


def test_unknown_emulator_placement_is_refused() -> None:
    with (
        pytest.raises(ValueError, match="thread or a process"),
        running_emulator("instant", where="moon"),
    ):
        pass


# -- end to end ----------------------------------------------------------------------------------


@pytest.mark.e2e  # run_plan starts its own emulators
def test_tiny_run_against_the_real_emulator(tmp_path: Path) -> None:
    plan = RunPlan(
        workloads=("batch-n", "overhead", "fan-out", "two-vqe"),
        clocks=("instant",),
        batch_n=batch_n.Params(n=3, shots=100),
        overhead=overhead.Params(reps=3, warmup=1),
        fan_out=fan_out.Params(n=10),
        two_vqe=two_vqe.Params(qubits=2, maxiter=6),
        out_dir=tmp_path,
        warm=False,
        progress=False,
        label="test",
    )
    outcome = run_plan(plan)
    by_name = {r.workload: r for r in outcome.results}
    assert set(by_name) == set(plan.workloads)

    batch = by_name["batch-n"]
    assert [row["mode"] for row in batch.rows] == ["job", "batch", "session"]
    for row in batch.rows:
        assert row["jobs"] == 3
        assert row["wall_s"] > 0 and row["bound_s"] > 0 and row["speedup"] > 0
        assert 0 < row["qpu_busy"] <= 1.0
        assert row["usage_s"] > 0
        assert row["emu_window_s"] <= row["wall_s"]
    job_mode = batch.figures["modes"]["job"]
    assert job_mode["session_id"] is None
    assert batch.figures["modes"]["batch"]["session_id"]
    # Job-mode and batch usage are both the sum of the jobs' modelled QPU time.
    assert batch.rows[0]["usage_s"] == pytest.approx(job_mode["modelled_quantum_s_total"])
    assert batch.rows[1]["usage_s"] == pytest.approx(batch.rows[0]["usage_s"])
    assert not batch.targets  # the batch-N targets apply to scaled clocks only
    png = Path(batch.artifacts[0])
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    fan = by_name["fan-out"]
    assert fan.rows[0]["errors"] == 0
    assert fan.rows[0]["jobs_per_s"] > 0
    assert fan.rows[0]["peak_rss_MiB"] > 0
    assert {t.name for t in fan.targets} == {"fan-out errors", "fan-out throughput"}

    over = by_name["overhead"]
    assert [row["client"] for row in over.rows] == [
        "aer in-process",
        "aioruntime",
        "aioruntime executor",
        "official",
    ]
    assert all(row["jobs"] == 3 and row["p50_ms"] > 0 for row in over.rows)

    vqe = by_name["two-vqe"]
    assert [row["run"] for row in vqe.rows] == [
        "aioruntime sequential",
        "aioruntime concurrent",
        "official thread pool",
    ]
    assert all(row["jobs"] >= 6 and row["wall_s"] > 0 for row in vqe.rows)

    names = sorted(p.name for p in tmp_path.iterdir())
    assert "latest.json" in names
    for workload in ("batch-n", "overhead", "fan-out", "two-vqe"):
        assert any(n.startswith(f"{workload}_instant_") and n.endswith(".json") for n in names)
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert latest["run"]["machine"]["nproc"] >= 1
    # the machine's speed around the run, beside its load
    assert latest["run"]["cpu_probe_before_ms"] > 0 and latest["run"]["cpu_probe_after_ms"] > 0
    assert "== targets" in outcome.table


def test_tree_memory_counts_a_process_and_its_children() -> None:
    """``benchmarks.startup``'s memory at rest: RSS and PSS summed over a process tree (PSS
    never above RSS); a child process adds itself."""
    import os
    import subprocess
    import sys

    from benchmarks.harness import tree_memory

    alone = tree_memory(os.getpid())
    assert alone["processes"] >= 1 and 0 < alone["pss_MiB"] <= alone["rss_MiB"]
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    try:
        with_child = tree_memory(os.getpid())
        assert with_child["processes"] == alone["processes"] + 1
        assert with_child["rss_MiB"] > alone["rss_MiB"]
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()


def test_the_rss_sampler_counts_a_child_started_while_it_samples() -> None:
    """The fan-out's peak RSS: the sampler lists the child processes again every ``rescan_s``
    (listing them walks every process on the machine), and reads the RSS of the listed ones at
    every sample. A child started after sampling began, holding 64 MiB, is in the peak once a
    listing has found it; most samples reuse a listing. (In a process of its own: this test
    process has children of its own that come and go, the workers of other tests' emulators.)"""
    import subprocess
    import sys

    from gates import WAIT_S

    scenario = f"""
import json, subprocess, sys, time
from benchmarks.harness import RssSampler

held = 64 * 2**20
deadline = time.monotonic() + {WAIT_S}
with RssSampler(interval=0.01, rescan_s=0.1) as sampler:
    while sampler.samples < 1 and time.monotonic() < deadline:  # listed, without the child
        time.sleep(0.01)
    before = dict(sampler.peak)
    code = f"b = b'x' * {{held}}; print('held', flush=True); import sys; sys.stdin.read()"
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=-1, stdout=-1, text=True
    ) as child:  # its stdin closed on the way out: it exits
        assert child.stdout.readline() == "held\\n"
        while sampler.peak["children"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        peak = dict(sampler.peak)
print(json.dumps({{"before": before, "peak": peak, "held": held,
                  "scans": sampler.scans, "samples": sampler.samples}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", scenario], capture_output=True, text=True, timeout=WAIT_S, check=True
    )
    seen = json.loads(out.stdout)
    before, peak = seen["before"], seen["peak"]
    assert before["children"] == 0 and before["children_rss"] == 0
    # Most of the child's 64 MiB: not all of it, since this machine's kernel reclaims cold
    # pages on its own (DAMON; the peak once read 63.8 MiB of the 73 the child had).
    assert peak["children"] == 1 and peak["children_rss"] >= seen["held"] / 2
    assert peak["total_rss"] == peak["main_rss"] + peak["children_rss"]
    assert 2 <= seen["scans"] < seen["samples"]
