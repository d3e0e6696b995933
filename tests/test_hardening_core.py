"""What the emulator promises under faults, over HTTP: durable answers, a full disk, a runaway QPU.

* Every 2xx is sent only after its change is committed: a SIGKILL right after the answers loses
  none of them.
* A full disk refuses new work with 507 and IBM's error body, changes nothing, never shows a
  final state that could later change, and recovers by itself when space returns. (The admin
  fault plan's ``disk_full`` makes every write fail with SQLite's own "database or disk is
  full"; ``tests/test_store.py`` fills a real database to its page limit.)
* Every Aer run has a wall-clock budget: a simulation past it, or a QPU worker that stopped
  answering, is killed and replaced, the job fails naming the budget, and the next job runs.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from qiskit import QuantumCircuit
from qiskit.circuit.library import quantum_volume
from rest import Api, Server, free_port, isa_bell

from aioruntime import protocol as p
from emulator.testing import EmulatorThread

BACKEND = "ibm_manila"


def test_answers_are_durable_when_sent(tmp_path: Path) -> None:
    """Sessions closed or cancelled, tags replaced, jobs cancelled: SIGKILL right after the
    answers, restart, and every answered change is there."""
    port = free_port()
    server = Server(tmp_path, port).start()
    try:
        api = Api(server.base_url, "k1")
        make = {"mode": "batch", "backend": BACKEND, "instance": p.DEFAULT_INSTANCE}
        closed = [api("POST", p.SESSIONS, json=make).json()["id"] for _ in range(8)]
        cancelled = [api("POST", p.SESSIONS, json=make).json()["id"] for _ in range(8)]
        for sid in closed:
            resp = api("PATCH", f"/sessions/{sid}", json={"accepting_jobs": False})
            assert resp.status_code == 204
        for sid in cancelled:
            assert api("DELETE", f"/sessions/{sid}/close").status_code == 204
        admin = {"Authorization": f"Bearer {server.admin_key}"}
        requests.post(
            server.base_url + f"/admin/backends/{BACKEND}/pause", headers=admin, timeout=30
        )
        jobs = [api.submit() for _ in range(4)]
        assert api("PUT", f"/jobs/{jobs[0]}/tags", json={"tags": ["kept"]}).status_code == 204
        assert api("POST", f"/jobs/{jobs[1]}/cancel").status_code == 204
        server.kill(signal.SIGKILL)
    finally:
        if server.proc.poll() is None:
            server.kill(signal.SIGKILL)
    again = Server(tmp_path, port).start()
    try:
        api = Api(again.base_url, "k1")
        for sid in closed + cancelled:
            assert api("GET", f"/sessions/{sid}").json()["state"] == "closed", sid
            refused = api.submit_raw(session_id=sid)
            assert refused.status_code == 409
        assert api("GET", f"/jobs/{jobs[0]}").json()["tags"] == ["kept"]
        assert api("GET", f"/jobs/{jobs[1]}").json()["state"]["status"] == "Cancelled"
        assert {api.wait(j)["state"]["status"] for j in jobs[2:]} == {"Completed"}
    finally:
        again.kill(signal.SIGKILL)


def test_a_full_disk_refuses_work_and_recovers(make_emulator: Any) -> None:
    emu: EmulatorThread = make_emulator(backends=BACKEND)
    api = Api(emu.base_url, emu.api_key)
    emu.call(lambda: emu.scheduler.pause(BACKEND, lanes=False, qpu=True))
    waiting = [api.submit() for _ in range(3)]  # accepted, held before the QPU
    # each took a lane and its Running state is saved before the disk fills (a job whose start
    # cannot be saved stays Queued, rightly, and is not what this test is about)
    deadline = time.monotonic() + 120
    while any(api("GET", f"/jobs/{j}").json()["state"]["status"] != "Running" for j in waiting):
        assert time.monotonic() < deadline, "the three jobs never all started"
        time.sleep(0.02)
    admin = {"Authorization": f"Bearer {emu.config.admin_key}"}
    faults = emu.base_url + "/admin/faults"
    requests.put(faults, json={"disk_full": True}, headers=admin, timeout=30).raise_for_status()

    refused = api.submit_raw()
    assert refused.status_code == 507
    body = refused.json()
    assert body["errors"][0]["code"] == str(p.ErrorCode.STORAGE_UNAVAILABLE)
    assert "nothing was changed" in body["errors"][0]["message"]
    make = {"mode": "batch", "backend": BACKEND, "instance": p.DEFAULT_INSTANCE}
    assert api("POST", p.SESSIONS, json=make).status_code == 507
    assert api("PUT", f"/jobs/{waiting[0]}/tags", json={"tags": ["kept"]}).status_code == 507
    assert api("POST", f"/jobs/{waiting[0]}/cancel").status_code == 507
    assert api("GET", f"/jobs/{waiting[0]}").json()["state"]["status"] == "Running"

    # The jobs run, but their outcome cannot be saved: they show Running, never a final state
    # that could change later; their results wait in memory.
    emu.call(lambda: emu.scheduler.resume(BACKEND))
    emu.until(lambda s: s.statistics().backend(BACKEND).lanes.busy == 0 and not s._queued)
    assert [api("GET", f"/jobs/{j}").json()["state"]["status"] for j in waiting] == ["Running"] * 3

    requests.delete(faults, headers=admin, timeout=30).raise_for_status()  # space returns
    results = [api.wait(j) for j in waiting]
    assert [r["state"]["status"] for r in results] == ["Completed"] * 3
    for job_id in waiting:
        assert api("GET", f"/jobs/{job_id}/results").status_code == 200
    assert api.wait(api.submit())["state"]["status"] == "Completed"


def _runaway() -> QuantumCircuit:
    """A dense 24-qubit circuit: minutes of Aer time on two cores."""
    from qiskit.transpiler import generate_preset_pass_manager

    from emulator.backends import device_target

    qc = quantum_volume(24, depth=60, seed=3)
    qc.measure_all()
    pm = generate_preset_pass_manager(
        optimization_level=0, target=device_target("fez"), seed_transpiler=1
    )
    return pm.run(qc)


def test_a_stopped_qpu_worker_is_replaced_and_only_its_job_fails(make_emulator: Any) -> None:
    # Pre-processing would refuse this job at once (predicted far over 8 s); let it reach the
    # QPU, where the budget stops it.
    emu: EmulatorThread = make_emulator(
        backends="ibm_fez", sim_budget_s=8.0, sim_refuse_predicted=False
    )
    api = Api(emu.base_url, emu.api_key)
    body = {
        "program_id": "sampler",
        "backend": "ibm_fez",
        "params": {"pubs": [[_runaway(), np.empty((0,)), 10]], "version": 2},
    }
    runaway = api.submit_body(body)
    emu.until(lambda s: s.statistics().backend("ibm_fez").qpu_job == runaway)
    for pid in emu.call(lambda: emu.scheduler.plane.qpu_pool.pids):  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGSTOP)  # it stops answering
    fez_bell = {
        "program_id": "sampler",
        "backend": "ibm_fez",
        "params": {"pubs": [[isa_bell("fez"), np.empty((0,)), 10]], "version": 2},
    }
    other = api.submit_body(fez_bell)
    failed = api.wait(runaway)
    assert failed["state"]["status"] == "Failed"
    assert "--sim-budget" in failed["state"]["reason"]
    assert api.wait(other)["state"]["status"] == "Completed"  # a fresh worker took over


@pytest.fixture(autouse=True)
def _no_stopped_workers() -> Any:
    yield
    for pid in _stopped_children():
        os.kill(pid, signal.SIGKILL)


def _stopped_children() -> list[int]:
    import psutil

    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_STOPPED:
                out.append(child.pid)
        except psutil.Error:
            pass
    return out
