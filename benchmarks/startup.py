"""``python -m benchmarks.startup``: how soon a freshly started emulator answers, and serves.

Each round starts ``python -m emulator --ephemeral`` (the default backends, its own process, as
users start it) and measures, from the moment the process is spawned:

- ``listening_s``: the start banner says it listens (``EmulatorProcess.start`` returns);
- ``health_s``: ``GET /health`` answered 200 (polled every 10 ms from ``listening_s``);
- ``first_job_s``: a trivial Sampler job (one qubit, 100 shots, ``ibm_manila``) sent with
  aioruntime as soon as ``/health`` answered has its result (the job waits for the workers
  that warm in the background);
- ``ready_s``: ``/health`` says ``"workers": "ready"``.

Then the memory at rest of the whole process tree (the emulator, its zygote and its workers),
one second after the workers are ready, once the first job has run: ``rss_MiB``, the sum of the
processes' resident sets (pages the zygote's forks share are counted once per process, as
``ps`` and most dashboards count them), and ``pss_MiB``, the proportional set size (shared pages
divided among their sharers: what the tree really takes from the machine).

Then ``loaded_rss_MiB`` and ``loaded_pss_MiB``: the same after a burst, 20 trivial jobs sent at
once in a batch on each default backend, when every lane worker the burst needed is running.

The issue's targets (quiet 2-core machine): ``/health`` within 3 s, the first job within 5 s,
the memory at rest under 1 GiB (1024 MiB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from . import machine
from .harness import aio_service, tree_memory

TARGETS = {"health_s": 3.0, "first_job_s": 5.0, "rss_MiB": 1024.0, "pss_MiB": 1024.0}
UNITS = {"rss_MiB": "MiB", "pss_MiB": "MiB", "loaded_rss_MiB": "MiB", "loaded_pss_MiB": "MiB"}
REPORTED = (
    "listening_s",
    "health_s",
    "first_job_s",
    "ready_s",
    "rss_MiB",
    "pss_MiB",
    "processes",
    "loaded_rss_MiB",
    "loaded_pss_MiB",
    "loaded_processes",
)


def _health(base_url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(base_url + "/health", timeout=5) as resp:
            body: dict[str, Any] = json.load(resp)
            return body
    except OSError:
        return None


async def _first_job(emu: Any) -> None:
    from aioruntime import AsyncSamplerV2

    from .circuits import trivial_pub

    async with aio_service(emu) as service:
        backend = await service.backend("ibm_manila")
        job = await AsyncSamplerV2(mode=backend).run([trivial_pub(backend.target)], shots=100)
        result = await job
        assert result[0].data.meas.num_shots == 100


async def _burst(emu: Any, jobs: int = 20) -> None:
    from aioruntime import AsyncBatch, AsyncSamplerV2

    from .circuits import trivial_pub

    async with aio_service(emu) as service:
        for name in ("ibm_fez", "ibm_torino", "ibm_manila"):
            backend = await service.backend(name)
            pub = trivial_pub(backend.target)
            async with AsyncBatch(backend) as batch:
                sampler = AsyncSamplerV2(mode=batch)
                sent = await asyncio.gather(*(sampler.run([pub], shots=100) for _ in range(jobs)))
                for result in await asyncio.gather(*sent):
                    assert result[0].data.meas.num_shots == 100


def one_round() -> dict[str, float]:
    from emulator.testing import EmulatorProcess

    t0 = time.monotonic()
    emu = EmulatorProcess("--ephemeral").start()
    try:
        out = {"listening_s": time.monotonic() - t0}
        while _health(emu.base_url) is None:
            time.sleep(0.01)
        out["health_s"] = time.monotonic() - t0
        asyncio.run(_first_job(emu))
        out["first_job_s"] = time.monotonic() - t0
        while (_health(emu.base_url) or {}).get("workers") != "ready":
            time.sleep(0.01)
        out["ready_s"] = time.monotonic() - t0
        time.sleep(1.0)
        out |= tree_memory(emu.pid)
        asyncio.run(_burst(emu))
        time.sleep(1.0)
        loaded = tree_memory(emu.pid)
        out["loaded_rss_MiB"], out["loaded_pss_MiB"] = loaded["rss_MiB"], loaded["pss_MiB"]
        out["loaded_processes"] = loaded["processes"]
        return out
    finally:
        emu.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="emulator starts (default 3)")
    args = parser.parse_args(argv)
    print(f"start-up, default backends, {args.rounds} rounds; load {machine.load()}")
    rows = []
    for i in range(args.rounds):
        row = one_round()
        rows.append(row)
        print(f"round {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    for key in REPORTED:
        median = statistics.median(r[key] for r in rows)
        target = TARGETS.get(key)
        unit = UNITS.get(key, "" if "processes" in key else "s")
        verdict = (
            ""
            if target is None
            else f"  target <= {target:g} {unit}: " + ("PASS" if median <= target else "MISS")
        )
        print(f"{key:>12}: median {median:.2f} {unit}{verdict}")
    print(f"load after {machine.load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
