"""The emulator the benchmarks run against, the clients pointed at it, and what they share.

By default the harness starts the real emulator in-process
(:class:`emulator.testing.EmulatorThread`: the aiohttp app on a background event loop, its CPU
work in worker processes that are children of this process); ``where="process"`` starts it as
its own process instead (:class:`emulator.testing.EmulatorProcess`). aioruntime runs on the main
thread's event loop; the official client runs in plain threads. In-process, client and emulator
share this process (and its GIL); either way they share the machine's cores: the figures are
those of a laptop set-up, not of a remote service.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from aioruntime import AsyncRuntimeService
    from emulator.testing import EmulatorProcess, EmulatorThread

__all__ = [
    "BACKEND",
    "PLACEMENTS",
    "Bench",
    "Progress",
    "RssSampler",
    "Stopwatch",
    "cpu_snapshot",
    "emulator_memory",
    "running_emulator",
]

#: The device every workload runs on (Heron r2, 156 qubits).
BACKEND = "ibm_fez"


class Progress:
    """A tqdm bar over the jobs a run will send, or nothing (``enabled=False``)."""

    def __init__(self, total: int, *, enabled: bool = True) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="job", dynamic_ncols=True, smoothing=0.1)
        self._lock = threading.Lock()

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(text, refresh=True)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


#: Where the emulator runs: ``thread`` (in this process, :class:`EmulatorThread`; the default)
#: or ``process`` (``python -m emulator`` as a child process, :class:`EmulatorProcess`: its own
#: interpreter and GIL, as a remote service would have).
PLACEMENTS = ("thread", "process")


#: The worker planes (``--workers``): local worker processes, or Ray actors on a local Ray
#: instance the emulator starts (``emulator/rayplane.py``).
WORKERS = ("process", "ray")


@contextlib.contextmanager
def running_emulator(
    clock: str,
    *,
    lanes: int = 5,
    where: str = "thread",
    workers: str = "process",
    backends: str = BACKEND,
) -> Iterator[Any]:
    """The emulator serving ``backends`` (``ibm_fez``) under ``clock``, in memory, on a free
    port, its CPU work on the ``workers`` plane."""
    from emulator.config import ClockSpec, Config
    from emulator.testing import EmulatorProcess, EmulatorThread

    if where == "thread":
        config = Config(
            port=0,
            clock=ClockSpec.parse(clock),
            backends=backends,
            lanes=lanes,
            data_dir=Path(":memory:"),
            workers=workers,
        )
        with EmulatorThread(config) as emu:
            yield emu
    elif where == "process":
        proc = EmulatorProcess(
            *("--clock", clock, "--backends", backends, "--lanes", str(lanes), "--ephemeral"),
            *("--workers", workers),
        )
        proc.start()
        try:
            yield proc
        finally:
            proc.stop()
    else:
        raise ValueError(f"the emulator runs in a thread or a process, not {where!r}")


def aio_service(emu: EmulatorThread | EmulatorProcess, **kwargs: Any) -> AsyncRuntimeService:
    """An aioruntime service pointed at ``emu`` (not opened). ``iam_url`` must point at the
    emulator too, or the client asks IBM's IAM for a token."""
    from aioruntime import AsyncRuntimeService

    return AsyncRuntimeService(
        url=emu.runtime_url,
        token=emu.api_key,
        instance=emu.instance,
        iam_url=emu.base_url,
        **kwargs,
    )


@dataclass(slots=True)
class Bench:
    """What a workload gets: the emulator, its clock, the progress bar, where to write."""

    emu: EmulatorThread | EmulatorProcess
    clock: str
    out_dir: Path
    stamp: str
    progress: Progress
    lanes: int = 5
    seed: int = 1234

    def service(self, **kwargs: Any) -> AsyncRuntimeService:
        return aio_service(self.emu, **kwargs)

    def official_service(self) -> Any:
        return self.emu.official_service()

    def run(self, coro_fn: Callable[[], Any]) -> Any:
        """Run an async workload on a fresh event loop in this thread."""
        return asyncio.run(coro_fn())


# -- memory ------------------------------------------------------------------------------------


def emulator_memory(children: Sequence[psutil.Process] | None = None) -> dict[str, Any]:
    """RSS of this process (the client; with the emulator in a thread also its event loop) and
    of its live child processes (the emulator's workers, and its process if it has one), in
    bytes. ``children``: the processes to count, when the caller has listed them already
    (finding them walks every process on the machine; see :class:`RssSampler`)."""
    me = psutil.Process()
    sizes = []
    for child in me.children(recursive=True) if children is None else children:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            sizes.append(child.memory_info().rss)
    main = me.memory_info().rss
    return {
        "main_rss": main,
        "children_rss": sum(sizes),
        "children": len(sizes),
        "total_rss": main + sum(sizes),
    }


