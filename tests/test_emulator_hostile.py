"""What a hostile tenant or an unlucky operator sends: every answer is a 4xx with IBM's error
body (or a job that fails with a validation reason), never a 500 or an "internal error"."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from aioruntime import protocol as p
from emulator.testing import EmulatorThread


def token_headers(emu: EmulatorThread) -> dict[str, str]:
    token = requests.post(
        emu.base_url + p.IAM_TOKEN,
        data={"grant_type": p.IAM_GRANT_TYPE, "apikey": emu.api_key},
        timeout=10,
    ).json()["access_token"]
    return {"Authorization": f"Bearer {token}", p.HEADER_SERVICE_CRN: emu.instance}


def assert_ibm_error(resp: requests.Response, status: int, words: str = "") -> None:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["errors"][0]
    assert error["code"] and words.lower() in error["message"].lower()


def test_non_ascii_credentials_are_refused_not_500(emulator: EmulatorThread) -> None:
    iam = requests.post(
        emulator.base_url + p.IAM_TOKEN,
        data={"grant_type": p.IAM_GRANT_TYPE, "apikey": "clé-ключ-🔑"},
        timeout=10,
    )
    assert iam.status_code == 400 and iam.json()["errorCode"] == "BXNIM0415E"
    # requests sends header values as latin-1 bytes; aiohttp hands them on surrogate-escaped
    for authorization in ("apikey clé", "Bearer clé", "Bearer é.é.é"):
        resp = requests.get(
            emulator.runtime_url + p.BACKENDS,
            headers={"Authorization": authorization, p.HEADER_SERVICE_CRN: emulator.instance},
            timeout=10,
        )
        assert_ibm_error(resp, 401)
    admin = requests.get(
        emulator.base_url + "/admin/faults", headers={"Authorization": "Bearer clé"}, timeout=10
    )
    assert_ibm_error(admin, 401, "admin key")


@pytest.mark.parametrize("path", [p.JOBS, p.SESSIONS])
@pytest.mark.parametrize("depth", [65, 5_000])
def test_deeply_nested_bodies_are_400(emulator: EmulatorThread, path: str, depth: int) -> None:
    headers = {**token_headers(emulator), "Content-Type": "application/json"}
    for body in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        resp = requests.post(emulator.runtime_url + path, data=body, headers=headers, timeout=30)
        assert_ibm_error(resp, 400, "nests objects and arrays more than 64 deep")
    # as deep as the official client ever goes is fine (params → pubs → PUB → array → dict)
    nested: Any = {"ZZ": 1.0}
    for _ in range(5):
        nested = [nested]
    resp = requests.post(
        emulator.runtime_url + path,
        json={"program_id": "sampler", "backend": "nope", "params": {"pubs": nested}},
        headers=headers,
        timeout=30,
    )
    assert resp.status_code == 400 and "nests" not in resp.text


@pytest.mark.parametrize(
    "plan",
    [
        {"error_rate": 1, "error_statuses": []},
        {"error_statuses": "503"},
        {"error_statuses": [True]},
        {"seed": [1]},
        {"seed": "x"},
        {"latency_ms": "fast"},
        {"worker_delay_ms": -1},
        {"paths": [1]},
        {"error_rate": None},
    ],
)
def test_bad_fault_plans_are_400_and_change_nothing(
    emulator: EmulatorThread, plan: dict[str, Any]
) -> None:
    admin = {"Authorization": f"Bearer {emulator.config.admin_key}"}
    url = emulator.base_url + "/admin/faults"
    assert_ibm_error(requests.put(url, json=plan, headers=admin, timeout=10), 400, "fault plan")
    assert requests.get(url, headers=admin, timeout=10).json()["error_rate"] == 0
    resp = requests.get(
        emulator.runtime_url + p.BACKENDS, headers=token_headers(emulator), timeout=10
    )
    assert resp.status_code == 200
