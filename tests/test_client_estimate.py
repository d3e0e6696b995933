"""Cost and time estimates before spending QPU time (``aioruntime.estimate``): the model's
arithmetic, the dry runs against the real emulator, the figures checked against what the
emulator then really bills, and the command line."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from circuits import bell
from conftest import emulator_config
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import QuantumProgram

from aioruntime import (
    AsyncBackend,
    AsyncBatch,
    AsyncExecutor,
    AsyncExecutorEstimatorV2,
    AsyncExecutorSamplerV2,
    AsyncRuntimeService,
    AsyncSamplerV2,
)
from aioruntime.estimate import JobEstimate, JobSpec, batch_wall, estimate_workload, session_bill
from aioruntime.estimate._cli import main
from emulator.testing import EmulatorThread

asyncio_module = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    """One small device: what is checked here is arithmetic and billing, not width."""
    with EmulatorThread(emulator_config(backends="ibm_manila")) as emu:
        yield emu


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(service: AsyncRuntimeService) -> AsyncBackend:
    return await service.backend("ibm_manila")


# -- the model -------------------------------------------------------------------------------------


def job(q: float, pre: float = 0.0, post: float = 0.0, client: float = 0.0) -> JobEstimate:
    return JobEstimate("j", "sampler", q, pre, post, client / 2, client / 2)


def test_session_bills_its_window_idle_included() -> None:
    jobs = [job(2.0, pre=1.0, post=0.5, client=0.4)] * 3
    # the first window opens at the QPU: Q + post; each next job: the gap (client post + idle
    # + client pre) and its pre-processing, then Q + post
    assert session_bill(jobs, idle_s=10) == pytest.approx(2.5 + 2 * (0.2 + 10 + 0.2 + 1 + 2.5))
    # a gap of the TTL or more: the session waits out its TTL, then a new window opens at the QPU
    assert session_bill(jobs, idle_s=100) == pytest.approx(2.5 + 2 * (60 + 2.5))
    assert session_bill(jobs, idle_s=100, interactive_ttl_s=1) == pytest.approx(2.5 + 2 * 3.5)
    # never less than the jobs' QPU time, never more than the max TTL
    assert session_bill([job(5.0)], idle_s=0) == 5.0
    assert session_bill(jobs, idle_s=10, max_ttl_s=20) == 20
    assert session_bill([], idle_s=10) == 0
    # the estimator job that needs a noise model follows its learner at once: no idle between
    learner = JobEstimate("noise", "noise-learner", 90.0, 0.2, 0.1)
    pec = JobEstimate("pec", "executor", 3.0, 0.1, 0.1)
    assert session_bill([learner, pec], idle_s=100) == pytest.approx(90.1 + 0.1 + 3.1)


def test_batch_wall_is_the_bound_of_section_5() -> None:
    """``max(C_pre + N·Q + C_post, N·(C+Q)/L)``, and the client's workers as more servers."""
    qpu_bound = [job(2.0, pre=1.0, post=1.0)] * 10
    assert batch_wall(qpu_bound, lanes=5, workers=4) == pytest.approx(1 + 20 + 1)
    lane_bound = [job(0.1, pre=3.0, post=3.0)] * 10
    assert batch_wall(lane_bound, lanes=5, workers=4) == pytest.approx(10 * 6.1 / 5)
    client_bound = [job(0.1, client=10.0)] * 10
    assert batch_wall(client_bound, lanes=5, workers=2) == pytest.approx(10 * 10 / 2)


# -- estimates against what the emulator bills ----------------------------------------------------


def workload(backend: AsyncBackend) -> list[JobSpec]:
    pm = generate_preset_pass_manager(1, target=backend.target, seed_transpiler=5)
    isa, plain = pm.run(bell()), pm.run(bell(measure=False))
    obs = [SparsePauliOp(label).apply_layout(plain.layout) for label in ("ZZ", "XX")]
    program = QuantumProgram(shots=50)
    program.append_circuit_item(isa)
    twirled = {"twirling": {"enable_gates": True, "enable_measure": True}}
    return [
        JobSpec("executor_sampler", [isa], twirled, shots=200, label="twirled"),
        JobSpec("executor_estimator", [(plain, obs)], {"default_shots": 256}, label="trex"),
        JobSpec("sampler", [isa], shots=300, label="legacy"),
        JobSpec("executor", program, label="program"),
    ]


async def run_for_real(spec: JobSpec, mode: Any) -> Any:
    if spec.primitive == "sampler":
        return await AsyncSamplerV2(mode, spec.options).run(spec.pubs, shots=spec.shots)
    if spec.primitive == "executor_sampler":
        return await AsyncExecutorSamplerV2(mode, spec.options).run(spec.pubs, shots=spec.shots)
    if spec.primitive == "executor_estimator":
        return await AsyncExecutorEstimatorV2(mode, spec.options).run(spec.pubs)
    return await AsyncExecutor(mode, spec.options).run(spec.pubs)


