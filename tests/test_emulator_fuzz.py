"""Property-based fuzz of every route and of job bodies: whatever arrives, the answer is a 4xx
with an error body (or a success), never a 5xx; a job that is accepted ends without an internal
error (1000) or a dead worker (1519): bad input fails it as a validation error; and the emulator
stays healthy. Examples are drawn from a fixed seed (the "ci" profile in conftest.py)."""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
import pytest
import requests
from circuits import bell
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager

from aioruntime import protocol as p
from emulator.backends import device_target
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


# -- job bodies ------------------------------------------------------------------------------


@functools.cache
def circuits() -> list[QuantumCircuit]:
    """ISA circuits of ibm_manila (5 qubits), one with a parameter "t", and ones it refuses."""
    isa = functools.partial(
        generate_preset_pass_manager(optimization_level=1, target=device_target("manila")).run
    )
    rotated = QuantumCircuit(2)
    rotated.rx(Parameter("t"), 0)
    rotated.cx(0, 1)
    rotated.measure_all()
    unmeasured = QuantumCircuit(1)
    unmeasured.x(0)
    non_isa = bell()  # 'h' is not a manila instruction
    wide = QuantumCircuit(7)
    wide.measure_all()
    return [isa(bell()), isa(rotated), isa(unmeasured), non_isa, wide]


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
any_float = st.floats(width=64) | st.sampled_from([1e308, -1e308, 5e-324, 0.0, 1e-200])
numbers = st.integers(-(2**70), 2**70) | any_float | st.booleans()
ndarrays = hnp.arrays(
    dtype=hnp.floating_dtypes(sizes=64)
    | hnp.integer_dtypes(sizes=64)
    | hnp.boolean_dtypes()
    | hnp.complex_number_dtypes(sizes=128),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3),
)
weird_values = (
    st.none()
    | ndarrays
    | st.lists(numbers, max_size=3)
    | st.lists(st.lists(any_float, max_size=2), max_size=2)
    | st.dictionaries(st.sampled_from(["t", "x", "(t,)"]), ndarrays | st.lists(numbers, max_size=3))
    | json_values
)
weird_shots = (
    st.sampled_from([0, -1, 100_001, 10**9, 2**63])
    | st.integers(1, 2_000).map(np.int64)
    | numbers
    | json_values
)
labels = st.text(alphabet="IXYZ", min_size=5, max_size=5)  # ibm_manila has 5 qubits
weird_observables = (
    st.text(alphabet="IXYZQ", max_size=7)
    | st.dictionaries(labels, any_float | st.complex_numbers(max_magnitude=1e3), max_size=3)
    | st.lists(labels | st.dictionaries(labels, finite, max_size=2), max_size=3)
    | st.just(SparsePauliOp(["ZZIII", "XXIII"], [0.5, 0.5]))
    | json_values
)
weird_precision = st.none() | any_float | json_values


@st.composite
def pub(draw: st.DrawFn, program: str) -> Any:
    """A PUB whose parts are each mostly well-formed (so that the deeper checks, and Aer, are
    reached) and sometimes anything at all; of every length, now and then not a list."""

    def part(good: st.SearchStrategy[Any], weird: st.SearchStrategy[Any]) -> Any:
        return draw(weird if draw(st.integers(0, 3)) == 0 else good)

    if draw(st.integers(0, 19)) == 0:
        return draw(json_values)
    qc = circuits()[draw(st.integers(0, 4))]
    k = qc.num_parameters
    good_values = hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=0, max_dims=2, max_side=3).map(lambda shape: (*shape, k)),
        elements=st.floats(-10, 10),
    )
    items = [part(st.just(qc), json_values)]
    if program == "estimator":
        items.append(part(labels | st.dictionaries(labels, finite, min_size=1), weird_observables))
        items.append(part(good_values, weird_values))
        items.append(part(st.none() | st.floats(0.02, 1.0), weird_precision))
    else:
        items.append(part(good_values, weird_values))
        items.append(part(st.none() | st.integers(1, 2_000), weird_shots))
    return items[: draw(st.sampled_from([len(items)] * 4 + list(range(len(items)))))]


option_values = json_values | ndarrays | numbers
options = (
    st.fixed_dictionaries(
        {},
        optional={
            "default_shots": st.integers(1, 2_000) | weird_shots,
            "default_precision": st.floats(0.02, 1.0) | weird_precision,
            "simulator": st.fixed_dictionaries(
                {},
                optional={
                    "seed_simulator": numbers | json_values,
                    "noise_model": option_values,
                    "coupling_map": option_values,
                    "basis_gates": option_values,
                },
            )
            | option_values,
            "execution": st.fixed_dictionaries(
                {},
                optional={
                    "rep_delay": any_float | option_values,
                    "meas_type": st.sampled_from(["classified", "kerneled"]) | option_values,
                    "init_qubits": option_values,
                },
            )
            | option_values,
            "twirling": option_values,
            "dynamical_decoupling": option_values,
            "resilience": option_values,
            "experimental": option_values,
        },
    )
    | option_values
)


@st.composite
def job_params(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    program = draw(st.sampled_from(["sampler", "estimator"]))
    params: dict[str, Any] = {"pubs": draw(st.lists(pub(program), min_size=1, max_size=2))}
    for key, values in (
        ("options", options),
        ("version", st.just(2) | json_values),
        ("support_qiskit", st.booleans() | json_values),
        ("resilience_level", st.integers(-1, 3) | option_values),
    ):
        if draw(st.booleans()):
            params[key] = draw(values)
    return program, params


FORBIDDEN_REASONS = {p.ErrorCode.INTERNAL, p.ErrorCode.EMULATOR_FAULT}


@settings(
    max_examples=300,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(job=job_params())
def test_job_bodies_never_fail_as_the_emulators_fault(
    emulator: EmulatorThread, auth: dict[str, str], job: tuple[str, dict[str, Any]]
) -> None:
    program, params = job
    body = {"program_id": program, "backend": "ibm_manila", "params": params}
    resp = requests.post(
        emulator.runtime_url + p.JOBS,
        data=p.dumps(body),
        headers={**auth, "Content-Type": "application/json"},
        timeout=60,
    )
    assert resp.status_code < 500, resp.text[:300]
    if resp.status_code != 200:
        event(f"refused {resp.status_code}")
        assert resp.json()["errors"][0]["message"]
        return
    job_id = resp.json()["id"]
    emulator.wait_final(job_id)
    rec = emulator.call(lambda: emulator.store.job(job_id))
    assert rec is not None
    event(f"{program} {rec.state} {rec.reason_code or ''}".strip())
    assert rec.reason_code not in FORBIDDEN_REASONS, (rec.reason, p.dumps(body)[:500])
    if rec.state == p.JobState.FAILED:
        assert rec.reason


def test_healthy_after_fuzzing(emulator: EmulatorThread) -> None:
    assert requests.get(emulator.base_url + p.HEALTH, timeout=5).json()["status"] == "ok"
    stats = emulator.statistics().backend("ibm_manila")
    assert stats.lanes.busy >= 0 and stats.qpu_peak <= 1
