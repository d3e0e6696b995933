"""The Runtime API over raw HTTP: bad input gets a clear 4xx or a Failed job, never a 500."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
import requests
from qiskit import QuantumCircuit
from qiskit.transpiler import generate_preset_pass_manager
from rest import isa_bell

from aioruntime import protocol as p
from emulator.backends import device_target
from emulator.testing import EmulatorThread


class Raw:
    """A bare HTTP client with a real IAM token, for requests the official client won't send."""

    def __init__(self, emu: EmulatorThread) -> None:
        self.emu = emu
        token = requests.post(
            emu.base_url + p.IAM_TOKEN,
            data={"grant_type": p.IAM_GRANT_TYPE, "apikey": emu.api_key},
            timeout=10,
        ).json()["access_token"]
        self.headers = {"Authorization": f"Bearer {token}", p.HEADER_SERVICE_CRN: emu.instance}

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return requests.request(
            method, self.emu.runtime_url + path, headers=headers, timeout=30, **kw
        )

    def submit(self, body: dict[str, Any] | str | bytes) -> requests.Response:
        data = body if isinstance(body, (str, bytes)) else p.dumps(body)
        return self.request("POST", p.JOBS, data=data, headers={"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def raw(emulator: EmulatorThread) -> Raw:
    return Raw(emulator)


def sampler_body(circuit: Any, shots: Any = 100, **extra: Any) -> dict[str, Any]:
    pub = [circuit, np.empty((0,)), shots]
    return {
        "program_id": "sampler",
        "backend": "ibm_manila",
        "params": {"pubs": [pub], "options": {}, "version": 2, "support_qiskit": True},
        **extra,
    }


def assert_error(resp: requests.Response, status: int, code: int, words: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["errors"][0]["code"] == str(code)
    assert words.lower() in body["errors"][0]["message"].lower()


def failed_reason(emu: EmulatorThread, raw: Raw, body: dict[str, Any]) -> dict[str, Any]:
    resp = raw.submit(body)
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["id"]
    assert emu.wait_final(job_id) == "Failed"
    state: dict[str, Any] = raw.request("GET", f"/jobs/{job_id}").json()["state"]
    results = raw.request("GET", f"/jobs/{job_id}/results")
    assert results.status_code == 200 and str(state["reason_code"]) in results.text
    return state


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        ("{not json", 400, 1002, "not valid json"),
        ("[1, 2]", 400, 1002, "json object"),
        ({"backend": "ibm_manila", "params": {"pubs": [1]}}, 400, 1002, "program_id"),
        (
            {"program_id": "qaoa", "backend": "ibm_manila", "params": {"pubs": [1]}},
            404,
            1002,
            "not found",
        ),
        (
            {"program_id": "sampler", "backend": "ibm_nowhere", "params": {"pubs": [1]}},
            400,
            1007,
            "ibm_nowhere",
        ),
        ({"program_id": "sampler", "backend": "ibm_manila"}, 400, 1002, "params"),
        (
            {"program_id": "sampler", "backend": "ibm_manila", "params": {"pubs": []}},
            400,
            1002,
            "pubs",
        ),
        (
            {"program_id": 7, "backend": "ibm_manila", "params": {"pubs": [1]}},
            400,
            1002,
            "program_id",
        ),
        (
            {
                "program_id": "sampler",
                "backend": "ibm_manila",
                "params": {"pubs": [1]},
                "tags": "x",
            },
            400,
            1002,
            "tags",
        ),
        (
            {"program_id": "sampler", "backend": "ibm_manila", "params": {"pubs": [1]}, "cost": -5},
            400,
            1002,
            "cost",
        ),
        (
            {
                "program_id": "sampler",
                "backend": "ibm_manila",
                "params": {"pubs": [1]},
                "cost": True,
            },
            400,
            1002,
            "cost",
        ),
        (
            {
                "program_id": "sampler",
                "backend": "ibm_manila",
                "params": {"pubs": [1]},
                "session_id": "nope",
            },
            404,
            p.ErrorCode.NOT_FOUND,
            "session",
        ),
    ],
)
def test_bad_requests_get_4xx(raw: Raw, body: Any, status: int, code: int, words: str) -> None:
    data = body if isinstance(body, str) else json.dumps(body)
    assert_error(raw.submit(data), status, code, words)


def test_bad_circuits_fail_the_job_with_a_reason(emulator: EmulatorThread, raw: Raw) -> None:
    wide = QuantumCircuit(7)
    wide.measure_all()
    state = failed_reason(emulator, raw, sampler_body(wide))
    assert state["reason_code"] == p.ErrorCode.VALIDATION and "7" in state["reason"]

    non_isa = QuantumCircuit(2)
    non_isa.h(0)
    non_isa.measure_all()
    state = failed_reason(emulator, raw, sampler_body(non_isa))
    assert state["reason_code"] == p.ErrorCode.TRANSPILATION and "'h'" in state["reason"]

    for shots in (0, 10**9):
        state = failed_reason(emulator, raw, sampler_body(isa_bell(), shots=shots))
        assert state["reason_code"] == p.ErrorCode.VALIDATION and "shots" in state["reason"].lower()

    garbage_qpy = {"__type__": "QuantumCircuit", "__value__": base64.b64encode(b"garbage").decode()}
    body = sampler_body(isa_bell())
    body["params"]["pubs"][0][0] = "PLACEHOLDER"
    text = p.dumps(body).replace('"PLACEHOLDER"', json.dumps(garbage_qpy))
    resp = raw.submit(text)
    assert resp.status_code == 200
    assert emulator.wait_final(resp.json()["id"]) == "Failed"


def test_bad_precision_fails_the_job(emulator: EmulatorThread, raw: Raw) -> None:
    qc = QuantumCircuit(2)
    qc.x(0)
    isa = generate_preset_pass_manager(optimization_level=1, target=device_target("manila")).run(qc)
    from qiskit.quantum_info import SparsePauliOp

    obs = SparsePauliOp("ZZ").apply_layout(isa.layout)
    body = {
        "program_id": "estimator",
        "backend": "ibm_manila",
        "params": {
            "pubs": [[isa, {obs.paulis[0].to_label(): 1.0}, np.empty((0,)), -0.1]],
            "options": {},
            "version": 2,
            "support_qiskit": True,
        },
    }
    state = failed_reason(emulator, raw, body)
    assert "precision" in state["reason"].lower()


def test_emulator_still_healthy_after_bad_input(emulator: EmulatorThread, raw: Raw) -> None:
    resp = raw.submit(sampler_body(isa_bell(), shots=10))
    assert resp.status_code == 200
    assert emulator.wait_final(resp.json()["id"]) == "Completed"
    assert requests.get(emulator.base_url + p.HEALTH, timeout=5).status_code == 200


def test_unknown_ids_and_routes(raw: Raw) -> None:
    for method, path in [
        ("GET", "/jobs/nope"),
        ("GET", "/jobs/nope/results"),
        ("POST", "/jobs/nope/cancel"),
        ("DELETE", "/jobs/nope"),
        ("GET", "/sessions/nope"),
        ("GET", "/backends/ibm_nowhere/configuration"),
        ("GET", "/no/such/route"),
    ]:
        resp = raw.request(method, path)
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.json()["errors"][0]["message"]


def test_cancel_of_final_job_is_409(emulator: EmulatorThread, raw: Raw) -> None:
    job_id = raw.submit(sampler_body(isa_bell(), shots=10)).json()["id"]
    emulator.wait_final(job_id)
    assert_error(
        raw.request("POST", f"/jobs/{job_id}/cancel"), 409, p.ErrorCode.INVALID_STATE, "already"
    )


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer not-a-jwt",
        "Bearer " + base64.b64encode(b"x" * 40).decode(),
        "apikey wrong-key",
        "Basic abc",
    ],
)
def test_bad_credentials_get_401(emulator: EmulatorThread, authorization: str | None) -> None:
    headers = {p.HEADER_SERVICE_CRN: emulator.instance}
    if authorization:
        headers["Authorization"] = authorization
    resp = requests.get(emulator.runtime_url + p.BACKENDS, headers=headers, timeout=5)
    assert resp.status_code == 401


