"""The worker plane: where the emulator's CPU work runs, behind one small interface.

Decoding, validation, binding, Aer and encoding never run on the event loop. The scheduler hands
them to a :class:`WorkerPlane`: ``lane(func, *args)`` runs classical work (pre- and
post-processing) on any lane worker, ``qpu(backend, func, *args)`` runs a backend's sampling on
its QPU worker. Two properties every plane keeps: cancelling the awaiting task stops the
computation (the worker is killed and replaced), and a worker that dies fails only the call it
was running (:class:`WorkerDied`).

:class:`ProcessPlane` (the default) runs local worker processes through :class:`WorkerPool`:
``python -m emulator.worker`` children, each a fresh interpreter that never re-runs the parent's
main module (anyio's ``to_process`` does, with ``__main__`` removed, which breaks scripts and
notebooks that import qiskit at top level). Lane workers run at a lower CPU priority than the QPU
workers, so on a small machine the one serialized QPU is not starved by five lanes of classical
work (on IBM's stack they do not share CPUs either).

Both ends of the pipe protocol live here. The parent writes ``<length>\\n<pickle of (func,
args)>``; the worker (:func:`serve`) answers ``ACK\\n`` as soon as it has read the call (so the
parent can tell "died before the call" from "died during it"), then ``OK <length>\\n<pickle of
result>`` or ``EXC <length>\\n<pickle of exception>``.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TypeVar

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

if TYPE_CHECKING:
    from .backends import Device
    from .config import Config

__all__ = [
    "LANE_NICENESS",
    "ProcessPlane",
    "WorkerDied",
    "WorkerPlane",
    "WorkerPool",
    "create_plane",
    "serve",
]

T = TypeVar("T")

log = logging.getLogger("emulator.workers")

#: CPU niceness of the lane workers relative to the QPU workers.
LANE_NICENESS = 5

_SPARE_ATTEMPTS = 4
#: What handing a call to an already dead worker looks like.
_DEAD_BEFORE_CALL = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.DelimiterNotFound,
    OSError,
)


class WorkerDied(Exception):
    """The worker process running a call died during it (killed, crashed, out of memory)."""


@dataclass(eq=False, slots=True)
class _Worker:
    process: Process
    stdout: BufferedByteReceiveStream

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


class WorkerPool:
    """Runs module-level functions in worker processes (``python -m emulator.worker``).

    At most ``size`` calls run at once (the lanes, not this pool, decide who runs). ``nice``
    lowers the workers' CPU priority: lane workers run at a lower priority than the QPU's, so on a
    small machine the one serialized QPU is not starved by five lanes of classical work (on IBM's
    stack they do not share CPUs either). Idle workers are reused, most recent first. A call
    whose task is cancelled kills its worker, so a cancelled job stops computing at once; a
    worker that dies during a call raises :class:`WorkerDied` for that call only, and a fresh
    worker replaces it.
    """

    def __init__(self, size: int, *, nice: int = 0, memory_mb: int = 0) -> None:
        self._limiter = anyio.CapacityLimiter(size)
        self._nice = nice
        self._memory_mb = memory_mb
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._closed = False

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` in a worker; its exceptions are re-raised here."""
        request = pickle.dumps((func, args), pickle.HIGHEST_PROTOCOL)
        async with self._limiter:
            for _ in range(_SPARE_ATTEMPTS):
                worker = await self._checkout()
                try:
                    await worker.process.stdin.send(b"%d\n" % len(request) + request)  # type: ignore[union-attr]
                    ack = await worker.stdout.receive_until(b"\n", 16)
                except BaseException as exc:
                    await self._discard(worker)
                    if not isinstance(exc, _DEAD_BEFORE_CALL):
                        raise  # cancellation, or a bug
                    # No acknowledgement: the worker had died (e.g. killed while idle) before
                    # it read the call, so nothing ran. Another worker takes the call.
                    log.warning("a worker process had died while idle; it was replaced")
                    continue
                if ack != b"ACK":
                    await self._discard(worker)
                    raise WorkerDied(f"a worker process answered {ack!r} instead of ACK")
                return await self._answer(worker)  # type: ignore[no-any-return]
            raise WorkerDied("no worker process could be started")

    async def _answer(self, worker: _Worker) -> Any:
        try:
            header = await worker.stdout.receive_until(b"\n", 64)
            tag, length = header.split(b" ")
            payload = await worker.stdout.receive_exactly(int(length))
        except BaseException as exc:
            await self._discard(worker)
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
            raise WorkerDied(f"the worker process died during the call ({exc!r})") from exc
        self._idle.append(worker)
        result = pickle.loads(payload)
        if tag == b"EXC":
            raise result
        return result

    async def _checkout(self) -> _Worker:
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        while self._idle:
            worker = self._idle.pop()
            if worker.alive:
                return worker
            await self._discard(worker)
        # --parent: the worker dies with this process (see emulator.worker); --memory-mb: what
        # one job stage may add to its address space.
        process = await anyio.open_process(
            [
                *(sys.executable, "-u", "-m", "emulator.worker", "--nice", str(self._nice)),
                *("--parent", str(os.getpid()), "--memory-mb", str(self._memory_mb)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        worker = _Worker(process, BufferedByteReceiveStream(process.stdout))  # type: ignore[arg-type]
        self._all.add(worker)
        try:
            with anyio.fail_after(120):
                ready = await worker.stdout.receive_until(b"\n", 16)
            if ready != b"READY":
                raise WorkerDied(f"unexpected greeting from a worker: {ready!r}")
        except BaseException:
            await self._discard(worker)
            raise
        return worker

    async def _discard(self, worker: _Worker) -> None:
        self._all.discard(worker)
        with anyio.CancelScope(shield=True):
            if worker.alive:
                worker.process.kill()
            await worker.process.aclose()

    async def warm(self, func: Callable[..., Any], *args: Any, count: int) -> None:
        """Start ``count`` workers at once and run ``func`` in each (imports, device caches)."""
        async with anyio.create_task_group() as tg:
            for _ in range(min(count, int(self._limiter.total_tokens))):
                tg.start_soon(self.run, func, *args)

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._all if w.alive]

    async def aclose(self) -> None:
        """Stop every worker (closing stdin lets idle ones exit; busy ones are killed)."""
        self._closed = True
        workers, self._idle = list(self._all), []
        for worker in workers:
            await self._discard(worker)


# ---------------------------------------------------------------------------------------------
# The plane
# ---------------------------------------------------------------------------------------------


class WorkerPlane(Protocol):
    """Where CPU work runs. Implementations: :class:`ProcessPlane`, ``emulator.rayplane``."""

    kind: str

    async def warm(self, sources: tuple[str, ...]) -> None:
        """Start the workers and load the served devices into them."""

    async def lane(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` on a lane worker (classical work)."""

    async def qpu(self, backend: str, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` on ``backend``'s QPU worker (one call at a time per backend)."""

    def statistics(self) -> dict[str, Any]:
        """``{"kind": ..., "alive": n, ...}`` for ``GET /admin/statistics``."""

    async def aclose(self) -> None:
        """Stop every worker."""


class ProcessPlane:
    """Local worker processes: ``lanes`` lane workers per backend, one QPU worker per backend."""

    kind = "process"

    def __init__(self, *, backends: int, lanes: int, memory_mb: int = 0) -> None:
        self._lanes = lanes
        self._backends = backends
        self.lane_pool = WorkerPool(size=backends * lanes, nice=LANE_NICENESS, memory_mb=memory_mb)
        self.qpu_pool = WorkerPool(size=backends, memory_mb=memory_mb)

    async def warm(self, sources: tuple[str, ...]) -> None:
        from . import worker

        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: self.lane_pool.warm(worker.warm, sources, count=self._lanes))
            tg.start_soon(lambda: self.qpu_pool.warm(worker.warm, sources, count=self._backends))

    async def lane(self, func: Callable[..., T], *args: Any) -> T:
        return await self.lane_pool.run(func, *args)

    async def qpu(self, backend: str, func: Callable[..., T], *args: Any) -> T:
        # Every QPU worker has every served device loaded; the scheduler runs one call at a
        # time per backend, so ``backends`` workers are one per backend.
        return await self.qpu_pool.run(func, *args)

    def statistics(self) -> dict[str, Any]:
        lane, qpu = self.lane_pool.pids, self.qpu_pool.pids
        return {
            "kind": self.kind,
            "alive": len(lane) + len(qpu),
            "lane_workers": len(lane),
            "qpu_workers": len(qpu),
            "where": "local processes",
        }

    async def aclose(self) -> None:
        await self.lane_pool.aclose()
        await self.qpu_pool.aclose()


def create_plane(config: Config, devices: list[Device]) -> WorkerPlane:
    """The plane ``config.workers`` names, for the devices served. Mock twins (dry runs,
    ``Device.mock``) add no workers: they never use a QPU and share the lane workers."""
    served = {d.name: d.source for d in devices if not d.mock}
    if config.workers == "ray":
        from . import rayspec
        from .rayplane import RayPlane  # Ray is an optional extra: imported only when chosen

        return RayPlane(
            backends=served,
            lanes=config.lanes,
            memory_mb=config.worker_memory_mb,
            address=config.ray_address,
            lane_resources=rayspec.Resources.parse(config.ray_lane_resources),
            qpu_resources=rayspec.parse_qpu_resources(config.ray_qpu_resources),
            runtime_env=rayspec.parse_runtime_env(config.ray_runtime_env),
        )
    return ProcessPlane(backends=len(served), lanes=config.lanes, memory_mb=config.worker_memory_mb)


# ---------------------------------------------------------------------------------------------
# The worker's end of the pipes
# ---------------------------------------------------------------------------------------------


def _reply(out: BinaryIO, tag: bytes, obj: Any) -> None:
    try:
        payload = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an unpicklable result or exception: say so, stay alive
        tag, payload = b"EXC", pickle.dumps(RuntimeError(f"unpicklable {tag.decode()}: {exc!r}"))
    out.write(b"%s %d\n" % (tag, len(payload)))
    out.write(payload)
    out.flush()


def serve() -> None:
    """Answer calls from the parent until stdin closes (runs in the worker process)."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    out.write(b"READY\n")
    out.flush()
    while True:
        header = inp.readline()
        if not header:
            return
        request = inp.read(int(header))
        out.write(b"ACK\n")
        out.flush()
        try:
            func, args = pickle.loads(request)
            result = func(*args)
        except Exception as exc:
            _reply(out, b"EXC", exc)
        else:
            _reply(out, b"OK", result)
