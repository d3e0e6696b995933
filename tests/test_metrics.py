"""``GET /metrics``: scraped over loopback and parsed with ``prometheus_client.parser``."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from conftest import emulator_config
from dashboard_helpers import BACKEND, open_session, submit
from prometheus_client.parser import text_string_to_metric_families

from aioruntime.protocol import DEFAULT_INSTANCE
from emulator.api.keys import METRICS
from emulator.app import create_app
from emulator.testing import EmulatorThread

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorThread]:
    with EmulatorThread(emulator_config(clock="manual", backends=BACKEND)) as emu:
        yield emu


def scrape(emu: EmulatorThread) -> tuple[str, Samples]:
    with urllib.request.urlopen(emu.base_url + "/metrics", timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_finished_job_is_counted_with_its_stages_and_quantum_seconds(
    emu: EmulatorThread,
) -> None:
    _, before = scrape(emu)
    job = submit(emu)
    assert emu.wait_final(job.id) == "Completed"
    rec = emu.store.job(job.id)
    assert rec is not None and rec.usage_seconds
    text, after = scrape(emu)
    done = {"backend": BACKEND, "program": "sampler", "state": "Completed"}
    assert (
        value(after, "aioruntime_jobs_total", **done)
        == value(before, "aioruntime_jobs_total", **done) + 1
    )
    for stage in ("pre", "qpu_wait", "qpu", "post"):
        labels = {"backend": BACKEND, "stage": stage}
        count = "aioruntime_job_stage_seconds_count"
        assert value(after, count, **labels) == value(before, count, **labels) + 1
    quantum = "aioruntime_quantum_seconds_total"
    assert value(after, quantum, backend=BACKEND) == pytest.approx(
        value(before, quantum, backend=BACKEND) + rec.usage_seconds
    )
    # no job id and no instance CRN, in labels or anywhere else
    assert job.id not in text
    assert DEFAULT_INSTANCE not in text and "crn:" not in text


def test_gauges_read_the_scheduler_at_scrape_time(emu: EmulatorThread) -> None:
    emu.call(lambda: emu.scheduler.pause(BACKEND))
    jobs = [submit(emu), submit(emu)]
    _, queued = scrape(emu)
    assert value(queued, "aioruntime_jobs_queued", backend=BACKEND) == 2
    assert value(queued, "aioruntime_lanes_busy", backend=BACKEND) == 0
    assert value(queued, "aioruntime_lanes_capacity", backend=BACKEND) == 5
    assert value(queued, "aioruntime_backend_paused", backend=BACKEND) == 1

    # lanes open, the QPU still held: both pre-process, then wait for their turn
    def lanes_only() -> None:  # at once, on the emulator's loop: no job slips through the QPU
        emu.scheduler.resume(BACKEND)
        emu.scheduler.pause(BACKEND, lanes=False, qpu=True)

    emu.call(lanes_only)
    emu.until(lambda s: s.statistics().backend(BACKEND).qpu_ready == 2)
    _, waiting = scrape(emu)
    assert value(waiting, "aioruntime_jobs_queued", backend=BACKEND) == 0
    assert value(waiting, "aioruntime_jobs_running", backend=BACKEND) == 2
    assert value(waiting, "aioruntime_lanes_busy", backend=BACKEND) == 2
    assert value(waiting, "aioruntime_qpu_waiting", backend=BACKEND) == 2
    assert value(waiting, "aioruntime_qpu_busy", backend=BACKEND) == 0
    emu.call(lambda: emu.scheduler.resume(BACKEND))
    for job in jobs:
        assert emu.wait_final(job.id) == "Completed"
    _, idle = scrape(emu)
    assert value(idle, "aioruntime_lanes_busy", backend=BACKEND) == 0
    assert value(idle, "aioruntime_backend_paused", backend=BACKEND) == 0


def test_sessions_by_mode_and_state(emu: EmulatorThread) -> None:
    _, before = scrape(emu)
    open_session(emu, "dedicated")
    open_session(emu, "batch")
    _, after = scrape(emu)
    for mode in ("dedicated", "batch"):
        labels = {"backend": BACKEND, "mode": mode, "state": "open"}
        assert value(after, "aioruntime_sessions", **labels) == (
            value(before, "aioruntime_sessions", **labels) + 1
        )


def test_http_requests_are_counted_by_route_template(emu: EmulatorThread) -> None:
    for path in ("/api/v1/jobs/d0123456789", "/no/such/route", "/health"):
        try:
            urllib.request.urlopen(emu.base_url + path, timeout=30).close()
        except urllib.error.HTTPError:
            pass
    text, samples = scrape(emu)
    counter = "aioruntime_http_requests_total"
    assert value(samples, counter, route="/api/v1/jobs/{job_id}", method="GET", status="401") >= 1
    assert value(samples, counter, route="unmatched", method="GET", status="404") >= 1
    assert value(samples, counter, route="/health", method="GET", status="200") >= 1
    assert "d0123456789" not in text and "/no/such/route" not in text


def test_each_app_has_its_own_registry() -> None:
    first, second = create_app(emulator_config()), create_app(emulator_config())
    assert first[METRICS].registry is not second[METRICS].registry
    labels = {"backend": BACKEND, "program": "sampler", "state": "Completed"}
    first[METRICS].jobs.labels(**labels).inc()
    assert first[METRICS].registry.get_sample_value("aioruntime_jobs_total", labels) == 1
    assert second[METRICS].registry.get_sample_value("aioruntime_jobs_total", labels) is None
