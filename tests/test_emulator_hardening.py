"""What a hostile tenant or an unlucky operator sends: every answer is a 4xx with IBM's error
body (or a job that fails with a validation reason), never a 500 or an "internal error"."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from aioruntime import protocol as p
from emulator.testing import EmulatorThread


def token_headers(emu: Any) -> dict[str, str]:
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


def parametrized_isa() -> Any:
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter
    from qiskit.transpiler import generate_preset_pass_manager

    from emulator.backends import device_target

    qc = QuantumCircuit(2)
    qc.rx(Parameter("t"), 0)
    qc.cx(0, 1)
    qc.measure_all()
    return generate_preset_pass_manager(optimization_level=1, target=device_target("manila")).run(
        qc
    )


def submit_and_wait(emu: EmulatorThread, params: dict[str, Any], program: str) -> dict[str, Any]:
    headers = {**token_headers(emu), "Content-Type": "application/json"}
    body = {"program_id": program, "backend": "ibm_manila", "params": {"version": 2, **params}}
    resp = requests.post(emu.runtime_url + p.JOBS, data=p.dumps(body), headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["id"]
    emu.wait_final(job_id)
    state: dict[str, Any] = requests.get(
        f"{emu.runtime_url}/jobs/{job_id}", headers=headers, timeout=30
    ).json()["state"]
    return state


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("program", "params", "words"),
    [
        ("sampler", {"pubs": [["ISA", "NP:nan", 10]]}, "pubs[0]: parameter_values must be finite"),
        ("sampler", {"pubs": [["ISA", [INF], 10]]}, "pubs[0]: parameter_values must be finite"),
        ("sampler", {"pubs": [["ISA", {"t": [NAN]}, 10]]}, "pubs[0]: parameter_values"),
        ("sampler", {"pubs": [["ISA", [0.1], 10]], "options": "NP:empty"}, "params.options"),
        (
            "sampler",
            {"pubs": [["ISA", [0.1], 10]], "options": {"simulator": {"seed_simulator": 2**80}}},
            "seed_simulator",
        ),
        ("estimator", {"pubs": [["ISA", {"ZZIII": 1.0}, [0.1], 1e-200]]}, "pubs[0]: precision"),
        ("estimator", {"pubs": [["ISA", {"ZZIII": 1.0}, [0.1], 0.0]]}, "pubs[0]: precision"),
    ],
)
def test_bad_job_input_fails_as_validation_naming_the_field(
    emulator: EmulatorThread, program: str, params: dict[str, Any], words: str
) -> None:
    import numpy as np

    placeholders = {"ISA": parametrized_isa(), "NP:nan": np.array([NAN]), "NP:empty": np.empty(0)}

    def fill(node: Any) -> Any:
        if isinstance(node, str) and node in placeholders:
            return placeholders[node]
        if isinstance(node, list):
            return [fill(x) for x in node]
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        return node

    state = submit_and_wait(emulator, fill(params), program)
    assert state["status"] == "Failed"
    assert state["reason_code"] == p.ErrorCode.VALIDATION, state
    assert words.lower() in state["reason"].lower()


def test_a_precision_too_coarse_to_matter_runs_one_shot(emulator: EmulatorThread) -> None:
    # IBM's rule is max(1, ceil(1/precision²)) shots and its schema has no maximum precision
    params = {"pubs": [["ISA", {"ZZIII": 1.0}, [0.1], 1e308]]}
    params["pubs"][0][0] = parametrized_isa()
    assert submit_and_wait(emulator, params, "estimator")["status"] == "Completed"


def zlib_bomb(mib: int) -> dict[str, str]:
    """An ``ndarray`` value as RuntimeEncoder writes one, inflating to ``mib`` MiB of zeros
    (a few hundred KB of JSON), built without ever holding the inflated bytes."""
    import base64
    import zlib

    deflate, zeros = zlib.compressobj(9), bytes(1 << 20)
    data = b"".join(deflate.compress(zeros) for _ in range(mib)) + deflate.flush()
    return {"__type__": "ndarray", "__value__": base64.standard_b64encode(data).decode()}


def test_decode_limits_bound_inflation_and_depth() -> None:
    import json

    import numpy as np

    limits = p.DecodeLimits(max_inflated_bytes=2**20, max_depth=8)
    text = json.dumps({"pubs": [["qc", zlib_bomb(2), 10]]})
    with pytest.raises(p.DecodeLimitError, match=r"ndarray value at pubs\[0\]\[1\] inflates past"):
        p.loads(text, limits=limits)
    with pytest.raises(ValueError) as unlimited:  # inflated whole, then found not to be .npy
        p.loads(text)
    assert not isinstance(unlimited.value, p.DecodeLimitError)
    fine = p.dumps({"values": np.arange(1000.0), "nested": [[[1]]]})
    assert p.loads(fine, limits=limits)["values"].sum() == 499500.0
    for deep in ("[" * 9 + "]" * 9, "[" * 5000 + "]" * 5000):
        with pytest.raises(p.DecodeLimitError, match="nests more than 8 deep"):
            p.loads(deep, limits=limits)


def test_a_compressed_bomb_fails_the_job_before_it_inflates(emulator: EmulatorThread) -> None:
    params = {"pubs": [[parametrized_isa(), zlib_bomb(300), 10]]}
    state = submit_and_wait(emulator, params, "sampler")
    assert state["status"] == "Failed" and state["reason_code"] == p.ErrorCode.VALIDATION
    assert "pubs[0][1] inflates past the limit" in state["reason"]


def test_a_runaway_job_fails_naming_the_memory_limit(make_emulator: Any) -> None:
    from qiskit import QuantumCircuit
    from qiskit.transpiler import generate_preset_pass_manager

    from emulator.backends import device_target

    emu = make_emulator(backends="ibm_fez", worker_memory_mb=64)
    dense = QuantumCircuit(23)  # a 2**23-amplitude statevector: 128 MiB, twice the budget
    for q in range(23):
        dense.h(q)
        dense.rz(0.1 * (q + 1), q)  # not Clifford: Aer has to hold the statevector
    dense.measure_all()  # (no two-qubit gate: no routing, so exactly 23 qubits are simulated)
    pm = generate_preset_pass_manager(optimization_level=1, target=device_target("fez"))
    body = {"program_id": "sampler", "backend": "ibm_fez", "version": 2}
    headers = {**token_headers(emu), "Content-Type": "application/json"}

    def run(circuit: Any) -> dict[str, Any]:
        params = {"pubs": [[pm.run(circuit), None, 10]], "version": 2}
        resp = requests.post(
            emu.runtime_url + p.JOBS,
            data=p.dumps({**body, "params": params}),
            headers=headers,
            timeout=60,
        )
        job_id = resp.json()["id"]
        emu.wait_final(job_id)
        state: dict[str, Any] = requests.get(
            f"{emu.runtime_url}/jobs/{job_id}", headers=headers, timeout=30
        ).json()["state"]
        return state

    state = run(dense)
    assert state["status"] == "Failed", state
    assert state["reason_code"] == p.ErrorCode.EXECUTION_FAILED
    assert "64 MiB" in state["reason"] and "--worker-memory-mb" in state["reason"]
    from circuits import bell

    assert run(bell())["status"] == "Completed"  # and the emulator carries on


def test_workers_die_with_a_killed_emulator() -> None:
    import signal
    import time

    import psutil

    from emulator.testing import EmulatorProcess

    with EmulatorProcess("--backends", "ibm_manila", "--ephemeral", "--lanes", "1") as emu:
        admin = {"Authorization": f"Bearer {emu.admin_key}"}
        requests.put(
            emu.base_url + "/admin/faults",
            json={"worker_delay_ms": 600_000},  # the job stalls in its worker for 10 minutes
            headers=admin,
            timeout=10,
        ).raise_for_status()
        headers = {**token_headers(emu), "Content-Type": "application/json"}
        body: dict[str, Any] = {
            "program_id": "sampler",
            "backend": "ibm_manila",
            "params": {"pubs": [[1]]},
        }
        assert requests.post(emu.runtime_url + p.JOBS, json=body, headers=headers, timeout=30).ok
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the job holds its lane (in the worker)
            stats = requests.get(emu.base_url + "/admin/statistics", headers=admin, timeout=10)
            if stats.json()["backends"][0]["lanes"]["busy"] == 1:
                break
        workers = psutil.Process(emu.pid).children(recursive=True)
        assert workers
        assert emu.stop(signal.SIGKILL) == -signal.SIGKILL
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers outlived the emulator: {[w.pid for w in alive]}"


def test_tokens_name_their_key_are_revoked_with_it_and_survive_restarts(tmp_path: Any) -> None:
    import hashlib

    import jwt

    from emulator.auth import AuthError, authenticate, issue_token
    from emulator.config import ApiKey, Config, from_args

    other = "crn:v1:bluemix:public:quantum-computing:us-east:a/tenant-b::"
    both = (p.DEFAULT_INSTANCE, other)
    secret = "s" * 32
    before = Config(api_keys=(ApiKey("k1"), ApiKey("k2")), instances=both, token_secret=secret)
    token1, _, _ = issue_token(before, "k1")
    token2, _, _ = issue_token(before, "k2")
    assert authenticate(before, f"Bearer {token2}").instances == both
    # the operator removes k2 and binds k1 to one instance: k2's token dies at once, k1's follows
    after = Config(api_keys=(ApiKey("k1", (other,)),), instances=both, token_secret=secret)
    with pytest.raises(AuthError):
        authenticate(after, f"Bearer {token2}")
    assert authenticate(after, f"Bearer {token1}").instances == (other,)
    # the subject is keyed by the secret: nothing in the token to test key guesses against
    sub = jwt.decode(token1, options={"verify_signature": False})["sub"]
    assert sub != hashlib.sha256(b"k1").hexdigest()[:16]
    elsewhere = Config(api_keys=(ApiKey("k1"),), instances=both, token_secret="t" * 32)
    assert (
        jwt.decode(issue_token(elsewhere, "k1")[0], options={"verify_signature": False})["sub"]
        != sub
    )
    # the same data directory and keys after a restart: the token still works
    first = from_args(["--data-dir", str(tmp_path), "--api-key", "k1"])
    token, _, _ = issue_token(first, "k1")
    again = from_args(["--data-dir", str(tmp_path), "--api-key", "k1"])
    assert authenticate(again, f"Bearer {token}").instances == (p.DEFAULT_INSTANCE,)


def test_a_token_checked_once_still_expires_and_a_forged_one_never_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Authentication verifies a token's signature once and keeps its claims
    (``emulator.auth._verified``); its expiry is still checked on every request, and a token
    whose signature fails is refused every time, not remembered."""
    import time
    import types

    import jwt

    from emulator import auth
    from emulator.auth import AuthError, authenticate, issue_token
    from emulator.config import ApiKey, Config

    config = Config(api_keys=(ApiKey("k1"),), token_secret="s" * 32, token_ttl_s=60)
    token, iat, exp = issue_token(config, "k1")
    assert exp - iat == 60
    for _ in range(2):  # verified, then from the cache
        assert authenticate(config, f"Bearer {token}").instances == config.instances
    later = types.SimpleNamespace(time=lambda: time.time() + 61)  # this module's clock only
    monkeypatch.setattr(auth, "time", later)
    with pytest.raises(AuthError, match="expired"):
        authenticate(config, f"Bearer {token}")
    monkeypatch.undo()
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode(claims, "f" * 32, algorithm="HS256")  # the same claims, another key
    for _ in range(2):
        with pytest.raises(AuthError, match="invalid token"):
            authenticate(config, f"Bearer {forged}")


