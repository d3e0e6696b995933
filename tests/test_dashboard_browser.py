"""The dashboard as a person sees it: headless Chromium (Debian's), driven with Playwright.

The emulator runs with the manual clock, and the tests hold its lanes or its QPU with the
admin pause (the gates a person would not see) so that a job stays where the test looks for it;
every wait is Playwright's auto-waiting on page text, never a sleep.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import emulator_config
from dashboard_helpers import (
    BACKEND,
    CHROMIUM_FLAGS,
    find_chromium,
    open_session,
    submit,
    submit_many,
)
from playwright.sync_api import Browser, Page, expect, sync_playwright

from emulator.dashboard.model import JOBS_SHOWN
from emulator.testing import EmulatorThread

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium found (/usr/bin/chromium or on PATH): `apt-get install -y chromium`, "
    "which `make test` does when run as root",
)

expect.set_options(timeout=60_000)  # a busy 2-core machine; the waits end on page text


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorThread]:
    with EmulatorThread(emulator_config(clock="manual", backends=BACKEND)) as emu:
        yield emu


@pytest.fixture
def page(browser: Browser, emu: EmulatorThread) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors: list[Any] = []
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(emu.base_url + "/")
    expect(page.locator("#connection")).to_have_text("live")
    yield page
    page.close()
    assert not errors, f"the page raised: {errors}"


def lane(page: Page, row: int) -> Any:
    return page.get_by_test_id(f"lane-{BACKEND}-{row}")


def test_the_backend_its_lanes_and_its_qpu(page: Page) -> None:
    card = page.get_by_test_id(f"backend-{BACKEND}")
    expect(card.locator("h2")).to_have_text(BACKEND)
    expect(page.get_by_test_id(f"qpu-{BACKEND}")).to_have_text("QPUidle")
    for row in range(5):
        expect(lane(page, row)).to_have_text(f"lane {row + 1}free")
    expect(card).to_contain_text("lanes busy 0 of 5")
    expect(page.locator("#clock")).to_have_text("clock manual")


def test_a_job_appears_queued_and_finishes(page: Page, emu: EmulatorThread) -> None:
    emu.call(lambda: emu.scheduler.pause(BACKEND))
    job = submit(emu)
    row = page.get_by_test_id(f"job-{job.id}")
    expect(row).to_contain_text("Queued")
    expect(row).to_contain_text("job")  # the mode
    expect(page.get_by_test_id(f"queue-{BACKEND}")).to_have_text("1")
    emu.call(lambda: emu.scheduler.resume(BACKEND))
    expect(row).to_contain_text("Completed")
    expect(page.get_by_test_id(f"queue-{BACKEND}")).to_have_text("0")
    expect(row.locator("td").last).to_have_text(re.compile(r"^\d+\.\d+ s$"))


def test_a_job_in_its_lane_waits_for_the_qpu(page: Page, emu: EmulatorThread) -> None:
    emu.call(lambda: emu.scheduler.pause(BACKEND, lanes=False, qpu=True))
    job = submit(emu)
    expect(lane(page, 0)).to_contain_text(job.id)
    expect(lane(page, 0)).to_contain_text("waiting for the QPU")
    expect(page.get_by_test_id(f"job-{job.id}")).to_contain_text("Running")
    expect(page.get_by_test_id(f"qpu-{BACKEND}")).to_have_text("QPUidle")
    emu.call(lambda: emu.scheduler.resume(BACKEND))
    expect(page.get_by_test_id(f"job-{job.id}")).to_contain_text("Completed")
    expect(lane(page, 0)).to_have_text("lane 1free")
    # its spans are on the timeline: it was drawn from the real stage times
    frames = page.evaluate("document.documentElement.dataset.frames")
    assert int(frames) >= 1


def test_a_session_holds_the_qpu_then_goes_inactive(page: Page, emu: EmulatorThread) -> None:
    session = open_session(emu)
    row = page.get_by_test_id(f"session-{session.id}")
    expect(row).to_contain_text("open")
    expect(row).to_contain_text("session")
    job = submit(emu, session)
    expect(page.get_by_test_id(f"job-{job.id}")).to_contain_text("Completed")
    # its last job ended: the session keeps the QPU for its interactive TTL
    expect(row.locator("td.state")).to_have_text("active")
    expect(row).to_contain_text("owns the QPU")
    expect(row).to_contain_text("60.0 s of 60.0 s")  # the manual clock has not moved
    expect(page.get_by_test_id(f"qpu-{BACKEND}")).to_contain_text(
        f"reserved for session {session.id}"
    )
    emu.advance(61)
    expect(row.locator("td.state")).to_have_text("inactive")
    expect(page.get_by_test_id(f"qpu-{BACKEND}")).to_have_text("QPUidle")
    emu.run(lambda: emu.scheduler.close_session(session))
    expect(row.locator("td.state")).to_have_text("closed")


def test_a_thousand_jobs_in_flight(page: Page, emu: EmulatorThread) -> None:
    emu.call(lambda: emu.scheduler.pause(BACKEND))
    before = int(page.evaluate("document.documentElement.dataset.frames"))
    jobs = submit_many(emu, 1000)
    expect(page.get_by_test_id(f"queue-{BACKEND}")).to_have_text("1000")
    expect(page.locator("#jobs tbody tr")).to_have_count(JOBS_SHOWN)
    expect(page.get_by_test_id(f"job-{jobs[-1].id}")).to_contain_text("Queued")
    frames = int(page.evaluate("document.documentElement.dataset.frames")) - before
    # A thousand submissions are a thousand events; the page got a few coalesced frames.
    # (Failing this would take over a minute of submitting at the stream's frame rate.)
    assert frames < 1000 / 2
    # the page still answers, and the timeline window changes
    page.select_option("#window", "10")
    expect(page.locator("#window")).to_have_value("10")
