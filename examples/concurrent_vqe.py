"""Two VQE optimizers running concurrently in one AsyncSession, from asyncio code.

IBM's "Run two VQE algorithms in a session by using threading" recipe, asynchronously: SciPy's
``minimize`` is blocking and calls its cost function synchronously, so each optimizer runs in a
worker thread (``anyio.to_thread.run_sync``) and its cost function calls back into the event
loop with ``anyio.from_thread.run`` to submit an estimator job and await its result. The event
loop stays free; both optimizers share one session (and one connection pool); their jobs are told
apart by job tags. Cancelling ``run_two_vqe`` stops both optimizers at their next evaluation
(bounded clean-up: at most one job per optimizer still finishes) and closes the session.

Problem: H = ZZ + 0.5·XI + 0.5·IX (exact ground energy -√2), a hardware-efficient
``real_amplitudes`` ansatz (2 qubits, 4 parameters) transpiled to the device, COBYLA and
Nelder-Mead side by side.

Run it against the emulator (``python -m emulator`` in another shell)::

    python examples/concurrent_vqe.py --url http://127.0.0.1:8765/api/v1 \\
        --token emulator-dev-key --iam-url http://127.0.0.1:8765 \\
        --instance crn:v1:bluemix:public:quantum-computing:us-east:a/0123456789abcdef::

or call ``await run_two_vqe(service, "ibm_manila")`` from your own asyncio code.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio.from_thread
import anyio.to_thread
import numpy as np
from qiskit.circuit.library import real_amplitudes
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from scipy.optimize import OptimizeResult, minimize

from aioruntime import AsyncEstimatorV2, AsyncRuntimeService, AsyncSession

__all__ = ["HAMILTONIAN", "exact_ground_energy", "run_two_vqe"]

HAMILTONIAN = SparsePauliOp.from_list([("ZZ", 1.0), ("XI", 0.5), ("IX", 0.5)])


def exact_ground_energy(hamiltonian: SparsePauliOp = HAMILTONIAN) -> float:
    return float(np.linalg.eigvalsh(hamiltonian.to_matrix()).min())


#: ``progress(method, evaluations_so_far, energy)``, called from the optimizer's worker thread.
Progress = Callable[[str, int, float], None]


class _Stopped(Exception):
    """Raised inside a cost function to abort ``minimize`` when the run is cancelled."""


async def _energy(estimator: AsyncEstimatorV2, ansatz: Any, observable: Any, x: Any) -> float:
    job = await estimator.run([(ansatz, observable, x)])
    result = await job
    return float(result[0].data.evs)


def _minimize_in_thread(
    method: str,
    estimator: AsyncEstimatorV2,
    ansatz: Any,
    observable: Any,
    x0: np.ndarray,
    options: dict[str, Any],
    stop: threading.Event,
    history: list[float],
    progress: Progress | None,
) -> OptimizeResult:
    """Runs in a worker thread; each cost evaluation is one estimator job on the event loop."""

    def cost(x: np.ndarray) -> float:
        if stop.is_set():
            raise _Stopped
        energy = anyio.from_thread.run(_energy, estimator, ansatz, observable, np.array(x))
        history.append(energy)
        if progress is not None:
            progress(method, len(history), energy)
        return energy

    return minimize(cost, x0, method=method, options=options)


async def _run_stoppable(fn: functools.partial[OptimizeResult], stop: threading.Event) -> Any:
    """``to_thread.run_sync(fn)``, but cancelling the caller stops the optimizer at its next
    evaluation instead of waiting for ``minimize`` to run to its end; then re-raises."""
    task = asyncio.ensure_future(anyio.to_thread.run_sync(fn))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()
        try:
            await asyncio.shield(task)
        except Exception:  # _Stopped, or whatever the optimizer raised meanwhile
            pass
        raise


async def run_two_vqe(
    service: AsyncRuntimeService,
    backend_name: str = "ibm_manila",
    *,
    methods: Sequence[str] = ("COBYLA", "Nelder-Mead"),
    precision: float = 0.01,
    maxiter: dict[str, int] | None = None,
    x0: Sequence[float] | None = None,
    seed: int = 1234,
    max_time: int | str | None = "30m",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Minimise ``HAMILTONIAN`` with each of ``methods`` at the same time in one AsyncSession.

    Returns ``{"exact_energy", "backend", "session_id", "wall_s", "jobs", "optimizers"}`` where
    ``optimizers`` maps each method to ``{"tag", "energy", "error", "nfev", "x", "history",
    "wall_s"}``. ``seed`` fixes the transpiler and the simulator (``simulator.seed_simulator``)
    so runs are reproducible on the emulator. ``progress`` is called after every evaluation
    from the optimizer's worker thread (use ``loop.call_soon_threadsafe`` to reach the loop).
    """
    backend = await service.backend(backend_name)
    pm = generate_preset_pass_manager(
        optimization_level=1, target=backend.target, seed_transpiler=seed
    )
    ansatz = await anyio.to_thread.run_sync(pm.run, real_amplitudes(2, reps=1))
    observable = HAMILTONIAN.apply_layout(ansatz.layout)
    start = np.asarray(x0 if x0 is not None else np.full(ansatz.num_parameters, 1.0), dtype=float)
    iterations = {"COBYLA": 60, "Nelder-Mead": 80, **(maxiter or {})}
    stop = threading.Event()
    histories: dict[str, list[float]] = {m: [] for m in methods}
    results: dict[str, Any] = {}
    began = time.perf_counter()

    async with AsyncSession(backend, max_time=max_time) as session:

        async def optimize(method: str) -> None:
            tag = method.lower()
            estimator = AsyncEstimatorV2(
                mode=session,
                options={
                    "default_precision": precision,
                    "environment": {"job_tags": [tag]},
                    "simulator": {"seed_simulator": seed},
                },
            )
            t0 = time.perf_counter()
            fn = functools.partial(
                _minimize_in_thread,
                method,
                estimator,
                ansatz,
                observable,
                start,
                {"maxiter": iterations.get(method, 60)},
                stop,
                histories[method],
                progress,
            )
            res = await _run_stoppable(fn, stop)
            results[method] = {
                "tag": tag,
                "energy": float(res.fun),
                "nfev": int(res.nfev),
                "x": [float(v) for v in res.x],
                "history": histories[method],
                "wall_s": time.perf_counter() - t0,
            }

        async with asyncio.TaskGroup() as group:
            for method in methods:
                group.create_task(optimize(method))
        session_id = session.session_id
        usage = await session.usage()

    exact = exact_ground_energy()
    for entry in results.values():
        entry["error"] = entry["energy"] - exact
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
    parser.add_argument("--backend", default="ibm_manila")
    parser.add_argument("--precision", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=1234)
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncRuntimeService(
        url=args.url, token=args.token, instance=args.instance, iam_url=args.iam_url
    ) as service:
        return await run_two_vqe(service, args.backend, precision=args.precision, seed=args.seed)


if __name__ == "__main__":
    summary = asyncio.run(_main(_parse_args()))
    for method, entry in summary["optimizers"].items():
        entry.pop("history")
        print(
            f"{method:>12}: E = {entry['energy']:+.4f} (exact {summary['exact_energy']:+.4f}, "
            f"error {entry['error']:+.4f}) after {entry['nfev']} jobs in {entry['wall_s']:.1f} s"
        )
    print(json.dumps({k: v for k, v in summary.items() if k != "optimizers"}, indent=2))
