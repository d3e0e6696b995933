"""The executor primitives on the emulator's ``ibm_fez`` next to IBM's local mode on ``FakeFez``.

``python -m benchmarks.executor_vs_local [--repeat 3] [--out DIR]``

Two jobs, both with the unmodified official client's client-side primitives:

- the executor Sampler (``qiskit_ibm_runtime.executor_sampler.SamplerV2``): a Bell circuit,
  1000 shots;
- the executor Estimator (``qiskit_ibm_runtime.executor_estimator.Estimator``) with its defaults
  (resilience level 1: measurement twirling and TREX): a Bell state, <ZZ>, <XX>, <ZI>.

Each runs ``--repeat`` times against the emulator in its own process
(``emulator.testing.EmulatorProcess``: ``python -m emulator --backends ibm_fez --ephemeral``, one
warm-up job each first) and once in IBM's local mode (the same primitives with
``mode=FakeFez()``, which runs them through ``QiskitRuntimeLocalService``). Wall time is measured
on the client from ``run()`` to the decoded result. Local mode runs in this process; a failure is
reported with its message.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _bell(measure: bool) -> Any:
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    if measure:
        qc.measure_all()
    return qc


def _jobs(backend: Any) -> dict[str, Callable[[], str]]:
    """The two jobs on ``backend`` (an IBMBackend or a fake backend): each returns a summary."""
    from qiskit.quantum_info import SparsePauliOp
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime.executor_estimator import Estimator
    from qiskit_ibm_runtime.executor_sampler import SamplerV2

    pm = generate_preset_pass_manager(
        optimization_level=1, target=backend.target, seed_transpiler=7
    )
    sampled, estimated = pm.run(_bell(True)), pm.run(_bell(False))
    observables = [
        SparsePauliOp(label).apply_layout(estimated.layout) for label in ("ZZ", "XX", "IZ")
    ]

    def sampler() -> str:
        counts = SamplerV2(mode=backend).run([sampled], shots=1000).result()[0].data.meas
        return str(dict(sorted(counts.get_counts().items())))

    def estimator() -> str:
        result = Estimator(mode=backend).run([(estimated, observables)]).result()[0].data
        return f"evs {result.evs.round(3).tolist()} stds {result.stds.round(3).tolist()}"

    return {"executor Sampler, Bell, 1000 shots": sampler, "executor Estimator, RL1": estimator}


def _time(job: Callable[[], str]) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        summary = job()
    except Exception as exc:  # local mode's failures are a result here
        summary = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return time.perf_counter() - start, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="emulator runs per job")
    parser.add_argument("--out", type=Path, default=None, help="write a JSON file here")
    parser.add_argument("--no-local", action="store_true", help="skip IBM's local mode")
    args = parser.parse_args(argv)

    from qiskit_ibm_runtime.fake_provider import FakeFez

    from emulator.testing import EmulatorProcess

    from .machine import describe, load

    rows: list[dict[str, Any]] = []
    load_before = load()
    with EmulatorProcess("--backends", "ibm_fez", "--ephemeral", "--lanes", "2") as emu:
        backend = emu.official_service().backend("ibm_fez")
        for name, job in _jobs(backend).items():
            _time(job)  # warm-up: the workers' first job imports the primitives
            runs = [_time(job) for _ in range(args.repeat)]
            times = [t for t, _ in runs]
            rows.append(
                {
                    "job": name,
                    "where": "emulator ibm_fez (own process)",
                    "runs_s": times,
                    "median_s": statistics.median(times),
                    "result": runs[-1][1],
                }
            )
    if not args.no_local:
        for name, job in _jobs(FakeFez()).items():
            seconds, summary = _time(job)
            rows.append(
                {
                    "job": name,
                    "where": "local mode FakeFez",
                    "runs_s": [seconds],
                    "median_s": seconds,
                    "result": summary,
                }
            )
    print(f"{'job':36} {'where':32} {'median s':>9}  result")
    for row in rows:
        print(f"{row['job']:36} {row['where']:32} {row['median_s']:9.2f}  {row['result']}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = args.out / f"executor_vs_local_{stamp}.json"
        machine = {**describe(), "load_before": load_before, "load_after": load()}
        path.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2, default=str))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
