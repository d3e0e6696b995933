"""IBM's queue, seen through the unmodified official client (timing-and-scheduling §4, revised).

A lane is a slot for a job in progress: at most ``--lanes`` jobs per backend are ``Running``
(also while they wait for the QPU), the rest are ``Queued`` with a position and an estimated
start, ``pending_jobs`` counts them, ``least_busy()`` avoids the loaded backend, and fair share
puts the instance with the least recent QPU use first. The manual clock and the admin pause
hold jobs where a test wants them; nothing sleeps.
"""

from __future__ import annotations

from typing import Any

import pytest
from circuits import bell
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import SamplerV2
from qiskit_ibm_runtime.exceptions import RuntimeJobNotFound

from aioruntime.protocol import DEFAULT_INSTANCE
from emulator.config import ApiKey
from emulator.testing import EmulatorThread

BACKEND = "ibm_manila"
OTHER = "crn:v1:bluemix:public:quantum-computing:us-east:a/other::"


class Rig:
    def __init__(self, emu: EmulatorThread, **service: Any) -> None:
        self.emu = emu
        self.service = emu.official_service(**service)
        self.backend = self.service.backend(BACKEND)
        self.isa = generate_preset_pass_manager(
            optimization_level=1, target=self.backend.target, seed_transpiler=3
        ).run(bell())

    def run(self, shots: int = 20) -> Any:
        return SamplerV2(mode=self.backend).run([self.isa], shots=shots)

    def pause(self, *, lanes: bool = True, qpu: bool = True) -> None:
        self.emu.call(lambda: self.emu.scheduler.pause(BACKEND, lanes=lanes, qpu=qpu))

    def resume(self) -> None:
        self.emu.call(lambda: self.emu.scheduler.resume(BACKEND))


@pytest.fixture
def rig(make_emulator: Any) -> Rig:
    return Rig(make_emulator(clock="manual"))


def test_twenty_jobs_five_running_the_rest_queued_in_order(rig: Rig) -> None:
    rig.pause(lanes=False, qpu=True)  # jobs take lanes, then wait for the QPU
    jobs = [rig.run() for _ in range(20)]
    rig.emu.until(lambda s: s.statistics().backend(BACKEND).running == 5)
    statuses = [job.status() for job in jobs]
    assert statuses == ["RUNNING"] * 5 + ["QUEUED"] * 15
    positions = [job.metrics()["position_in_queue"] for job in jobs[5:]]
    assert positions == list(range(1, 16))
    assert all(job.metrics()["estimated_start_time"] for job in jobs[5:])
    assert rig.backend.status().pending_jobs == 20
    listed = {d["name"]: d["queue_length"] for d in rig.service._get_api_client().list_backends()}
    assert listed[BACKEND] == 20
    # the model's estimate is there as soon as the job is accepted, not only once it ran
    assert jobs[-1].usage_estimation["quantum_seconds"] > 2.0
    rig.resume()
    assert {job.status() for job in jobs if job.result()} == {"DONE"}
    assert rig.emu.statistics().backend(BACKEND).lanes.peak_busy == 5
    assert rig.backend.status().pending_jobs == 0


def test_cancel_delete_and_retrieve_a_queued_job(rig: Rig) -> None:
    rig.pause()
    keep, cancel, delete = rig.run(), rig.run(), rig.run()
    assert cancel.status() == "QUEUED"
    cancel.cancel()
    assert rig.emu.wait_final(cancel.job_id()) == "Cancelled"
    rig.service.delete_job(delete.job_id())
    with pytest.raises(RuntimeJobNotFound):
        rig.service.job(delete.job_id())
    again = rig.service.job(keep.job_id())
    assert again.status() == "QUEUED" and again.backend().name == BACKEND
    rig.resume()
    assert again.result()[0].data.meas.num_shots == 20
    assert rig.emu.statistics().backend(BACKEND).pending == 0


def test_least_busy_avoids_the_loaded_backend(rig: Rig) -> None:
    rig.pause()
    jobs = [rig.run() for _ in range(3)]
    chosen = rig.service.least_busy(operational=True, simulator=False)
    assert chosen.name != BACKEND
    assert rig.backend.status().pending_jobs == 3
    rig.resume()
    for job in jobs:
        job.result()


def test_fair_share_between_two_instances(make_emulator: Any) -> None:
    emu = make_emulator(
        clock="manual",
        lanes=1,
        instances=(DEFAULT_INSTANCE, OTHER),
        api_keys=(ApiKey("busy", (DEFAULT_INSTANCE,)), ApiKey("quiet", (OTHER,))),
    )
    busy = Rig(emu, token="busy", instance=DEFAULT_INSTANCE)
    quiet = Rig(emu, token="quiet", instance=OTHER)
    busy.run().result()  # the busy instance has used the QPU recently
    busy.pause()
    queued = [busy.run() for _ in range(3)]
    late = quiet.run()
    assert late.metrics()["position_in_queue"] == 1  # ahead of the busy instance's backlog
    busy.resume()
    starts = {
        job.job_id(): job.result().metadata["execution"]["execution_spans"][0].start
        for job in [*queued, late]
    }
    assert starts[late.job_id()] < min(starts[job.job_id()] for job in queued)
