"""The worker plane: where the emulator's CPU work runs, behind one small interface.

Decoding, validation, binding, Aer and encoding never run on the event loop. The scheduler hands
them to a :class:`WorkerPlane`: ``lane(func, *args)`` runs classical work (pre- and
post-processing) on any lane worker, ``qpu(backend, func, *args)`` runs a backend's sampling on
its QPU worker. Two properties every plane keeps: cancelling the awaiting task stops the
computation (the worker is killed and replaced), and a worker that dies fails only the call it
was running (:class:`WorkerDied`).

:class:`ProcessPlane` (the default) runs local worker processes through :class:`WorkerPool`:
workers forked from the process's zygote (:mod:`emulator.zygote`: one interpreter that imported
qiskit, Aer and the stages once, so a worker starts in milliseconds, not seconds), never
re-running the parent's main module (anyio's ``to_process`` does, with ``__main__`` removed,
which breaks scripts and notebooks that import qiskit at top level). Workers start on demand
and stay for reuse. Lane workers run at a lower CPU priority than the QPU workers, so on a small
machine the one serialized QPU is not starved by five lanes of classical work (on IBM's stack
they do not share CPUs either).

Both ends of the pipe protocol live here. The parent writes ``<length>\\n<pickle of (func,
args)>``; the worker (:func:`serve`) answers ``ACK\\n`` as soon as it has read the call (so the
parent can tell "died before the call" from "died during it"), then ``OK <length>\\n<pickle of
result>`` or ``EXC <length>\\n<pickle of exception>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TypeVar

import anyio

from .zygote import Zygote, shared_zygote

if TYPE_CHECKING:
    from .backends import Device
    from .config import Config

__all__ = [
    "LANE_NICENESS",
    "PoolClosed",
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
_DEAD_BEFORE_CALL = (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError)


#: How long closing a pool waits for forks under way (they end in milliseconds).
_FORK_WAIT_S = 120.0


class PoolClosed(RuntimeError):
    """The worker pool was closed (before or while a worker was being started for it)."""


class WorkerDied(Exception):
    """The worker process running a call died during it (killed, crashed, out of memory)."""


class _Worker:
    """One worker process, seen through its two pipes (asyncio streams on the loop)."""

    def __init__(self, pid: int, reader: asyncio.StreamReader, writer: asyncio.WriteTransport):
        self.pid = pid
        self.reader = reader
        self._writer = writer
        self._killed = False

    @classmethod
    async def open(cls, pid: int, to_child: int, from_child: int) -> _Worker:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20, loop=loop)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(from_child, "rb", 0)
        )
        try:
            writer, _ = await loop.connect_write_pipe(
                asyncio.Protocol, os.fdopen(to_child, "wb", 0)
            )
        except BaseException:
            transport.close()
            raise
        return cls(pid, reader, writer)

    @property
    def alive(self) -> bool:
        if self._killed or self.reader.at_eof():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a reused pid: not ours any more
            return False
        return True

    def send(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise BrokenPipeError("the worker's pipe is closed")
        self._writer.write(data)

    async def readline(self) -> bytes:
        return (await self.reader.readuntil(b"\n"))[:-1]

    def kill(self) -> None:
        if not self._killed:
            self._killed = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)
        self._writer.close()
        transport = getattr(self.reader, "_transport", None)
        if transport is not None:
            transport.close()


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

    def __init__(
        self, size: int, *, nice: int = 0, memory_mb: int = 0, zygote: Zygote | None = None
    ) -> None:
        self._limiter = anyio.CapacityLimiter(size)
        self._nice = nice
        self._memory_mb = memory_mb
        self._zygote = zygote or shared_zygote()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._busy: set[_Worker] = set()  # acknowledged a call, not answered yet
        self._starting: set[asyncio.Future[_Worker]] = set()  # forks under way (_fork)
        self._closed = False

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` in a worker; its exceptions are re-raised here."""
        request = pickle.dumps((func, args), pickle.HIGHEST_PROTOCOL)
        async with self._limiter:
            for _ in range(_SPARE_ATTEMPTS):
                worker = await self._checkout()
                try:
                    worker.send(b"%d\n" % len(request) + request)
                    ack = await worker.readline()
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
                self._busy.add(worker)
                try:
                    return await self._answer(worker)  # type: ignore[no-any-return]
                finally:
                    self._busy.discard(worker)
            raise WorkerDied("no worker process could be started")

    async def _answer(self, worker: _Worker) -> Any:
        try:
            header = await worker.readline()
            tag, length = header.split(b" ")
            payload = await worker.reader.readexactly(int(length))
        except BaseException as exc:
            await self._discard(worker)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise WorkerDied(f"the worker process died during the call ({exc!r})") from exc
        self._idle.append(worker)
        result = pickle.loads(payload)
        if tag == b"EXC":
            raise result
        return result

    async def _checkout(self) -> _Worker:
        if self._closed:
            raise PoolClosed("the worker pool is closed")
        while self._idle:
            worker = self._idle.pop()
            if worker.alive:
                return worker
            await self._discard(worker)
        return await self._fork()

    async def _fork(self) -> _Worker:
        # The worker dies with its zygote, which dies with this process (see emulator.worker);
        # --memory-mb: what one job stage may add to its address space.
        argv = ["--nice", str(self._nice), "--memory-mb", str(self._memory_mb)]
        # The fork runs in a task of its own that this call only waits for: a worker once
        # forked is put in ``_all`` (or killed) even when the caller is cancelled meanwhile
        # (the emulator stopping while its workers warm); aclose() waits for such tasks.
        start = asyncio.ensure_future(self._start(argv))
        self._starting.add(start)
        start.add_done_callback(self._started)
        worker = await asyncio.shield(start)
        try:
            with anyio.fail_after(120):
                ready = await worker.readline()
            if ready != b"READY":
                raise WorkerDied(f"unexpected greeting from a worker: {ready!r}")
        except BaseException as exc:
            await self._discard(worker)
            if self._closed and isinstance(exc, Exception):  # aclose() stopped it starting
                raise PoolClosed("the worker pool is closed") from exc
            raise
        if self._closed:  # closed while it said READY
            await self._discard(worker)
            raise PoolClosed("the worker pool is closed")
        return worker

    async def _start(self, argv: list[str]) -> _Worker:
        pid, to_child, from_child = await anyio.to_thread.run_sync(self._zygote.fork, argv)
        try:
            worker = await _Worker.open(pid, to_child, from_child)
        except BaseException:  # (its pipes are closed with the file objects they became)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            raise
        self._all.add(worker)
        if self._closed:  # closed while it was forked: aclose() did not see it
            await self._discard(worker)
            raise PoolClosed("the worker pool is closed")
        return worker

    def _started(self, start: asyncio.Future[_Worker]) -> None:
        self._starting.discard(start)
        if not start.cancelled():
            start.exception()  # retrieved: its caller, if still there, gets it too

    async def _discard(self, worker: _Worker) -> None:
        self._all.discard(worker)
        worker.kill()

    async def warm(self, sources: tuple[str, ...], *, count: int) -> None:
        """Load ``sources`` into the zygote, then start ``count`` workers (forked with them)."""
        await anyio.to_thread.run_sync(self._zygote.warm, sources)
        # Each fork under one of the pool's places, as a call forks its worker: with calls
        # arriving while the pool warms, it never holds more than ``size`` workers.
        target = min(count, self.size)
        while len(self._all) < target:
            async with self._limiter:
                if self._closed or len(self._all) >= target:
                    break
                try:
                    self._idle.append(await self._fork())
                except PoolClosed:
                    break  # the emulator stopped while its workers warmed

    @property
    def size(self) -> int:
        """Calls that run at once, at most."""
        return int(self._limiter.total_tokens)

    @property
    def waiting(self) -> int:
        """Calls waiting for one of the ``size`` places (they wait in order)."""
        return int(self._limiter.statistics().tasks_waiting)

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._all if w.alive]

    @property
    def busy_pids(self) -> list[int]:
        """The workers running a call now (they acknowledged it and have not answered)."""
        return [w.pid for w in self._busy if w.alive]

    async def aclose(self) -> None:
        """Stop every worker (closing stdin lets idle ones exit; busy ones are killed)."""
        self._closed = True
        # A fork under way finds the pool closed when it ends, and kills its worker (bounded:
        # a stuck zygote must not hang the emulator's shutdown).
        if self._starting:
            _, stuck = await asyncio.wait(set(self._starting), timeout=_FORK_WAIT_S)
            if stuck:
                log.warning("%d worker fork(s) did not end; not waiting for them", len(stuck))
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
    """Local worker processes: up to ``lanes`` lane workers per backend, one QPU worker per
    backend.

    ``cpu_slots`` (0: no limit) bounds the lane calls that run at once, over all backends; the
    others wait in order. On a machine with fewer cores than lanes, more stages at once only
    share the cores: with five jobs pre-processing on two cores, the first is ready after
    about 2.5 of its pre-processing times, and the QPU idles until then (``benchmarks``
    batch-N: the start of every batch). With one slot per core it is ready after one, and
    the lane workers started are at most ``cpu_slots``.
    """

    kind = "process"

    def __init__(
        self, *, backends: int, lanes: int, memory_mb: int = 0, cpu_slots: int = 0
    ) -> None:
        self._lanes = lanes
        self._backends = backends
        size = lane_slots(lanes, backends, cpu_slots)
        self.lane_pool = WorkerPool(size=size, nice=LANE_NICENESS, memory_mb=memory_mb)
        self.qpu_pool = WorkerPool(size=backends, memory_mb=memory_mb)

    async def warm(self, sources: tuple[str, ...]) -> None:
        # One QPU worker per backend and one lane worker to start with; more lane workers are
        # forked on demand (milliseconds each).
        await self.qpu_pool.warm(sources, count=self._backends)
        await self.lane_pool.warm(sources, count=1)

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
            "cpu_slots": self.lane_pool.size,
            "lane_calls_waiting": self.lane_pool.waiting,
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
            cpu_slots=config.cpu_slots,  # 0: no bound (the cluster's CPUs are Ray's business)
        )
    return ProcessPlane(
        backends=len(served),
        lanes=config.lanes,
        memory_mb=config.worker_memory_mb,
        cpu_slots=config.cpu_slots or available_cpus(),
    )


def lane_slots(lanes: int, backends: int, cpu_slots: int) -> int:
    """Lane calls that may run at once on a plane: every backend's lanes, within ``cpu_slots``
    (0: no bound), at least one."""
    slots = max(1, lanes * backends)
    return min(slots, cpu_slots) if cpu_slots > 0 else slots


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


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