def test_tags_are_capped_as_ibm_caps_them(emulator: EmulatorThread) -> None:
    headers = {**token_headers(emulator), "Content-Type": "application/json"}
    body: dict[str, Any] = {
        "program_id": "sampler",
        "backend": "ibm_manila",
        "params": {"pubs": [[1]]},
    }
    most = ["t" * 86] * 8  # IBM's Tags schema: at most 8 tags of at most 86 characters
    for tags, words in ((["t"] * 9, "at most 8 tags"), (["t" * 87], "at most 86 characters")):
        resp = requests.post(
            emulator.runtime_url + p.JOBS, json={**body, "tags": tags}, headers=headers, timeout=30
        )
        assert_ibm_error(resp, 400, words)
    resp = requests.post(
        emulator.runtime_url + p.JOBS, json={**body, "tags": most}, headers=headers, timeout=30
    )
    assert resp.status_code == 200, resp.text
    tags_url = f"{emulator.runtime_url}/jobs/{resp.json()['id']}/tags"
    for tags, words in ((["t"] * 9, "at most 8 tags"), (["t" * 87], "at most 86 characters")):
        resp = requests.put(tags_url, json={"tags": tags}, headers=headers, timeout=30)
        assert_ibm_error(resp, 400, words)
    assert requests.put(tags_url, json={"tags": most[:2]}, headers=headers, timeout=30).ok