def test_tampered_token_and_foreign_instance_get_401(emulator: EmulatorThread, raw: Raw) -> None:
    token = raw.headers["Authorization"].split()[1]
    header, payload, sig = token.split(".")
    tampered = f"{header}.{payload}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}"
    resp = requests.get(
        emulator.runtime_url + p.BACKENDS,
        timeout=5,
        headers={"Authorization": f"Bearer {tampered}", p.HEADER_SERVICE_CRN: emulator.instance},
    )
    assert resp.status_code == 401
    resp = raw.request("GET", p.BACKENDS, headers={p.HEADER_SERVICE_CRN: "crn:v1:other::"})
    assert resp.status_code == 401


def test_iam_rejects_unknown_key(emulator: EmulatorThread) -> None:
    resp = requests.post(
        emulator.base_url + p.IAM_TOKEN,
        timeout=5,
        data={"grant_type": p.IAM_GRANT_TYPE, "apikey": "wrong"},
    )
    assert resp.status_code == 400


def test_wait_extension_answers_when_final(emulator: EmulatorThread, raw: Raw) -> None:
    caps = raw.request("GET", p.EXT_CAPABILITIES).json()
    assert caps["extensions"]["job_wait"]["path"] == p.EXT_JOB_WAIT
    job_id = raw.submit(sampler_body(isa_bell(), shots=10)).json()["id"]
    body = raw.request("GET", p.EXT_JOB_WAIT.format(job_id=job_id), params={"timeout": 60}).json()
    assert body["state"]["status"] == "Completed"
