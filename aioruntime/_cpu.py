"""``CpuPool``: where the client's CPU-bound work runs, in parallel and off the event loop.

The executor primitives do on the client what the legacy programs did on the server: the
official ``prepare`` (samplomatic boxing and ``build``, ``qiskit_mitigation`` tasks, dynamical
decoupling), the params encoding, and the result decoders with their post-processors (TREX,
ZNE, PEC). That is mostly pure-Python work that holds the GIL. Measured on this project's
shared 2-core machine (load average about 7 from other work; best of six rounds of 16 official
executor Estimator ``prepare`` + encodings of a 6-qubit ``ibm_fez`` PUB, about 0.12 s of CPU
each): one thread 8.4 per second, two threads 7.1 (no gain: one runs at a time), one worker
process 7.9, two worker processes 13.4 (1.7 times). Threads would keep the loop responsive but
serialize every ``run()`` behind the GIL. So by default (``cpu_pool="process"``) the work runs
in worker processes, one call per process at a time, ``cpu_workers`` at once (default: the
cores, at most 4): N concurrent ``run()`` calls prepare on that many cores.

Workers are ``python -m aioruntime._cpu_worker`` children with the parent's ``sys.path``,
started on first use (a fresh interpreter: the caller's ``__main__`` is never re-run, unlike
``multiprocessing``'s spawn and forkserver, which break scripts that build circuits at top
level). Each imports the official client once (a few seconds) and is reused. The pipe
protocol is the emulator's (``emulator/workers.py``): ``<length>\\n<pickle of (fn, args)>``,
answered ``ACK``, then ``OK``/``EXC <length>`` and a pickle. Three more rules for a client:

* warnings the call raised in the worker are raised again in the caller (the official
  post-processors warn, e.g. about ZNE fits);
* a call that does not pickle, or that the worker cannot load (a class defined in the
  caller's ``__main__``), runs in a thread instead, and is counted (``thread_fallbacks``);
* pickling the arguments and unpickling the result happen in a thread, not on the loop.

Cancelling the caller kills its worker (the computation stops; the next call starts another).
A worker that dies during a call fails that call with :class:`WorkerDiedError`.
``cpu_pool="thread"`` runs the same calls in threads instead (no process start-up; no
parallelism for GIL-bound work).
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from .errors import WorkerDiedError

__all__ = ["CpuKind", "CpuPool", "CpuStatistics"]

T = TypeVar("T")

log = logging.getLogger("aioruntime.cpu")

CpuKind = Literal["process", "thread"]

#: How long a new worker may take to say READY (its interpreter start; imports come later).
_START_TIMEOUT_S = 120.0
_DEAD = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.DelimiterNotFound,
    OSError,
)


@dataclass(frozen=True, slots=True)
class CpuStatistics:
    """A snapshot of a :class:`CpuPool` (``service.statistics().cpu``)."""

    kind: str
    #: Most calls in progress at once.
    size: int
    #: Worker processes alive (0 for threads).
    workers: int
    #: Calls in progress now, and the most that were at once since the service opened.
    running: int
    peak_running: int
    #: Calls started; of those, calls that returned a value (not raised, not cancelled).
    calls: int
    completed: int
    #: Calls a worker could not load, run in a thread instead.
    thread_fallbacks: int


@dataclass(eq=False, slots=True)
class _Worker:
    process: Process
    stdout: BufferedByteReceiveStream

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


class _CallNotLoadable(Exception):
    """The worker could not unpickle the call (sent back in place of a result)."""


class CpuPool:
    """Runs module-level functions ``size`` at a time, in worker processes or threads."""

    def __init__(self, kind: CpuKind, size: int) -> None:
        if kind not in ("process", "thread"):
            raise ValueError(f"cpu_pool must be 'process' or 'thread', got {kind!r}")
        self.kind: CpuKind = kind
        self.size = max(1, size)
        self._limiter = anyio.CapacityLimiter(self.size)
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._closed = False
        self._running = self._peak = self._calls = self._completed = self._fallbacks = 0

    def statistics(self) -> CpuStatistics:
        return CpuStatistics(
            kind=self.kind,
            size=self.size,
            workers=sum(w.alive for w in self._all),
            running=self._running,
            peak_running=self._peak,
            calls=self._calls,
            completed=self._completed,
            thread_fallbacks=self._fallbacks,
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker; its exceptions (and warnings) are raised here. Raises
        :class:`WorkerDiedError` when the worker dies during the call."""
        if self._closed:
            raise RuntimeError("the CPU pool is closed")
        async with self._limiter:
            self._calls += 1
            self._running += 1
            self._peak = max(self._peak, self._running)
            try:
                if self.kind == "thread":
                    result = await anyio.to_thread.run_sync(fn, *args)
                else:
                    result = await self._in_process(fn, args)
            finally:
                self._running -= 1
            self._completed += 1
            return result

    async def _in_process(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            request = await anyio.to_thread.run_sync(_dumps, (fn, args))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            return await self._in_thread(fn, args, f"its arguments do not pickle ({exc!r})")
        worker = await self._checkout()
        try:
            await worker.process.stdin.send(b"%d\n" % len(request) + request)  # type: ignore[union-attr]
            if await worker.stdout.receive_until(b"\n", 16) != b"ACK":
                raise WorkerDiedError("a client worker process did not acknowledge its call")
            tag, length = (await worker.stdout.receive_until(b"\n", 64)).split(b" ")
            payload = await worker.stdout.receive_exactly(int(length))
        except BaseException as exc:
            await self._discard(worker)  # cancelled or dead: the computation stops here
            if isinstance(exc, _DEAD):
                raise WorkerDiedError(
                    f"A client worker process died while it ran {fn.__qualname__} ({exc!r})."
                ) from exc
            raise
        self._idle.append(worker)
        value, caught = await anyio.to_thread.run_sync(pickle.loads, payload)
        for message, category in caught:
            warnings.warn(message, category, stacklevel=3)
        if tag == b"EXC":
            if isinstance(value, _CallNotLoadable):
                return await self._in_thread(fn, args, f"the worker cannot load it ({value})")
            raise value
        return value  # type: ignore[no-any-return]

    async def _in_thread(self, fn: Callable[..., T], args: tuple[Any, ...], why: str) -> T:
        log.debug("running %s in a thread: %s", fn.__qualname__, why)
        self._fallbacks += 1
        return await anyio.to_thread.run_sync(fn, *args)

    async def _checkout(self) -> _Worker:
        while self._idle:
            worker = self._idle.pop()
            if worker.alive:
                return worker
            await self._discard(worker)
        path = [p or os.getcwd() for p in sys.path]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(path))}
        process = await anyio.open_process(
            [sys.executable, "-u", "-m", "aioruntime._cpu_worker", "--parent", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        worker = _Worker(process, BufferedByteReceiveStream(process.stdout))  # type: ignore[arg-type]
        self._all.add(worker)
        try:
            with anyio.fail_after(_START_TIMEOUT_S):
                ready = await worker.stdout.receive_until(b"\n", 16)
            if ready != b"READY":
                raise WorkerDiedError(f"a client worker process greeted with {ready!r}")
        except BaseException as exc:
            await self._discard(worker)
            if isinstance(exc, _DEAD):
                raise WorkerDiedError(f"a client worker process did not start ({exc!r})") from exc
            raise
        return worker

    async def _discard(self, worker: _Worker) -> None:
        self._all.discard(worker)
        with anyio.CancelScope(shield=True):
            if worker.alive:
                worker.process.kill()
            await worker.process.aclose()

    async def aclose(self) -> None:
        """Stop every worker process (idle or busy). Idempotent."""
        self._closed = True
        workers, self._idle = list(self._all), []
        for worker in workers:
            await self._discard(worker)


def _dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)


def serve() -> None:
    """The worker's end (``python -m aioruntime._cpu_worker``): answer calls until stdin
    closes. Each answer is ``(value, [(warning message, category), ...])``."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    out.write(b"READY\n")
    out.flush()
    while header := inp.readline():
        request = inp.read(int(header))
        out.write(b"ACK\n")
        out.flush()
        tag: bytes = b"OK"
        value: Any = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fn, args = pickle.loads(request)
            except Exception as exc:
                tag, value = b"EXC", _CallNotLoadable(repr(exc))
            else:
                try:
                    value = fn(*args)
                except Exception as exc:
                    tag, value = b"EXC", exc
        answer = (value, [(str(w.message), w.category) for w in caught])
        try:
            payload = _dumps(answer)
        except Exception as exc:  # an unpicklable result or exception: say so, stay alive
            tag, payload = b"EXC", _dumps((RuntimeError(f"unpicklable answer: {exc!r}"), []))
        out.write(b"%s %d\n" % (tag, len(payload)))
        out.write(payload)
        out.flush()
