"""aioruntime and the official client under load and under injected faults (issue 6)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import psutil
import pytest
import requests
from qiskit import QuantumCircuit
from qiskit.transpiler import generate_preset_pass_manager

from aioruntime import AsyncRuntimeService, AsyncSamplerV2, JobNotFoundError, NotAuthorizedError
from aioruntime import protocol as p
from benchmarks.harness import tree_memory
from emulator.backends import device_target
from emulator.config import ApiKey
from emulator.testing import EmulatorProcess, EmulatorThread

OTHER = "crn:v1:bluemix:public:quantum-computing:us-east:a/tenant-b::"


def isa_bell() -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return generate_preset_pass_manager(optimization_level=1, target=device_target("manila")).run(
        qc
    )


def tree_pss(root: psutil.Process) -> int:
    """The memory of the emulator's process tree in bytes, counted proportionally
    (:func:`benchmarks.harness.tree_memory`)."""
    return int(tree_memory(root.pid)["pss_MiB"] * 2**20)


def wait_warm(emu: EmulatorProcess) -> None:
    """The baseline is taken once the workers are warm (they start in the background)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if requests.get(emu.base_url + "/health", timeout=30).json().get("workers") == "ready":
            return
        time.sleep(0.1)
    raise AssertionError("the emulator's workers did not warm within 120 s")


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorThread]:
    from conftest import emulator_config

    config = emulator_config(
        backends="ibm_manila",
        instances=(p.DEFAULT_INSTANCE, OTHER),
        api_keys=(ApiKey("key-a", (p.DEFAULT_INSTANCE,)), ApiKey("key-b", (OTHER,))),
    )
    with EmulatorThread(config) as server:
        yield server


def admin(emu: EmulatorThread, method: str, body: dict[str, Any] | None = None) -> None:
    requests.request(
        method,
        emu.base_url + "/admin/faults",
        json=body,
        timeout=10,
        headers={"Authorization": f"Bearer {emu.config.admin_key}"},
    ).raise_for_status()


def service_for(emu: Any, key: str = "key-a", instance: str = p.DEFAULT_INSTANCE) -> Any:
    return AsyncRuntimeService(
        url=emu.runtime_url, token=key, instance=instance, iam_url=emu.base_url
    )


async def test_concurrent_submissions_while_official_threads_poll() -> None:
    """The emulator runs as its own process here, as it would for users: the polling threads in
    this process must not share its interpreter lock. (Throughput is the fan-out benchmark's
    business: 1000 jobs there; here 150, more than the client's 64 wait slots, show that nothing
    is lost or duplicated.)"""
    isa = isa_bell()
    with EmulatorProcess("--backends", "ibm_manila", "--ephemeral") as emu:
        await _many_jobs(emu, isa)


JOBS = 150


async def _many_jobs(emu: EmulatorProcess, isa: QuantumCircuit) -> None:
    server = psutil.Process(emu.pid)
    wait_warm(emu)
    pss_before = tree_pss(server)
    official = emu.official_service()
    stop = threading.Event()
    poll_errors: list[BaseException] = []
    polls = [0]

    def poller() -> None:
        try:
            while not stop.is_set():
                for job in official.jobs(limit=5):
                    job.status()
                polls[0] += 1
        except BaseException as exc:  # reported below, not swallowed
            poll_errors.append(exc)

    threads = [threading.Thread(target=poller, daemon=True) for _ in range(10)]
    for t in threads:
        t.start()
    try:
        async with service_for(emu, emu.api_key) as service:
            backend = await service.backend("ibm_manila")
            sampler = AsyncSamplerV2(mode=backend)
            jobs = await asyncio.gather(*(sampler.run([isa], shots=8) for _ in range(JOBS)))
            results = await asyncio.gather(*jobs)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not poll_errors, poll_errors[:3]
    assert polls[0] > 0
    ids = [job.job_id() for job in jobs]
    assert len(set(ids)) == JOBS
    assert all(r[0].data.meas.num_shots == 8 for r in results)
    async with aiohttp.ClientSession() as http:
        async with http.get(
            emu.base_url + "/admin/statistics", headers={"Authorization": f"Bearer {emu.admin_key}"}
        ) as resp:
            stats = await resp.json()
    manila = stats["backends"][0]
    assert manila["completed"] == JOBS and manila["failed"] == 0 and manila["qpu_peak"] == 1
    assert 1 <= manila["lanes"]["peak_busy"] <= 5  # how full the lanes got depends on timing
    listed = official.jobs(limit=None, pending=False)
    assert sorted(j.job_id() for j in listed) == sorted(ids)  # none lost, none duplicated
    # memory stays bounded: the emulator's tree grew by far less than a gigabyte for these jobs
    # (more lane workers may have started meanwhile; each shares the zygote's pages)
    assert tree_pss(server) - pss_before < 1024**3


async def test_retries_never_submit_twice_under_injected_faults(emu: EmulatorThread) -> None:
    isa = isa_bell()
    admin(
        emu,
        "PUT",
        {
            "seed": 3,
            "error_rate": 0.1,
            "error_statuses": [500, 502, 503],
            "error_after_create_rate": 0.25,
        },
    )
    try:
        async with service_for(emu) as service:
            backend = await service.backend("ibm_manila")
            tag = "faults-retry-test"
            sampler = AsyncSamplerV2(mode=backend, options={"environment": {"job_tags": [tag]}})
            jobs = [await sampler.run([isa], shots=8) for _ in range(20)]
            results = await asyncio.gather(*jobs)
    finally:
        admin(emu, "DELETE")
    assert all(r[0].data.meas.num_shots == 8 for r in results)
    async with service_for(emu) as service:
        listed = [job async for job in service.jobs(job_tags=[tag], limit=None)]
    # a 5xx after the job was created did not make a second job
    assert sorted(j.job_id() for j in listed) == sorted(j.job_id() for j in jobs)


async def test_tenants_with_aioruntime(emu: EmulatorThread) -> None:
    async with service_for(emu) as a, service_for(emu, "key-b", OTHER) as b:
        job = await AsyncSamplerV2(mode=await a.backend("ibm_manila")).run([isa_bell()], shots=8)
        await job
        with pytest.raises(JobNotFoundError):
            await b.job(job.job_id())
        assert [j async for j in b.jobs(limit=None)] == []
    async with service_for(emu, "key-b", p.DEFAULT_INSTANCE) as wrong:
        with pytest.raises(NotAuthorizedError):
            await wrong.backends()