@asyncio_module
async def test_estimates_match_what_the_emulator_bills(
    service: AsyncRuntimeService, backend: AsyncBackend
) -> None:
    specs = workload(backend)
    before = (await service.usage())["usage_consumed_seconds"]
    estimate = await estimate_workload(backend, specs, idle_s=5)
    assert (await service.usage())["usage_consumed_seconds"] == before  # dry runs: no bill
    assert [j.label for j in estimate.jobs] == ["twirled", "trex", "legacy", "program"]
    assert all(j.quantum_s > 2.0 and j.pre_s > 0 for j in estimate.jobs)
    print(estimate.table())

    # single jobs, for real
    jobs = await asyncio.gather(*(run_for_real(spec, backend) for spec in specs))
    await asyncio.gather(*jobs)
    billed = [await j.usage() for j in jobs]
    for measured, usage in zip(estimate.jobs, billed, strict=True):
        assert usage == pytest.approx(measured.quantum_s, rel=0.05), measured.label
    assert sum(billed) == pytest.approx(estimate.mode("jobs").billed_s, rel=0.05)

    # as a batch, for real: the batch's usage and the instance's
    middle = (await service.usage())["usage_consumed_seconds"]
    assert middle - before == pytest.approx(sum(billed))
    async with AsyncBatch(backend) as batch:
        jobs = await asyncio.gather(*(run_for_real(spec, batch) for spec in specs))
        await asyncio.gather(*jobs)
    after = (await service.usage())["usage_consumed_seconds"]
    assert await batch.usage() == pytest.approx(estimate.mode("batch").billed_s, rel=0.05)
    assert after - middle == pytest.approx(estimate.mode("batch").billed_s, rel=0.05)
    print(
        f"estimate vs billed: jobs {estimate.mode('jobs').billed_s:.3f} vs {sum(billed):.3f}; "
        f"batch {estimate.mode('batch').billed_s:.3f} vs {after - middle:.3f}"
    )


# -- the command line ------------------------------------------------------------------------------


def cli_args(emulator: EmulatorThread) -> list[str]:
    return [
        *("--backend", "ibm_manila", "--url", emulator.runtime_url, "--token", emulator.api_key),
        *("--instance", emulator.instance, "--iam-url", emulator.base_url),
    ]


def test_cli_prints_a_table(emulator: EmulatorThread, capsys: pytest.CaptureFixture[str]) -> None:
    estimate = main([*cli_args(emulator), "--workload", "sampler", "--jobs", "4", "--idle", "5"])
    out = capsys.readouterr().out
    assert "ibm_manila: 4 job(s)" in out and "billed QPU s" in out
    for mode in ("jobs", "batch", "session"):
        assert f"\n{mode} " in out
    (measured,) = {j.job_ids: j for j in estimate.jobs}.values()  # one dry run for four jobs
    assert estimate.mode("batch").billed_s == pytest.approx(4 * measured.quantum_s)
    assert estimate.mode("session").billed_s > estimate.mode("batch").billed_s + 3 * 5


def test_cli_reads_a_workload_file(
    emulator: EmulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "workload.py"
    path.write_text(
        textwrap.dedent(
            """
            from qiskit import QuantumCircuit
            from qiskit.transpiler import generate_preset_pass_manager
            from aioruntime.estimate import JobSpec

            def workload(backend):
                qc = QuantumCircuit(3)
                qc.h(0)
                qc.cx(0, 1)
                qc.cx(1, 2)
                qc.measure_all()
                isa = generate_preset_pass_manager(1, target=backend.target).run(qc)
                return [JobSpec("sampler", [isa], shots=n, label=f"ghz {n}") for n in (100, 4000)]
            """
        )
    )
    estimate = main([*cli_args(emulator), "--file", str(path), "--json"])
    assert '"billed_s"' in capsys.readouterr().out
    small, large = estimate.jobs
    assert large.quantum_s - small.quantum_s == pytest.approx(3900 * 345e-6, rel=0.1)


def test_readme_example_runs(emulator: EmulatorThread) -> None:
    """The README's executor-path example, as written (only the port differs)."""
    from test_readme import python_blocks, run_block

    (example,) = python_blocks("## IBM's executor path and cost estimates in aioruntime")
    output = run_block(example, emulator)
    batch, evs = output.strip().splitlines()
    assert batch.startswith("as a batch: ") and float(batch.split()[3]) > 4 * 2.0
    assert evs == "[1. 1.]"  # a noiseless Bell pair: <ZZ> = <XX> = 1
