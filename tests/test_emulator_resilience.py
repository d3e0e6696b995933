"""Nothing lost across restarts and crashes; no one in where they don't belong; faults on purpose.

The restart tests run the emulator as a real subprocess (``python -m emulator``) on a data
directory, kill it with SIGKILL or SIGTERM, and start it again on the same directory.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from qiskit_ibm_runtime.exceptions import (
    IBMInputValueError,
    IBMNotAuthorizedError,
    RuntimeJobNotFound,
)
from rest import Api, Server, free_port, isa_bell

from aioruntime import protocol as p
from emulator.testing import EmulatorThread

OTHER = "crn:v1:bluemix:public:quantum-computing:us-east:a/tenant-b::"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        if server.proc and server.proc.poll() is None:
            server.kill(signal.SIGKILL)


def test_sigkill_mid_run_loses_no_job(tmp_path: Path, servers: list[Server]) -> None:
    port = free_port()
    first = Server(tmp_path, port, "--clock", "scaled:0.1").start()
    servers.append(first)
    api = Api(first.base_url, "k1")
    session = api(
        "POST",
        p.SESSIONS,
        json={"mode": "dedicated", "backend": "ibm_manila", "instance": p.DEFAULT_INSTANCE},
    ).json()["id"]
    in_session = api.submit(session_id=session)
    ids = [api.submit() for _ in range(8)]
    assert api.wait(in_session)["state"]["status"] == "Completed"
    assert first.kill(signal.SIGKILL) == -signal.SIGKILL

    second = Server(tmp_path, port, "--clock", "scaled:0.1").start()
    servers.append(second)
    api = Api(second.base_url, "k1")
    states = {job_id: api.wait(job_id)["state"]["status"] for job_id in [in_session, *ids]}
    assert set(states.values()) == {"Completed"}, states
    requeued = [j for j in ids if "re-queued" in api("GET", f"/jobs/{j}/logs").text]
    assert requeued, "the kill should have caught some jobs in flight"
    listed = api("GET", p.JOBS, params={"limit": 100}).json()
    assert listed["count"] == 9  # none lost, none duplicated
    # the session came back: no longer active (its window ended with the crash), still usable
    details = api("GET", f"/sessions/{session}").json()
    assert details["state"] == "inactive" and details["accepting_jobs"] is True
    assert details["elapsed_time"] > 0
    assert api.wait(api.submit(session_id=session))["state"]["status"] == "Completed"
    # the official client (its token issued before the crash would still be valid) reads all
    service = second.official_service(token="k1")
    for job_id in ids:
        assert service.job(job_id).result()[0].data.meas.num_shots == 50


def test_sigterm_drains_and_exits_cleanly(tmp_path: Path, servers: list[Server]) -> None:
    port = free_port()
    server = Server(tmp_path, port, "--clock", "scaled:0.05").start()
    servers.append(server)
    api = Api(server.base_url, "k1")
    ids = [api.submit() for _ in range(4)]
    assert server.kill(signal.SIGTERM) == 0
    again = Server(tmp_path, port).start()
    servers.append(again)
    api = Api(again.base_url, "k1")
    for job_id in ids:
        assert api.wait(job_id)["state"]["status"] == "Completed"
        assert "re-queued" not in api("GET", f"/jobs/{job_id}/logs").text  # drained, not re-run


def test_killing_a_worker_mid_job_fails_only_that_job(emulator: EmulatorThread) -> None:
    api = Api(emulator.base_url, emulator.api_key)
    admin = {"Authorization": f"Bearer {emulator.config.admin_key}"}
    requests.put(
        emulator.base_url + "/admin/faults",
        json={"worker_delay_ms": 30_000},
        headers=admin,
        timeout=10,
    ).raise_for_status()
    emulator.run(lambda: emulator.scheduler.ready.wait())  # every worker started
    job_id = api.submit()
    # its worker is computing (it acknowledged the call; the stage stalls 30 s): a lane worker,
    # or the QPU worker on the fast path. Until then a kill would only make the pool resend the
    # call to a fresh worker (nothing ran), and the job would complete.
    plane: Any = emulator.scheduler.plane
    busy = lambda: plane.lane_pool.busy_pids + plane.qpu_pool.busy_pids  # noqa: E731
    deadline = time.monotonic() + 120
    while not emulator.call(busy):
        assert time.monotonic() < deadline, "the job's call never reached a worker"
        time.sleep(0.02)
    requests.delete(emulator.base_url + "/admin/faults", headers=admin, timeout=10)
    workers = emulator.call(lambda: plane.lane_pool.pids + plane.qpu_pool.pids)
    assert workers
    for pid in workers:  # the stalled one is among them; idle ones are replaced as well
        os.kill(pid, signal.SIGKILL)
    body = api.wait(job_id)
    assert body["state"]["status"] == "Failed"
    assert body["state"]["reason_code"] == p.ErrorCode.EMULATOR_FAULT
    assert "worker process" in body["state"]["reason"]
    assert api.wait(api.submit())["state"]["status"] == "Completed"


def test_instances_are_tenants(make_emulator: Any) -> None:
    from emulator.config import ApiKey

    emu = make_emulator(
        backends="ibm_manila",
        instances=(p.DEFAULT_INSTANCE, OTHER),
        api_keys=(ApiKey("key-a", (p.DEFAULT_INSTANCE,)), ApiKey("key-b", (OTHER,))),
    )
    a, b = Api(emu.base_url, "key-a"), Api(emu.base_url, "key-b", OTHER)
    job_a = a.submit()
    session_a = a("POST", p.SESSIONS, json={"backend": "ibm_manila", "mode": "batch"}).json()["id"]
    for method, path in [
        ("GET", f"/jobs/{job_a}"),
        ("GET", f"/jobs/{job_a}/results"),
        ("POST", f"/jobs/{job_a}/cancel"),
        ("DELETE", f"/jobs/{job_a}"),
        ("GET", f"/sessions/{session_a}"),
        ("DELETE", f"/sessions/{session_a}/close"),
    ]:
        assert b(method, path).status_code == 404, (method, path)
    assert b("GET", p.JOBS).json()["count"] == 0
    resp = b(
        "POST",
        p.JOBS,
        headers={"Content-Type": "application/json"},
        data=p.dumps(
            {
                "program_id": "sampler",
                "backend": "ibm_manila",
                "session_id": session_a,
                "params": {"pubs": [[isa_bell(), np.empty((0,)), 10]]},
            }
        ),
    )
    assert resp.status_code == 404  # joining another tenant's session
    # key-b may not act for instance A at all
    assert b("GET", p.JOBS, headers={p.HEADER_SERVICE_CRN: p.DEFAULT_INSTANCE}).status_code == 401
    assert a.wait(job_a)["state"]["status"] == "Completed"
    # the official client sees the same walls
    service_b = emu.official_service(token="key-b", instance=OTHER)
    with pytest.raises(RuntimeJobNotFound):
        service_b.job(job_a)
    assert service_b.jobs() == []
    # key-b cannot even construct a service for instance A: search does not list it
    with pytest.raises(IBMInputValueError, match="does not have access"):
        emu.official_service(token="key-b", instance=p.DEFAULT_INSTANCE)
    # and if the client skips that check, the Runtime API itself answers 401
    sneaky = emu.official_service(
        token="key-b", instance=p.DEFAULT_INSTANCE, env={"QISKIT_FUNCTIONS_EXPERIMENTAL": "1"}
    )
    with pytest.raises(IBMNotAuthorizedError):
        sneaky.job(job_a)


def test_limits_answer_clearly(make_emulator: Any) -> None:
    emu = make_emulator(
        backends="ibm_manila", max_pending_jobs_per_instance=2, max_body_bytes=200_000
    )
    api = Api(emu.base_url, emu.api_key)
    resp = api("POST", p.JOBS, data=b"x" * 300_000, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and resp.json()["errors"]
    emu.call(lambda: emu.scheduler.pause("ibm_manila"))
    api.submit()
    api.submit()
    resp = api(
        "POST",
        p.JOBS,
        headers={"Content-Type": "application/json"},
        data=p.dumps(
            {
                "program_id": "sampler",
                "backend": "ibm_manila",
                "params": {"pubs": [[isa_bell(), np.empty((0,)), 10]]},
            }
        ),
    )
    assert resp.status_code == 429
    assert resp.json()["errors"][0]["code"] == str(p.ErrorCode.TOO_MANY_JOBS)
    emu.call(lambda: emu.scheduler.resume("ibm_manila"))


def test_fault_plan_is_seeded_and_admin_keyed(emulator: EmulatorThread) -> None:
    url = emulator.base_url + "/admin/faults"
    admin = {"Authorization": f"Bearer {emulator.config.admin_key}"}
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.put(url, json={"error_rate": 2}, headers=admin, timeout=5).status_code == 400
    api = Api(emulator.base_url, emulator.api_key)

    def statuses() -> list[int]:
        requests.put(
            url,
            json={
                "seed": 7,
                "error_rate": 0.5,
                "error_statuses": [503, 429],
                "paths": ["/backends"],
            },
            headers=admin,
            timeout=5,
        ).raise_for_status()
        return [api("GET", p.BACKENDS).status_code for _ in range(20)]

    first, second = statuses(), statuses()
    assert first == second  # same seed, same faults
    assert {200, 503, 429} <= set(first)
    assert requests.get(url, headers=admin, timeout=5).json()["injected"] > 0
    requests.delete(url, headers=admin, timeout=5)
    assert api("GET", p.BACKENDS).status_code == 200


def test_idempotent_submission(emulator: EmulatorThread) -> None:
    api = Api(emulator.base_url, emulator.api_key)
    key = {p.HEADER_IDEMPOTENCY_KEY: "retry-me-1"}
    body = {
        "program_id": "sampler",
        "backend": "ibm_manila",
        "params": {"pubs": [[isa_bell(), np.empty((0,)), 10]]},
    }
    ids = {
        api(
            "POST", p.JOBS, data=p.dumps(body), headers={"Content-Type": "application/json", **key}
        ).json()["id"]
        for _ in range(3)
    }
    assert len(ids) == 1
