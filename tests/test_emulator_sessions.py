"""Session and batch execution modes, with the official client, on a manual clock.

The manual clock only moves when a test calls ``emu.advance``: interactive and max TTLs expire
exactly when the test says, and nothing sleeps.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import numpy as np
import pytest
import requests
from circuits import bell
from qiskit.circuit.library import efficient_su2
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import Batch, EstimatorV2, SamplerV2, Session
from scipy.optimize import minimize

from aioruntime import protocol as p
from emulator.testing import EmulatorThread

BACKEND = "ibm_manila"


class Rig:
    """A manual-clock emulator, the official service, a backend and an ISA Bell circuit."""

    def __init__(self, emu: EmulatorThread) -> None:
        self.emu = emu
        self.service = emu.official_service()
        self.backend = self.service.backend(BACKEND)
        self.isa = generate_preset_pass_manager(
            optimization_level=1, target=self.backend.target, seed_transpiler=3
        ).run(bell())

    def run(self, mode: Any, shots: int = 20) -> Any:
        return SamplerV2(mode=mode).run([self.isa], shots=shots)

    def pause(self) -> None:
        self.emu.call(lambda: self.emu.scheduler.pause(BACKEND))

    def resume(self) -> None:
        self.emu.call(lambda: self.emu.scheduler.resume(BACKEND))


@pytest.fixture
def rig(make_emulator: Any, workers: str) -> Rig:
    return Rig(make_emulator(backends=BACKEND, clock="manual", workers=workers))


#: Also on the Ray worker plane (``conftest.workers``): one session and one batch test.
ON_BOTH_PLANES = pytest.mark.parametrize("workers", ["process", "ray"], indirect=True)


def qpu_span(job: Any) -> tuple[datetime, datetime]:
    span = job.result().metadata["execution"]["execution_spans"][0]
    return span.start, span.stop


def test_status_walks_pending_active_closing_closed(rig: Rig) -> None:
    session = Session(backend=rig.backend)
    assert session.status() == "Pending"
    rig.run(session).result()
    assert session.status() == "In progress, accepting new jobs"
    rig.pause()
    queued = rig.run(session)
    session.close()
    assert session.status() == "In progress, not accepting new jobs"
    rig.resume()
    assert queued.result()[0].data.meas.num_shots == 20
    assert rig.emu.call(lambda: rig.emu.store.session(session.session_id).state) == "closed"  # type: ignore[union-attr]
    assert session.status() == "Closed"


def test_details_has_every_documented_key(rig: Rig) -> None:
    with Session(backend=rig.backend, max_time=600) as session:
        rig.run(session).result()
        details = session.details()
    for key in (
        "id",
        "backend_name",
        "interactive_timeout",
        "max_time",
        "active_timeout",
        "state",
        "accepting_jobs",
        "last_job_started",
        "last_job_completed",
        "started_at",
        "closed_at",
        "activated_at",
        "mode",
        "usage_time",
    ):
        assert key in details, key
    assert details["backend_name"] == BACKEND
    assert details["mode"] == "dedicated"
    assert details["interactive_timeout"] == 60
    assert details["max_time"] == 600
    assert details["state"] == "active" and details["accepting_jobs"] is True
    assert details["started_at"] and details["activated_at"] and details["last_job_completed"]
    assert 0 < details["active_timeout"] <= 600


@ON_BOTH_PLANES
def test_active_session_owns_the_qpu_until_its_ttl_runs_out(rig: Rig) -> None:
    other = rig.emu.official_service()  # another client, job mode
    other_backend = other.backend(BACKEND)
    session = Session(backend=rig.backend)
    first = rig.run(session)
    first.result()
    outsider = rig.run(other_backend)
    # The session owns the QPU: an outsider gets no lane, it stays Queued (timing §4, revised).
    rig.emu.until(lambda s: s.statistics().backend(BACKEND).lanes.waiting == 1)
    assert outsider.status() == "QUEUED"
    rig.emu.advance(30)  # inside the 60 s interactive TTL: a new session job jumps the queue
    second = rig.run(session)
    second.result()
    assert outsider.status() == "QUEUED"
    rig.emu.advance(60)  # 60 s after the second job ended: the session goes inactive
    outsider.result()
    assert (
        qpu_span(first)[1] <= qpu_span(second)[0] and qpu_span(second)[1] <= qpu_span(outsider)[0]
    )
    details = session.details()
    assert details["state"] == "inactive"
    # usage: the active window from the first job to the TTL expiry, idle time included
    assert details["usage_time"] == pytest.approx(30 + 60)
    session.cancel()


def test_cancel_cancels_queued_jobs_and_closes(rig: Rig) -> None:
    session = Session(backend=rig.backend)
    rig.pause()
    jobs = [rig.run(session) for _ in range(3)]
    session.cancel()
    assert [rig.emu.wait_final(j.job_id()) for j in jobs] == ["Cancelled"] * 3
    assert session.status() == "Closed"
    rig.resume()


def test_max_ttl_fails_queued_jobs(rig: Rig) -> None:
    session = Session(backend=rig.backend, max_time=100)
    rig.run(session).result()
    rig.pause()
    late = rig.run(session)
    rig.emu.advance(101)
    assert rig.emu.wait_final(late.job_id()) == "Failed"
    assert session.status() == "Closed"
    reason = rig.emu.call(lambda: rig.emu.store.session(session.session_id).state_reason)  # type: ignore[union-attr]
    assert reason == "max TTL reached"
    rig.resume()


def test_job_after_close_is_refused(rig: Rig) -> None:
    session = Session(backend=rig.backend)
    rig.run(session).result()
    session.close()
    token = requests.post(
        rig.emu.base_url + p.IAM_TOKEN,
        timeout=5,
        data={"grant_type": p.IAM_GRANT_TYPE, "apikey": rig.emu.api_key},
    ).json()
    body = {
        "program_id": "sampler",
        "backend": BACKEND,
        "session_id": session.session_id,
        "params": {"pubs": [[rig.isa, np.empty((0,)), 10]], "version": 2},
    }
    resp = requests.post(
        rig.emu.runtime_url + p.JOBS,
        data=p.dumps(body),
        timeout=10,
        headers={
            "Authorization": f"Bearer {token['access_token']}",
            p.HEADER_SERVICE_CRN: rig.emu.instance,
            "Content-Type": "application/json",
        },
    )
    assert resp.status_code == 409
    assert "closed" in resp.json()["errors"][0]["message"]


@ON_BOTH_PLANES
def test_batch_overlaps_classical_work_and_runs_back_to_back(rig: Rig) -> None:
    outsider_service = rig.emu.official_service()
    # no `with Batch`: inside it the official client would pull the outsider's job into the batch
    batch = Batch(backend=rig.backend)
    rig.pause()
    jobs = [rig.run(batch) for _ in range(8)]
    rig.resume()
    outsider = rig.run(outsider_service.backend(BACKEND))  # arrives while the batch holds the QPU
    results = [j.result() for j in jobs]
    batch.close()
    outsider.result()
    stats = rig.emu.statistics().backend(BACKEND)
    assert stats.lanes.peak_busy == 5
    spans = sorted(qpu_span(j) for j in jobs)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert spans[-1][1] <= qpu_span(outsider)[0]  # nobody got in between the batch's jobs
    assert all(r[0].data.meas.num_shots == 20 for r in results)
    # batch usage is the sum of its jobs' quantum seconds
    assert batch.usage() == pytest.approx(sum(j.usage() for j in jobs))


def test_the_qpu_goes_from_job_to_job_without_a_gap(rig: Rig) -> None:
    """Jobs waiting for the QPU take it the instant the one before leaves it: each span
    starts exactly where the previous one stopped (the event loop's latency in between is not
    idle QPU time)."""
    batch = Batch(backend=rig.backend)
    rig.emu.call(lambda: rig.emu.scheduler.pause(BACKEND, lanes=False, qpu=True))
    jobs = [rig.run(batch) for _ in range(4)]
    rig.emu.until(lambda s: s.statistics().backend(BACKEND).qpu_ready == 4)  # pre-processed
    rig.resume()
    spans = sorted(qpu_span(j) for j in jobs)
    assert all(a[0] < a[1] == b[0] < b[1] for a, b in itertools.pairwise(spans))
    batch.close()


def test_usage_session_includes_idle_batch_equals_sum(rig: Rig) -> None:
    session = Session(backend=rig.backend)
    s_jobs = [rig.run(session)]
    s_jobs[0].result()
    rig.emu.advance(10)
    s_jobs.append(rig.run(session))
    s_jobs[1].result()
    rig.emu.advance(61)  # idle TTL expires 60 s after the last job
    assert session.usage() == pytest.approx(10 + 60)
    batch = Batch(backend=rig.backend)
    b_jobs = [rig.run(batch) for _ in range(2)]
    for j in b_jobs:
        j.result()
    assert batch.usage() == pytest.approx(sum(j.usage() for j in b_jobs))
    assert batch.usage() < session.usage()
    # GET /jobs?session_id= lists exactly a session's jobs
    listed = rig.service.jobs(session_id=session.session_id, limit=None)
    assert sorted(j.job_id() for j in listed) == sorted(j.job_id() for j in s_jobs)
    batch.close()
    total = rig.service.usage()["usage_consumed_seconds"]
    assert total == pytest.approx(session.usage() + batch.usage())
    session.close()


def test_ibm_two_vqe_threading_recipe_runs_unchanged(
    emulator: EmulatorThread, official: Any
) -> None:
    backend = official.backend(BACKEND)
    pm = generate_preset_pass_manager(
        optimization_level=1, target=backend.target, seed_transpiler=1
    )
    ansatz = pm.run(efficient_su2(2, reps=1))
    hamiltonian = SparsePauliOp.from_list([("ZZ", 1.0), ("XI", 0.5), ("IX", 0.5)]).apply_layout(
        ansatz.layout
    )
    x0 = np.full(ansatz.num_parameters, 0.3)

    def cost_func(params: Any, ansatz: Any, hamiltonian: Any, estimator: Any) -> float:
        return float(estimator.run([(ansatz, hamiltonian, params)]).result()[0].data.evs)

    # the seed's recipe, verbatim apart from small iteration limits
    def minimize_thread(estimator: Any, method: str) -> Any:
        return minimize(
            cost_func,
            x0,
            args=(ansatz, hamiltonian, estimator),
            method=method,
            options={"maxiter": 12},
        )

    with Session(backend=backend), ThreadPoolExecutor() as executor:
        estimator1 = EstimatorV2()
        estimator2 = EstimatorV2()
        estimator1.options.environment.job_tags = ["cobyla"]
        estimator2.options.environment.job_tags = ["nelder-mead"]
        estimator1.options.default_precision = 0.05
        estimator2.options.default_precision = 0.05
        cobyla_future = executor.submit(minimize_thread, estimator1, "cobyla")
        nelder_mead_future = executor.submit(minimize_thread, estimator2, "nelder-mead")
        cobyla_result = cobyla_future.result()
        nelder_mead_result = nelder_mead_future.result()
    assert cobyla_result.nfev >= 5 and nelder_mead_result.nfev >= 5
    assert cobyla_result.fun < cost_func(x0, ansatz, hamiltonian, EstimatorV2(mode=backend))
    assert len(official.jobs(job_tags=["cobyla"], limit=None)) == cobyla_result.nfev
