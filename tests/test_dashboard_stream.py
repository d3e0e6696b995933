"""The dashboard's event stream and its access rules, over HTTP (the page itself is tested in a
real browser in ``test_dashboard_browser.py``)."""

from __future__ import annotations

import socket
from collections.abc import Generator, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import emulator_config
from dashboard_helpers import BACKEND, bell_params, sse_frames, submit

from aioruntime.protocol import DEFAULT_INSTANCE
from emulator.api.keys import SCHEDULER
from emulator.app import create_app
from emulator.dashboard.web import COOKIE, is_loopback
from emulator.testing import EmulatorThread


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorThread]:
    with EmulatorThread(emulator_config(clock="manual", backends=BACKEND)) as emu:
        yield emu


def until_frame(frames: Generator[dict[str, Any], None, None], predicate: Any) -> dict[str, Any]:
    for frame in frames:
        if predicate(frame["state"]):
            return frame
    raise AssertionError("the stream ended")


def test_frames_carry_the_live_state_and_the_timeline_spans(emu: EmulatorThread) -> None:
    url = emu.base_url + "/dashboard/events"
    frames = sse_frames(url)
    first = next(frames)["state"]
    assert [b["name"] for b in first["backends"]] == [BACKEND]
    assert first["backends"][0]["width"] == 5
    job = submit(emu)
    spans: list[list[Any]] = []

    def finished(state: dict[str, Any]) -> bool:
        return any(j["id"] == job.id and j["state"] == "Completed" for j in state["jobs"])

    for frame in frames:
        spans += frame["spans"]
        if finished(frame["state"]):
            break
    frames.close()
    # [seq, backend, row, kind, start, end, job, mode]: both lane stages on its lane row,
    # the wait between them, the QPU span on the QPU row (-1), in time order
    mine = {s[3]: s for s in spans if s[6] == job.id}
    assert set(mine) == {"pre", "wait", "qpu", "post"}
    assert mine["qpu"][2] == -1 and mine["pre"][2] == mine["post"][2] >= 0
    assert mine["pre"][5] <= mine["qpu"][4] <= mine["qpu"][5] <= mine["post"][4]
    assert {s[7] for s in mine.values()} == {"job"}
    # a viewer that reconnects with the last span id gets no span twice
    last = max(s[0] for s in spans)
    again = next(sse_frames(url, {"Last-Event-ID": str(last)}))
    assert all(s[0] > last for s in again["spans"])


def test_a_job_cancelled_in_its_lane_frees_it_and_ends_its_span(emu: EmulatorThread) -> None:
    emu.call(lambda: emu.scheduler.pause(BACKEND, lanes=False, qpu=True))
    job = submit(emu)
    emu.until(lambda s: s.statistics().backend(BACKEND).qpu_ready == 1)
    frames = sse_frames(emu.base_url + "/dashboard/events")
    waiting = until_frame(frames, lambda state: bool(state["backends"][0]["lanes"]))
    (in_lane,) = waiting["state"]["backends"][0]["lanes"]
    assert (in_lane["job"], in_lane["stage"]) == (job.id, "wait")
    emu.run(lambda: emu.scheduler.cancel(job))
    spans: list[list[Any]] = []
    for frame in frames:
        spans += frame["spans"]
        state = frame["state"]
        mine = [j for j in state["jobs"] if j["id"] == job.id]
        if mine and mine[0]["state"] == "Cancelled" and not state["backends"][0]["lanes"]:
            break
    frames.close()
    emu.call(lambda: emu.scheduler.resume(BACKEND))
    # the wait for the QPU ended when the lane was given back; it never reached the QPU
    assert [s[3] for s in spans if s[6] == job.id] == ["wait"]


def test_a_viewer_that_never_reads_does_not_hold_up_the_scheduler(emu: EmulatorThread) -> None:
    with socket.create_connection(("127.0.0.1", emu.port)) as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /dashboard/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        jobs = [submit(emu) for _ in range(40)]
        for job in jobs:
            assert emu.wait_final(job.id) == "Completed"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.5", False),
        ("emulator.example", False),
    ],
)
def test_which_binds_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


async def test_beyond_loopback_the_dashboard_needs_the_admin_key() -> None:
    # The app believes it listens on every interface; the test server binds loopback only.
    config = emulator_config(host="0.0.0.0", backends=BACKEND, admin_key="the-admin-key")
    app = create_app(config)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        job = await app[SCHEDULER].submit(
            instance=DEFAULT_INSTANCE,
            backend=BACKEND,
            program_id="sampler",
            params_json=bell_params(),
        )
        page = await client.get("/")
        assert page.status == 401
        body = await page.text()
        assert "admin key" in body and job.id not in body
        stream = await client.get("/dashboard/events")
        assert stream.status == 401
        assert job.id not in await stream.text()
        wrong = await client.get("/", params={"key": "guess"}, allow_redirects=False)
        assert wrong.status == 401 and COOKIE not in wrong.cookies
        # metrics stay open, and name no job
        metrics = await client.get("/metrics")
        assert metrics.status == 200 and job.id not in await metrics.text()

        login = await client.get("/", params={"key": "the-admin-key"}, allow_redirects=False)
        assert login.status == 303 and login.headers["Location"] == "/"
        cookie = login.cookies[COOKIE]
        assert cookie.value and "the-admin-key" not in cookie.value
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        client.session.cookie_jar.clear()
        headers = {"Cookie": f"{COOKIE}={cookie.value}"}
        assert (await client.get("/", headers=headers)).status == 200
        for auth in (headers, {"Authorization": "Bearer the-admin-key"}):
            async with client.get("/dashboard/events", headers=auth) as events:
                assert events.status == 200
                async for line in events.content:
                    if line.startswith(b"data: "):
                        assert job.id.encode() in line
                        break
