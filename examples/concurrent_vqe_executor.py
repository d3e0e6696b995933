"""Two VQE optimizers at once in one AsyncSession, on IBM's executor-based Estimator with twirling.

``examples/concurrent_vqe.py`` does this with the legacy ``AsyncEstimatorV2``, whose mitigation
ran on the server. Here every cost evaluation is an :class:`~aioruntime.AsyncExecutorEstimatorV2`
job: the client twirls the circuit (gates and measurements, ``num_randomizations`` random
Pauli frames), applies TREX (resilience level 1) and post-processes the bits itself, with the
official code, in aioruntime's worker processes, so the two optimizers' preparations and
post-processing run in parallel and never on the event loop. SciPy's ``minimize`` is blocking:
each optimizer runs in a worker thread and its cost function calls back into the event loop
(``anyio.from_thread.run``) to submit a job and await its result. Both share the session; their
jobs are told apart by job tags. Cancelling ``run_two_vqe`` stops both at their next evaluation
and closes the session.

Problem: H = ZZ + 0.5·XI + 0.5·IX (exact ground energy -√2), ``real_amplitudes`` (2 qubits,
4 parameters) transpiled to the device, COBYLA and Nelder-Mead side by side.

Against the emulator (``python -m emulator --api-key emulator-dev-key`` in another shell)::

    python examples/concurrent_vqe_executor.py --url http://127.0.0.1:8765/api/v1 \\
        --token emulator-dev-key --iam-url http://127.0.0.1:8765 \\
        --instance crn:v1:bluemix:public:quantum-computing:us-east:a/0123456789abcdef::

or ``await run_two_vqe(service, "ibm_fez")`` from your own asyncio code.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import anyio.from_thread
import anyio.to_thread
import numpy as np
from qiskit.circuit.library import real_amplitudes
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from scipy.optimize import minimize

from aioruntime import AsyncExecutorEstimatorV2, AsyncRuntimeService, AsyncSession

__all__ = ["HAMILTONIAN", "exact_ground_energy", "run_two_vqe"]

HAMILTONIAN = SparsePauliOp.from_list([("ZZ", 1.0), ("XI", 0.5), ("IX", 0.5)])


def exact_ground_energy() -> float:
    return float(np.linalg.eigvalsh(HAMILTONIAN.to_matrix()).min())


class _Stopped(Exception):
    """Raised inside a cost function to abort ``minimize`` when the run is cancelled."""


async def _energy(estimator: AsyncExecutorEstimatorV2, pub: tuple[Any, ...]) -> float:
    result = await (await estimator.run([pub]))
    return float(result[0].data.evs)


def _optimize(
    method: str,
    estimator: AsyncExecutorEstimatorV2,
    ansatz: Any,
    observable: Any,
    x0: np.ndarray,
    maxiter: int,
    stop: threading.Event,
    history: list[float],
) -> Any:
    """Runs in a worker thread; each evaluation is one executor job awaited on the event loop."""

    def cost(x: np.ndarray) -> float:
        if stop.is_set():
            raise _Stopped
        energy = anyio.from_thread.run(_energy, estimator, (ansatz, observable, np.array(x)))
        history.append(energy)
        return energy

    return minimize(cost, x0, method=method, options={"maxiter": maxiter})


async def run_two_vqe(
    service: AsyncRuntimeService,
    backend_name: str = "ibm_fez",
    *,
    methods: Sequence[str] = ("COBYLA", "Nelder-Mead"),
    shots: int = 1024,
    num_randomizations: int = 8,
    maxiter: int = 40,
    seed: int = 1234,
    max_time: int | str | None = "30m",
) -> dict[str, Any]:
    """Minimise ``HAMILTONIAN`` with each of ``methods`` at the same time in one AsyncSession.

    Returns ``{"exact_energy", "backend", "session_id", "session_usage_s", "wall_s", "jobs",
    "optimizers"}``; ``optimizers`` maps each method to ``{"tag", "energy", "error", "nfev",
    "history"}``. ``seed`` fixes the transpiler."""
    backend = await service.backend(backend_name)
    pm = generate_preset_pass_manager(
        optimization_level=1, target=backend.target, seed_transpiler=seed
    )
    ansatz = await anyio.to_thread.run_sync(pm.run, real_amplitudes(2, reps=1))
    observable = HAMILTONIAN.apply_layout(ansatz.layout)
    x0 = np.full(ansatz.num_parameters, 1.0)
    stop = threading.Event()
    histories: dict[str, list[float]] = {m: [] for m in methods}
    results: dict[str, Any] = {}
    began = time.perf_counter()

    async def optimize(session: AsyncSession, method: str) -> None:
        tag = method.lower()
        estimator = AsyncExecutorEstimatorV2(
            mode=session,
            options={
                "default_shots": shots,
                "resilience_level": 1,  # measurement twirling and TREX
                "twirling": {
                    "enable_gates": True,
                    "enable_measure": True,
                    "num_randomizations": num_randomizations,
                },
                "environment": {"job_tags": [tag]},
            },
        )
        args = (method, estimator, ansatz, observable, x0, maxiter, stop, histories[method])
        task = asyncio.ensure_future(anyio.to_thread.run_sync(_optimize, *args))
        try:
            res = await asyncio.shield(task)
        except asyncio.CancelledError:
            stop.set()  # the optimizer stops at its next evaluation; then we re-raise
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # _Stopped, or what the optimizer raised meanwhile: retrieved
            raise
        results[method] = {"tag": tag, "energy": float(res.fun), "nfev": int(res.nfev)}

    async with AsyncSession(backend, max_time=max_time) as session:
        async with asyncio.TaskGroup() as group:
            for method in methods:
                group.create_task(optimize(session, method))
        session_id = session.session_id
    usage = await session.usage()  # closed: the final bill of its active window

    exact = exact_ground_energy()
    for method, entry in results.items():
        entry.update(error=entry["energy"] - exact, history=histories[method])
    return {
        "exact_energy": exact,
        "backend": backend_name,
        "session_id": session_id,
        "session_usage_s": usage,
        "wall_s": time.perf_counter() - began,
        "jobs": sum(len(h) for h in histories.values()),
        "optimizers": results,
    }


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="runtime URL (default: $QISKIT_IBM_URL)")
    parser.add_argument("--token", help="API key (default: $QISKIT_IBM_TOKEN)")
    parser.add_argument("--instance", help="instance CRN (default: $QISKIT_IBM_INSTANCE)")
    parser.add_argument("--iam-url", help="IAM URL (default: $IAM_URL or IBM Cloud IAM)")
    parser.add_argument("--backend", default="ibm_fez")
    parser.add_argument("--maxiter", type=int, default=40)
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncRuntimeService(
        url=args.url, token=args.token, instance=args.instance, iam_url=args.iam_url
    ) as service:
        return await run_two_vqe(service, args.backend, maxiter=args.maxiter)


if __name__ == "__main__":
    summary = asyncio.run(_main(_parse_args()))
    for method, entry in summary["optimizers"].items():
        print(
            f"{method:>12}: E = {entry['energy']:+.4f} (exact {summary['exact_energy']:+.4f}, "
            f"error {entry['error']:+.4f}) after {entry['nfev']} jobs"
        )
    print(
        f"{summary['jobs']} executor jobs in session {summary['session_id']}: "
        f"{summary['wall_s']:.1f} s, {summary['session_usage_s']:.1f} s billed"
    )
