"""The machine a run came from: cores, CPU model, memory, versions, load."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

__all__ = ["cores", "cpu_probe_ms", "describe", "load", "source"]

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
PACKAGES = (
    "qiskit",
    "qiskit-aer",
    "qiskit-ibm-runtime",
    "stim",
    "aiohttp",
    "anyio",
    "numpy",
    "scipy",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cores() -> int:
    """The cores this process may run on (``nproc``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def describe() -> dict[str, Any]:
    return {
        "nproc": cores(),
        "cpu_model": _cpu_model(),
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in PACKAGES},
        # Thread-count settings change Aer's speed a lot on few cores: record them if set.
        "env": {k: v for k in THREAD_ENV if (v := os.environ.get(k)) is not None},
    }


def load() -> str:
    """The 1/5/15-minute load averages, e.g. ``0.42/0.30/0.25``."""
    return "/".join(f"{x:.2f}" for x in psutil.getloadavg())


def cpu_probe_ms(rounds: int = 5) -> float:
    """How long a fixed pure-Python loop takes on one core, best of ``rounds`` (ms; lower is
    faster). The load average misses what slows this machine most: the cloud host under it.
    On the 2-core VM of ``README.md`` the same full run measured in-process Aer's trivial job
    at 1.1 ms in one run and 2.4-3.8 ms in the runs before and after it, every other figure
    moving with it; the probe, taken before and after each run, says which kind of run it was.
    """

    def work() -> int:
        table: dict[int, int] = {}
        for i in range(100_000):
            table[i & 1023] = table.get(i & 1023, 0) + i * 3 // 7
        return len(table)

    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def source() -> dict[str, Any]:
    """The commit the code under test came from, and whether aioruntime/ or emulator/ had
    uncommitted changes (then the figures belong to that working tree, not to the commit)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--", "aioruntime", "emulator")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}
