"""Request parsing (:mod:`emulator.api.requests`) on its own: what each Runtime API request
becomes, and the refusals, without a server."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from unittest import mock

import pytest
from aiohttp import streams, web
from aiohttp.test_utils import make_mocked_request

from aioruntime import protocol as p
from aioruntime.protocol import ErrorCode
from emulator.api import requests
from emulator.errors import Refused
from emulator.store import JobRecord
from emulator.validation import JobInputError

BACKENDS = ("ibm_manila",)

#: Schema versions as a worker would give them (``Scheduler.schema_versions``).
KNOWN = {"executor": ("v0.1", "v2.0"), "noise-learner": ("v0.3",)}


async def known_versions() -> dict[str, tuple[str, ...]]:
    return KNOWN


async def never_asked() -> dict[str, tuple[str, ...]]:
    raise AssertionError("a legacy program's submission asked for the schema versions")


def make_request(method: str, path: str, body: Any = None) -> web.Request:
    payload = streams.StreamReader(
        mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop()
    )
    if body is not None:
        payload.feed_data(body if isinstance(body, bytes) else json.dumps(body).encode())
    payload.feed_eof()
    return make_mocked_request(method, path, payload=payload)


def refusal(excinfo: pytest.ExceptionInfo[Refused]) -> tuple[int, int, str]:
    return excinfo.value.status, excinfo.value.code, excinfo.value.message


async def test_job_submission_becomes_one_value() -> None:
    body = {
        "program_id": "sampler",
        "backend": "ibm_manila",
        "params": {"pubs": [1], "version": 2},
        "tags": ["a", "b"],
        "cost": 300,
        "log_level": "INFO",
    }
    job = await requests.job_submission(make_request("POST", "/jobs", body), BACKENDS, never_asked)
    assert (job.program_id, job.backend, job.tags, job.cost) == (
        "sampler",
        "ibm_manila",
        ["a", "b"],
        300.0,
    )
    assert json.loads(job.params_json) == body["params"]
    assert (job.private, job.runtime, job.session_id, job.log_level) == (False, "", None, "INFO")


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not valid json"),
        ([1], 400, "json object"),
        ({"program_id": "qaoa", "backend": "ibm_manila", "params": {"pubs": [1]}}, 404, "qaoa"),
        ({"program_id": "sampler", "backend": "x", "params": {"pubs": [1]}}, 400, "backend x"),
        ({"program_id": "sampler", "backend": "ibm_manila", "params": {"pubs": {}}}, 400, "pubs"),
        ({"program_id": True, "backend": "ibm_manila", "params": {"pubs": [1]}}, 400, "program_id"),
    ],
)
async def test_job_submission_refusals_name_the_field(body: Any, status: int, words: str) -> None:
    with pytest.raises(Refused) as excinfo:
        await requests.job_submission(make_request("POST", "/jobs", body), BACKENDS, known_versions)
    got_status, _, message = refusal(excinfo)
    assert got_status == status and words in message.lower()


@pytest.mark.parametrize(
    ("program", "version", "words"),
    [
        ("executor", "v9", "executor params schema_version 'v9'; the emulator accepts v0.1, v2.0."),
        ("noise-learner", "v2.0", "schema_version 'v2.0'; the emulator accepts v0.3 ("),
    ],
)
async def test_unknown_schema_versions_are_refused_naming_the_known_ones(
    program: str, version: str, words: str
) -> None:
    body = {"program_id": program, "backend": "ibm_manila", "params": {"schema_version": version}}
    with pytest.raises(JobInputError) as excinfo:  # answered 400 by the error middleware
        await requests.job_submission(make_request("POST", "/jobs", body), BACKENDS, known_versions)
    assert excinfo.value.code == ErrorCode.VALIDATION and words in excinfo.value.message


async def test_versioned_programs_are_checked_against_the_versions_a_worker_gave() -> None:
    body = {
        "program_id": "executor",
        "backend": "ibm_manila",
        "params": {"schema_version": "v0.1", "quantum_program": {"meas_level": "classified"}},
    }
    job = await requests.job_submission(
        make_request("POST", "/jobs", body), BACKENDS, known_versions
    )
    assert json.loads(job.params_json)["schema_version"] == "v0.1"


async def test_job_filter_reads_the_query_and_matches_records() -> None:
    flt = requests.job_filter(
        make_request("GET", "/jobs?limit=5&pending=false&tags=a&sort=ASC&backend=ibm_manila"),
        "crn:a",
    )
    assert (flt.limit, flt.offset, flt.pending, flt.descending) == (5, 0, False, False)
    rec = JobRecord(
        id="j",
        seq=1,
        instance="crn:a",
        backend="ibm_manila",
        program_id="sampler",
        created="2026-01-01T00:00:00+00:00",
        tags=["a", "z"],
        state=p.JobState.COMPLETED,
    )
    assert flt.matches(rec)
    assert not requests.job_filter(make_request("GET", "/jobs"), "crn:b").matches(rec)
    for query in ("limit=x", "limit=5000", "pending=maybe", "created_after=yesterday"):
        with pytest.raises(Refused):
            requests.job_filter(make_request("GET", f"/jobs?{query}"), "crn:a")


async def test_sessions_and_queries() -> None:
    asked = await requests.session_creation(
        make_request("POST", "/sessions", {"backend": "ibm_manila", "mode": "batch"}),
        BACKENDS,
        "crn:a",
    )
    assert (asked.backend, asked.mode, asked.max_ttl) == ("ibm_manila", "batch", None)
    with pytest.raises(Refused):
        await requests.session_creation(
            make_request("POST", "/sessions", {"backend": "ibm_manila", "instance": "crn:b"}),
            BACKENDS,
            "crn:a",
        )
    assert (
        await requests.accepting_jobs(make_request("PATCH", "/s", {"accepting_jobs": False}))
        is False
    )
    assert requests.wait_timeout(make_request("GET", "/w?timeout=500"), 60.0) == 60.0
    with pytest.raises(Refused):
        requests.wait_timeout(make_request("GET", "/w?timeout=nan"), 60.0)
