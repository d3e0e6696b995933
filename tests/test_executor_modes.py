"""The executor primitives in sessions and batches (manual clock), and with device noise.

Same rules as for the legacy programs (``test_emulator_sessions.py``): every job carries its
session id, an active session owns the QPU until its interactive TTL runs out, a session bills
its active window and a batch the sum of its jobs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import numpy as np
import pytest
from circuits import bell
from conftest import emulator_config
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import Batch, Session
from qiskit_ibm_runtime.executor_estimator import Estimator
from qiskit_ibm_runtime.executor_sampler import SamplerV2

from emulator.testing import EmulatorThread

BACKEND = "ibm_fez"


class Rig:
    """An emulator, the official service, a backend and ISA Bell circuits for it."""

    def __init__(self, emu: EmulatorThread, backend: str = BACKEND) -> None:
        self.emu = emu
        self.service = emu.official_service()
        self.backend = self.service.backend(backend)
        pm = generate_preset_pass_manager(
            optimization_level=1, target=self.backend.target, seed_transpiler=3
        )
        self.isa = pm.run(bell())
        self.isa_state = pm.run(bell(measure=False))

    def sample(self, mode: Any, shots: int = 20) -> Any:
        return SamplerV2(mode=mode).run([self.isa], shots=shots)

    def estimate(self, mode: Any) -> Any:
        estimator = Estimator(mode=mode)
        estimator.options.twirling.num_randomizations = 2
        estimator.options.default_shots = 64
        obs = SparsePauliOp("ZZ").apply_layout(self.isa_state.layout)
        return estimator.run([(self.isa_state, obs)])


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    """Shared by the mode tests: each closes the sessions it opens."""
    with EmulatorThread(emulator_config(backends=BACKEND, clock="manual", lanes=2)) as emu:
        yield Rig(emu)


def chunk_span(job: Any) -> tuple[datetime, datetime]:
    chunks = job.result().metadata["executor"].chunk_timing
    return chunks[0].start, chunks[-1].stop


def test_session_owns_the_qpu_and_bills_its_window(rig: Rig) -> None:
    other = rig.emu.official_service().backend(BACKEND)
    session = Session(backend=rig.backend)
    first = rig.sample(session)
    first.result()
    outsider = rig.sample(other)  # job mode: Queued, no lane, while the session is active
    rig.emu.until(lambda s: s.statistics().backend(BACKEND).lanes.waiting == 1)
    rig.emu.advance(30)
    second = rig.estimate(session)  # the client-side Estimator joins the same session
    assert second.result()[0].data.evs == pytest.approx(1.0, abs=0.05)
    assert outsider.status() == "QUEUED"  # still waiting for the session to let go
    rig.emu.advance(60)  # 60 s after the last job: the session goes inactive
    outsider.result()
    assert chunk_span(first)[1] <= chunk_span(second)[0]
    assert chunk_span(second)[1] <= chunk_span(outsider)[0]
    for job in (first, second):
        assert job.session_id == session.session_id
        assert rig.service.job(job.job_id()).session_id == session.session_id
    listed = rig.service.jobs(session_id=session.session_id, limit=None)
    assert sorted(j.job_id() for j in listed) == sorted([first.job_id(), second.job_id()])
    assert session.details()["usage_time"] == pytest.approx(30 + 60)
    session.close()


def test_batch_bills_the_sum_of_its_jobs(rig: Rig) -> None:
    before = rig.service.usage()["usage_consumed_seconds"]
    with Batch(backend=rig.backend) as batch:
        jobs = [rig.sample(batch), rig.estimate(batch), rig.sample(batch)]
        results = [job.result() for job in jobs]
    assert all(job.session_id == batch.session_id for job in jobs)
    assert results[0][0].data.meas.num_shots == 20
    spans = sorted(chunk_span(job) for job in jobs)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    usages = [job.usage() for job in jobs]
    assert all(u > 2.0 for u in usages)  # each pays the per-chunk overhead
    assert batch.usage() == pytest.approx(sum(usages))
    after = rig.service.usage()["usage_consumed_seconds"]
    assert after - before == pytest.approx(sum(usages))


def test_dry_run_inside_a_session_is_refused_clearly(rig: Rig) -> None:
    """A dry run goes to the mock twin, which is not the session's device."""
    session = Session(backend=rig.backend)
    with pytest.raises(Exception, match=r"(?s)mock_fez"):
        SamplerV2(mode=session).run([rig.isa], shots=10, dry_run=True)
    session.cancel()


# ---------------------------------------------------------------------------------------------
# With the device's noise
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy_emulator() -> Iterator[EmulatorThread]:
    config = emulator_config(backends="ibm_fez,ibm_manila", noise=True, lanes=1)
    with EmulatorThread(config) as emu:
        yield emu


@pytest.fixture(scope="module")
def noisy(noisy_emulator: EmulatorThread) -> Rig:
    return Rig(noisy_emulator)


def test_noisy_sampler_is_mostly_correlated(noisy: Rig) -> None:
    counts = SamplerV2(mode=noisy.backend).run([noisy.isa], shots=2000).result()[0]
    counts = counts.data.meas.get_counts()
    correlated = counts.get("00", 0) + counts.get("11", 0)
    assert sum(counts.values()) == 2000
    assert correlated > 0.85 * 2000
    assert correlated < 2000  # the device's errors show


def test_noisy_estimator_has_positive_standard_errors(noisy_emulator: EmulatorThread) -> None:
    noisy = Rig(noisy_emulator, "ibm_manila")  # a noisy 156-qubit Estimator job takes seconds
    estimator = Estimator(mode=noisy.backend)
    estimator.options.twirling.num_randomizations = 4
    estimator.options.default_shots = 1024
    obs = [
        SparsePauliOp(label).apply_layout(noisy.isa_state.layout) for label in ("ZZ", "XX", "IZ")
    ]
    result = estimator.run([(noisy.isa_state, obs)]).result()
    evs, stds = result[0].data.evs, result[0].data.stds
    assert evs[:2] == pytest.approx([1.0, 1.0], abs=0.1)  # TREX undoes most readout error
    assert abs(evs[2]) < 0.15
    assert np.all(stds > 0)
