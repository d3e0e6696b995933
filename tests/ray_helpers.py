"""One Ray cluster for the whole test session, started only if a test asks for it.

``ray_cluster`` is a :class:`ray.cluster_utils.Cluster` on this machine: a head node with no
CPUs (so, as on KubeRay, no actor lands on it) and two worker nodes of one CPU each, all on
loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is Ray's switch for "one machine": every
address it resolves is 127.0.0.1, in this process and the emulators it starts), with small
object stores. The test process joins it as a driver, with the job
``runtime_env`` that ships this checkout's ``emulator`` and ``aioruntime`` to the actors
(``emulator.rayspec.code_runtime_env``), so an in-process emulator with ``workers="ray"``
uses it; a subprocess emulator joins it with ``--ray-address``. Ray's start-up (some ten
seconds on two busy cores) is paid once. Tests may add nodes (and must remove them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["LOOPBACK_ONLY", "NODE", "ray_cluster"]

#: Arguments of every node the tests start.
NODE: dict[str, Any] = {
    "node_ip_address": "127.0.0.1",
    "object_store_memory": 96 * 2**20,
}


#: Ray's "no multi-machine cluster" switch: it then resolves every address to loopback.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    os.environ.update(LOOPBACK_ONLY)  # before Ray is imported, and for the emulators started
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'aioruntime[ray]'")
    import plane_funcs
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    from emulator.rayspec import code_runtime_env

    ray_constants.ENABLE_RAY_CLUSTER = False  # in case Ray was imported before
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **NODE,
            "num_cpus": 0,
            "include_dashboard": False,
            # Workers at niceness 0, not Ray's 15: the actors then set their own (the QPU's at
            # the emulator's, lanes 5 above) also where raising a priority is not allowed.
            # A killed node is found dead after 5 failed health checks: every 0.5 s here, not
            # Ray's 3 s (15 s of each node-death test spent waiting). A slow node still has
            # Ray's 10 s to answer each check, so a busy machine does not lose a live node.
            "_system_config": {"worker_niceness": 0, "health_check_period_ms": 500},
        },
    )
    try:
        for _ in range(2):
            cluster.add_node(**NODE, num_cpus=1)
        ray.cloudpickle.register_pickle_by_value(plane_funcs)
        ray.init(
            address=cluster.address,
            runtime_env=code_runtime_env(),
            namespace="aioruntime-tests",
            configure_logging=False,
        )
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]
