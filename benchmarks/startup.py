"""``python -m benchmarks.startup``: how soon a freshly started emulator answers, and serves.

Each round starts ``python -m emulator --ephemeral`` (the default backends, its own process, as
users start it) and measures, from the moment the process is spawned:

- ``listening_s``: the start banner says it listens (``EmulatorProcess.start`` returns);
- ``health_s``: ``GET /health`` answered 200 (polled every 10 ms from ``listening_s``);
- ``first_job_s``: a trivial Sampler job (one qubit, 100 shots, ``ibm_manila``) sent with
  aioruntime as soon as ``/health`` answered has its result (the job waits for the workers
  that warm in the background);
- ``ready_s``: ``/health`` says ``"workers": "ready"``.

The issue's targets (quiet 2-core machine): ``/health`` within 3 s, the first job within 5 s.
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
from .harness import aio_service

TARGETS = {"health_s": 3.0, "first_job_s": 5.0}


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
    for key in ("listening_s", "health_s", "first_job_s", "ready_s"):
        median = statistics.median(r[key] for r in rows)
        target = TARGETS.get(key)
        verdict = (
            ""
            if target is None
            else f"  target <= {target:g} s: " + ("PASS" if median <= target else "MISS")
        )
        print(f"{key:>12}: median {median:.2f} s{verdict}")
    print(f"load after {machine.load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