def tree_memory(pid: int) -> dict[str, float]:
    """RSS and PSS (MiB) of the process ``pid`` and all its descendants, and their count. PSS
    divides shared pages among their sharers: the emulator's workers fork from one zygote and
    share its pages, which RSS counts once per worker."""
    root = psutil.Process(pid)
    rss = pss = 0
    procs = [root, *root.children(recursive=True)]
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except psutil.Error:  # gone meanwhile
            continue
        rss += info.rss
        pss += info.pss
    return {"rss_MiB": rss / 2**20, "pss_MiB": pss / 2**20, "processes": float(len(procs))}


def cpu_snapshot() -> dict[str, float]:
    """CPU seconds (user + system) used so far, by where they were spent: this process's main
    thread (the client's event loop), its ``emulator-loop`` thread (the emulator's event loop),
    its other threads (the client's codec threads, aiosqlite, the samplers), the emulator's lane
    and QPU worker processes, and (with ``--emulator process``) the emulator's own process;
    live processes only."""
    me = psutil.Process()
    names = {t.native_id: t.name for t in threading.enumerate()}
    main_id = threading.main_thread().native_id
    out = {"client loop": 0.0, "emulator loop": 0.0, "other threads": 0.0, "workers": 0.0}
    for t in me.threads():
        used = t.user_time + t.system_time
        if t.id == main_id:
            out["client loop"] += used
        elif names.get(t.id) == "emulator-loop":
            out["emulator loop"] += used
        else:
            out["other threads"] += used
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = child.cpu_times()
            cmdline = " ".join(child.cmdline())
            worker = "emulator.worker" in cmdline or cmdline.startswith("ray::")  # Ray actors
            where = "workers" if worker else "emulator process"
            out[where] = out.get(where, 0.0) + times.user + times.system
    return out


class Stopwatch:
    """Wall time and CPU time (this process and its children, :func:`cpu_snapshot`) of a
    block; ``cores`` is the average number of cores it kept busy."""

    wall_s: float = 0.0
    cpu_s: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._cpu0 = cpu_snapshot()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._t0
        cpu1 = cpu_snapshot()
        # A worker that exited in between takes its CPU time with it: never count negative.
        self.cpu_s = sum(max(0.0, v - self._cpu0.get(k, 0.0)) for k, v in cpu1.items())

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else float("nan")


class RssSampler:
    """Samples :func:`emulator_memory` every ``interval`` s in a thread; keeps the peak total.

    The child processes are listed again every ``rescan_s`` (a worker forked in between is
    counted from the next listing on), not at every sample: psutil finds a process's children
    by reading every process on the machine, 2.8 ms of CPU per sample here, taken from the
    two cores the fan-out measures (5-6% of one at 20 samples a second). Reading the RSS of
    the known ones costs a few hundredths of that."""

    def __init__(self, interval: float = 0.05, rescan_s: float = 0.5) -> None:
        self.interval = interval
        self.rescan_s = rescan_s
        self.peak: dict[str, Any] = {}
        self.samples = 0
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        me = psutil.Process()
        children: list[psutil.Process] = []
        scanned = -math.inf
        while not self._stop.is_set():
            if time.monotonic() - scanned >= self.rescan_s:
                children, scanned = me.children(recursive=True), time.monotonic()
                self.scans += 1
            snap = emulator_memory(children)
            self.samples += 1
            if snap["total_rss"] > self.peak.get("total_rss", 0):
                self.peak = snap
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wall() -> float:
    return time.perf_counter()


# -- warm-up -------------------------------------------------------------------------------------


def warm_up(emu: EmulatorThread | EmulatorProcess, *, width: int = 8) -> float:
    """Send ``width`` trivial and ``width`` 8-qubit Sampler jobs and ``width`` Estimator jobs,
    all at once, and wait for them.

    The emulator's start-up loads the device into each worker process, but a worker's first
    Sampler or Estimator job still imports Aer and the primitives (seconds of CPU). Without this,
    whichever workload runs first would pay that for every worker it touches. Returns the wall
    seconds spent; nothing of it is measured."""
    return asyncio.run(_warm(emu, width))


async def _warm(emu: EmulatorThread | EmulatorProcess, width: int) -> float:
    from aioruntime import AsyncEstimatorV2, AsyncSamplerV2

    from .circuits import su2_pubs, trivial_pub, vqe_problem

    t0 = time.perf_counter()
    async with aio_service(emu) as service:
        backend = await service.backend(BACKEND)
        isa, values = su2_pubs(backend.target, n=width, qubits=8, reps=2)
        trivial = trivial_pub(backend.target)
        problem = vqe_problem(backend.target)
        sampler = AsyncSamplerV2(mode=backend)
        estimator = AsyncEstimatorV2(mode=backend)
        jobs = await asyncio.gather(
            *(sampler.run([(isa, x)], shots=100) for x in values),
            *(sampler.run([trivial], shots=10) for _ in range(width)),
            *(estimator.run([problem.pub(problem.x0)]) for _ in range(width)),
        )
        await asyncio.gather(*jobs)
    return time.perf_counter() - t0
