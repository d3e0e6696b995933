"""Property-based fuzz of every route: whatever arrives, the answer is a 4xx with an error body
(or a success), never a 5xx, and the emulator stays healthy."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aioruntime import protocol as p
from emulator.testing import EmulatorThread

ROUTES: list[tuple[str, str]] = [
    ("GET", p.BACKENDS),
    ("GET", p.BACKEND_CONFIGURATION),
    ("GET", p.BACKEND_PROPERTIES),
    ("GET", p.BACKEND_STATUS),
    ("GET", p.INSTANCES_USAGE),
    ("POST", p.JOBS),
    ("GET", p.JOBS),
    ("GET", p.JOB),
    ("DELETE", p.JOB),
    ("GET", p.JOB_RESULTS),
    ("GET", p.JOB_METRICS),
    ("GET", p.JOB_LOGS),
    ("POST", p.JOB_CANCEL),
    ("PUT", p.JOB_TAGS),
    ("POST", p.SESSIONS),
    ("GET", p.SESSION),
    ("PATCH", p.SESSION),
    ("DELETE", p.SESSION_CLOSE),
    ("GET", p.EXT_CAPABILITIES),
    ("GET", p.EXT_JOB_WAIT),
    ("GET", p.EXT_STATISTICS),
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
# Bodies shaped like the real ones, with wrong values in them
job_bodies = st.fixed_dictionaries(
    {},
    optional={
        "program_id": st.sampled_from(["sampler", "estimator", "x"]) | json_values,
        "backend": st.sampled_from(["ibm_manila", "nope"]) | json_values,
        "params": st.fixed_dictionaries(
            {},
            optional={
                "pubs": st.lists(
                    json_values | st.just({"__type__": "QuantumCircuit", "__value__": "eJwLz"}),
                    max_size=3,
                )
                | json_values,
                "options": json_values,
                "version": json_values,
            },
        )
        | json_values,
        "tags": json_values,
        "cost": json_values,
        "session_id": json_values,
        "private": json_values,
        "mode": st.sampled_from(["dedicated", "batch"]) | json_values,
        "max_ttl": json_values,
        "accepting_jobs": json_values,
    },
)
ids = st.sampled_from(["nope", "ibm_manila", "d" + "0" * 20]) | st.text(
    alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=30
)
queries = st.dictionaries(
    st.sampled_from(
        [
            "limit",
            "offset",
            "pending",
            "tags",
            "sort",
            "created_after",
            "timeout",
            "exclude_params",
            "backend",
            "session_id",
        ]
    ),
    st.text(max_size=12) | st.integers(-(10**12), 10**12).map(str),
    max_size=4,
)
raw_bodies = (
    st.binary(max_size=200)
    | job_bodies.map(lambda b: json.dumps(b).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
)


@pytest.fixture(scope="module")
def auth(emulator: EmulatorThread) -> dict[str, str]:
    token = requests.post(
        emulator.base_url + p.IAM_TOKEN,
        timeout=10,
        data={"grant_type": p.IAM_GRANT_TYPE, "apikey": emulator.api_key},
    ).json()
    return {
        "Authorization": f"Bearer {token['access_token']}",
        p.HEADER_SERVICE_CRN: emulator.instance,
    }


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    route=st.sampled_from(ROUTES),
    ident=ids,
    query=queries,
    body=raw_bodies,
    wrong_instance=st.booleans(),
)
def test_every_route_answers_bad_input_with_4xx(
    emulator: EmulatorThread,
    auth: dict[str, str],
    route: tuple[str, str],
    ident: str,
    query: dict[str, str],
    body: bytes,
    wrong_instance: bool,
) -> None:
    method, template = route
    path = template.format(name=ident, job_id=ident, session_id=ident)
    headers = {**auth, "Content-Type": "application/json"}
    if wrong_instance:
        headers[p.HEADER_SERVICE_CRN] = "crn:v1:other::"
    resp = requests.request(
        method,
        emulator.runtime_url + path,
        params=query,
        timeout=60,
        data=body if method in ("POST", "PUT", "PATCH") else None,
        headers=headers,
    )
    assert resp.status_code < 500, (method, path, query, body[:200], resp.text[:300])
    if resp.status_code >= 400:
        error: Any = resp.json()["errors"][0]
        assert error["message"] and error["code"]


def test_healthy_after_fuzzing(emulator: EmulatorThread) -> None:
    assert requests.get(emulator.base_url + p.HEALTH, timeout=5).json()["status"] == "ok"
    stats = emulator.statistics().backend("ibm_manila")
    assert stats.lanes.busy >= 0 and stats.qpu_peak <= 1
