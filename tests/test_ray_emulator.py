"""The emulator on the Ray plane: its flags, a dead node, a restart.

The plane-level guarantees are ``test_worker_planes.py``'s, on both planes; the official
client's job, session and batch tests that also run with ``workers="ray"`` are parametrized in
their own modules. Here: what only Ray has (nodes that die, QPU actors placed by resources,
``GET /admin/statistics`` saying where workers run) and the command line without Ray.
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import plane_funcs
import pytest
import requests
from gates import Gate
from ray_helpers import NODE
from rest import Api, Server, free_port

from aioruntime import protocol as p
from emulator import cli
from emulator.config import from_args
from emulator.rayspec import Resources
from emulator.workers import WorkerDied


def test_workers_ray_without_ray_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "ray" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(click.UsageError, match=r"pip install 'aioruntime\[ray\]'"):
        from_args(["--workers", "ray", "--ephemeral"])
    assert cli.main(["--workers", "ray", "--ephemeral"]) == 2
    assert "pip install 'aioruntime[ray]'" in capsys.readouterr().err
    assert from_args(["--ephemeral"]).workers == "process"  # the default needs no Ray


def test_ray_flags_are_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    monkeypatch.setenv(
        "AIORUNTIME_EMULATOR_RAY_QPU_RESOURCES", "ibm_fez=num_cpus:4,memory:8GiB;big:1"
    )
    config = from_args(["--workers", "ray", "--ephemeral", "--ray-lane-resources", "num_cpus:1"])
    assert config.ray_address == "head:6379"
    assert config.ray_qpu_resources == ("ibm_fez=num_cpus:4,memory:8GiB", "big:1")
    assert Resources.parse("num_cpus:4,memory:8GiB,big:1").options() == {
        "num_cpus": 4.0,
        "memory": 8 * 2**30,
        "resources": {"big": 1.0},
    }
    with pytest.raises(click.UsageError, match=r"--ray-qpu-resources: .*number"):
        from_args(["--workers", "ray", "--ephemeral", "--ray-qpu-resources", "num_cpus:x"])
    with pytest.raises(click.UsageError, match="--ray-lane-resources: memory"):
        from_args(["--workers", "ray", "--ephemeral", "--ray-lane-resources", "memory:8 parsecs"])


async def test_a_dead_node_fails_only_its_calls_and_the_qpu_moves(ray_cluster: Any) -> None:
    """Backend a's QPU actor is pinned to a node (a custom resource), b's is elsewhere; the
    node dies mid-call: a's call fails, b's completes, and a's QPU comes back on the node that
    replaces the dead one, as KubeRay replaces a pod."""
    from emulator.rayplane import RayPlane

    # nodes start and stop on the main thread: Ray ties their processes to the thread that
    # started them, and registers signal handlers (so the loop blocks meanwhile)
    # No CPUs on the doomed node: an actor that needs none (a's QPU) may land there, one that
    # needs Ray's default CPU for placement (b's QPU) may not. (With CPUs on it, SPREAD put b's
    # QPU there too now and then.)
    doomed = ray_cluster.add_node(**NODE, num_cpus=0, resources={"doomed": 1})
    plane = RayPlane(
        backends={"a": "manila", "b": "manila"},
        lanes=1,
        qpu_resources={"a": Resources.parse("doomed:1,num_cpus:0")},
    )
    spare = None
    try:
        async with Gate() as gate:
            calls = {
                b: asyncio.ensure_future(plane.qpu(b, plane_funcs.wait_at_gate, gate.port, b))
                for b in ("a", "b")
            }
            arrivals = {x.tag: x for x in [await gate.next(), await gate.next()]}
            await plane.until(lambda pl: len(_qpu_nodes(pl)) == 2)
            assert _qpu_nodes(plane)["a"] == doomed.node_id != _qpu_nodes(plane)["b"]
            ray_cluster.remove_node(doomed, allow_graceful=False)
            with pytest.raises(WorkerDied, match=r"Ray|actor|node"):
                await calls["a"]
            await arrivals["a"].gone()
            arrivals["b"].release()
            assert await calls["b"] == "b"
        spare = ray_cluster.add_node(**NODE, num_cpus=0, resources={"doomed": 1})
        assert await plane.qpu("a", plane_funcs.add, 1, 1) == 2
        await plane.until(lambda pl: _qpu_nodes(pl).get("a") == spare.node_id)
        assert plane.statistics()["replaced"] >= 1
    finally:
        await plane.aclose()
        if spare is not None:
            ray_cluster.remove_node(spare)


def _qpu_nodes(plane: Any) -> dict[str, str]:
    actors = plane.statistics()["actors"]
    return {a["role"]: a["node_id"] for a in actors if a["role"] != "lane" and "node_id" in a}


def test_the_emulator_keeps_serving_when_a_node_dies(
    ray_cluster: Any, make_emulator: Callable[..., Any]
) -> None:
    """The lanes live on one node; a job stalls in pre-processing there; the node dies: that
    job fails as the emulator's fault, and once a node replaces it, jobs run again."""
    doomed = ray_cluster.add_node(**NODE, num_cpus=0, resources={"lanes": 1})  # no QPU actor
    emu = make_emulator(
        backends="ibm_manila",
        lanes=1,
        workers="ray",
        ray_lane_resources="lanes:0.01,num_cpus:0",
        fast_path=False,  # the job stalls in pre-processing on a lane, not on the QPU actor
    )
    spare = None
    try:
        emu.until(lambda s: s.ready.is_set())  # the lane actor runs on the doomed node
        api = Api(emu.base_url, emu.api_key)
        admin = {"Authorization": f"Bearer {emu.config.admin_key}"}
        faults = emu.base_url + "/admin/faults"
        requests.put(faults, json={"worker_delay_ms": 600_000}, headers=admin, timeout=10)
        stalled = api.submit()
        # Its pre-processing call is on the lane actor, stalled: the call took the fault plan
        # with it. (Waiting only for the lane, the test once cleared the plan before the job
        # read it: the job completed on the doomed node before the node died.)
        plane: Any = emu.scheduler.plane

        async def call_sent() -> None:
            async with asyncio.timeout(60):
                await plane.until(lambda pl: pl.calls_in_flight == 1)

        emu.run(call_sent, timeout=70)
        requests.delete(faults, headers=admin, timeout=10).raise_for_status()
        ray_cluster.remove_node(doomed, allow_graceful=False)
        body = api.wait(stalled)
        assert body["state"]["status"] == "Failed"
        assert body["state"]["reason_code"] == p.ErrorCode.EMULATOR_FAULT
        spare = ray_cluster.add_node(**NODE, num_cpus=0, resources={"lanes": 1})
        assert api.wait(api.submit())["state"]["status"] == "Completed"
        stats = requests.get(emu.base_url + "/admin/statistics", headers=admin, timeout=10)
        workers = stats.json()["workers"]
        assert workers["kind"] == "ray" and workers["replaced"] >= 1
        assert workers["lane_workers"] == 1 and workers["qpu_workers"] == 1
        lane_nodes = {a["node_id"] for a in workers["actors"] if a["role"] == "lane"}
        assert lane_nodes == {spare.node_id}
    finally:
        emu.stop()
        if spare is not None:
            ray_cluster.remove_node(spare)