def test_long_job_pages_are_encoded_off_the_event_loop(
    emulator: EmulatorThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from emulator.api import runtime
    from emulator.store import JobRecord

    async def add_jobs() -> None:
        for _ in range(runtime._THREADED_PAGE + 1):
            store = emulator.store
            rec = JobRecord(
                id=f"d{store.next_seq():019d}",
                seq=store.next_seq(),
                instance=emulator.instance,
                backend="ibm_manila",
                program_id="sampler",
                created="2026-01-01T00:00:00+00:00",
                state=p.JobState.COMPLETED,
            )
            await store.add_job(rec, "{}")

    emulator.run(add_jobs)
    threads: list[str] = []
    encode = runtime._encode

    def recording_encode(body: Any) -> str:
        threads.append(threading.current_thread().name)
        return encode(body)

    monkeypatch.setattr(runtime, "_encode", recording_encode)
    headers = token_headers(emulator)
    for limit, threaded in ((5, False), (runtime._THREADED_PAGE + 1, True)):
        resp = requests.get(
            emulator.runtime_url + p.JOBS, params={"limit": limit}, headers=headers, timeout=30
        )
        assert len(resp.json()["jobs"]) == limit
        assert (threads.pop() != "emulator-loop") is threaded


class Recorder:
    """A logging handler that keeps records and signals each (to wait on, not sleep)."""

    def __init__(self, *names: str) -> None:
        import logging
        import threading

        self.handler = logging.Handler(logging.DEBUG)
        self.handler.emit = self._emit  # type: ignore[method-assign]
        self.records: list[logging.LogRecord] = []
        self.arrived = threading.Event()
        self.loggers = [logging.getLogger(name) for name in names]

    def _emit(self, record: Any) -> None:
        self.records.append(record)
        self.arrived.set()

    def __enter__(self) -> Recorder:
        for logger in self.loggers:
            logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for logger in self.loggers:
            logger.removeHandler(self.handler)


def test_client_faults_are_logged_at_debug_not_as_errors(
    emulator: EmulatorThread, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import socket
    import struct

    for name in ("emulator.app", "aiohttp.server"):
        caplog.set_level(logging.DEBUG, logger=name)
    auth = token_headers(emulator)
    head = (
        "POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: {auth['Authorization']}\r\n"
        f"{p.HEADER_SERVICE_CRN}: {emulator.instance}\r\nContent-Length: 100000\r\n\r\n"
    )
    with Recorder("emulator.app", "aiohttp.server") as seen:
        # a client that sends half a body and resets the connection
        with socket.create_connection(("127.0.0.1", emulator.port), timeout=10) as conn:
            conn.sendall(head.encode() + b"{" * 100)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert seen.arrived.wait(30)
        # a request line longer than aiohttp accepts (8190 bytes): answered 400
        with socket.create_connection(("127.0.0.1", emulator.port), timeout=10) as conn:
            conn.sendall(b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b" 400 " in conn.recv(100)
    assert [r.levelname for r in seen.records if r.name == "emulator.app"] == ["DEBUG"]
    line_records = [r for r in seen.records if r.name == "aiohttp.server"]
    assert line_records and all(r.levelno == logging.DEBUG for r in line_records)