def test_sigkill_of_a_ray_emulator_requeues_and_a_restart_finishes(
    ray_cluster: Any, tmp_path: Path
) -> None:
    """The store's restart guarantee on the Ray plane: the emulator (a Ray driver joining the
    cluster with --ray-address) is killed with jobs in flight; Ray ends its actors with it, and
    the next start re-queues and finishes every job."""
    port = free_port()
    args: tuple[str, ...] = ("--workers", "ray", "--ray-address", ray_cluster.address)
    args += (
        "--clock",
        "scaled:0.1",
        "--lanes",
        "1",
    )  # one lane and one QPU actor per start: the cheapest emulator
    first = Server(tmp_path, port, *args).start()
    try:
        api = Api(first.base_url, "k1")
        ids = [api.submit() for _ in range(6)]
        assert api.wait(ids[0])["state"]["status"] == "Completed"
    finally:
        assert first.kill(signal.SIGKILL) == -signal.SIGKILL
    second = Server(tmp_path, port, *args).start()
    try:
        api = Api(second.base_url, "k1")
        assert {api.wait(j)["state"]["status"] for j in ids} == {"Completed"}
        assert any("re-queued" in api("GET", f"/jobs/{j}/logs").text for j in ids)
    finally:
        second.kill(signal.SIGTERM)
