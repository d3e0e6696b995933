"""``ClientContext``: all a handle may use of the service it came from.

Backends, jobs, sessions and primitives each hold one :class:`ClientContext`, never the
:class:`~aioruntime.AsyncRuntimeService` itself. It is deliberately small:

* ``config``: the frozen :class:`~aioruntime._config.ClientConfig`;
* ``api``: the :class:`~aioruntime._http.ApiClient` (headers, token, retries, errors) over the
  service's transport;
* ``waits``: the shared, bounded :class:`~aioruntime._wait.JobWaits`;
* :meth:`run_sync` / :meth:`decode`: short CPU-bound work (codec, Target building) in worker
  threads, at most a few at once; :meth:`run_small` and :meth:`decode` do *small* work (a
  trivial job's encoding, a small result) on the loop itself within an :class:`InlineBudget`;
* :meth:`run_cpu`: the executor primitives' heavy CPU work (preparation, post-processing) in the
  :class:`~aioruntime._cpu.CpuPool`: worker processes, started on first use (see ``_cpu.py``
  for why not threads);
* :meth:`spawn` / :meth:`cleanup`: background tasks the service waits for when it closes, and
  bounded clean-up requests that survive the caller's cancellation;
* the lifecycle (:class:`ServiceState`, :meth:`require_open`), since all of the above stop
  together.

The service is the public facade over it (backends, jobs, usage). Dependencies run one way:
this module imports nothing from the handles or the service, and the handles import nothing
from ``service.py`` at run time (``backend.py`` and ``session.py`` name the service type only
to annotate the official ``.service`` properties).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from . import protocol as p
from ._config import ClientConfig
from ._cpu import CpuPool, CpuStatistics
from ._http import ApiClient
from ._tasks import _retrieve
from ._transport import AsyncTransport
from ._wait import JobWaits
from .errors import ServiceClosedError

__all__ = [
    "CLEANUP_TIMEOUT_S",
    "INLINE_DECODE_BYTES",
    "ClientContext",
    "InlineBudget",
    "ServiceState",
]

log = logging.getLogger("aioruntime.service")

T = TypeVar("T")

#: Longest a clean-up request (session close on exit, …) may delay the caller.
CLEANUP_TIMEOUT_S = 15.0


#: Bodies up to this size are decoded on the loop when the :class:`InlineBudget` allows (a
#: trivial Sampler result is about 2 kB and decodes in about 0.2 ms).
INLINE_DECODE_BYTES = 16 * 1024


class InlineBudget:
    """How much small codec work the event loop may do itself: at most ``share_s`` seconds in
    any ``window_s`` window; past it, work goes to the worker threads as big work does.

    Why: a thread hop costs more than the work it carries when the work is small. Handing a
    0.2 ms decode to a thread wakes the thread (a futex), hands it the GIL, and wakes the loop
    again through its self-pipe: in a 1000-job fan-out those two wake-ups were 28% of the
    client's samples (py-spy), more than the encoding and decoding themselves. The budget keeps
    the loop responsive whatever the load: a burst of a thousand submissions inlines a few and
    sends the rest to threads, while jobs arriving one at a time are all inlined.
    """

    def __init__(self, window_s: float = 0.010, share_s: float = 0.003) -> None:
        self.window_s = window_s
        self.share_s = share_s
        self._start = -window_s
        self._used = 0.0
        self.inlined = 0
        self.deferred = 0

    def allows(self) -> bool:
        now = time.perf_counter()
        if now - self._start >= self.window_s:
            self._start, self._used = now, 0.0
        if self._used < self.share_s:
            return True
        self.deferred += 1
        return False

    def charge(self, seconds: float, *, done: bool = True) -> None:
        """Count ``seconds`` of the loop's time against the window (and the work as inlined,
        if it was ``done`` there)."""
        self._used += seconds
        self.inlined += done


class ServiceState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class ClientContext:
    """What the handles of one service share (see the module docstring).

    ``UNOPENED ──open()──► OPEN ──aclose()──► CLOSED``; a closed context cannot reopen.
    """

    def __init__(self, config: ClientConfig, transport: AsyncTransport | None = None) -> None:
        self.config = config
        self.api = ApiClient(config, transport)
        self.waits = JobWaits(self.api, config)
        self._state = ServiceState.UNOPENED
        self._background: set[asyncio.Task[Any]] = set()
        self._codec_limiter: anyio.CapacityLimiter | None = None
        self.inline = InlineBudget()
        workers = config.cpu_workers or max(1, min(4, os.cpu_count() or 1))
        self.cpu = CpuPool(config.cpu_pool, workers)

    @property
    def state(self) -> ServiceState:
        return self._state

    @property
    def instance(self) -> str:
        return self.config.instance

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Idempotent while open; raises :class:`ServiceClosedError` once closed."""
        if self._state is ServiceState.OPEN:
            return
        if self._state is ServiceState.CLOSED:
            raise ServiceClosedError(
                "This AsyncRuntimeService was closed and cannot be reopened; create a new one."
            )
        self._codec_limiter = anyio.CapacityLimiter(max(2, min(4, os.cpu_count() or 2)))
        await self.api.open()
        await self.waits.open()
        self._state = ServiceState.OPEN

    async def aclose(self) -> None:
        """Stop all waiters (jobs keep running on the server), give background clean-ups up to
        ``CLEANUP_TIMEOUT_S`` (then cancel them) and close the transport. Idempotent."""
        if self._state is not ServiceState.OPEN:
            self._state = ServiceState.CLOSED
            return
        self._state = ServiceState.CLOSED
        try:
            await self.waits.aclose()
            if self._background:
                _, pending = await asyncio.wait(set(self._background), timeout=CLEANUP_TIMEOUT_S)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending)
        finally:
            try:
                await self.cpu.aclose()
            finally:
                await self.api.aclose()

    def require_open(self) -> None:
        """Raise :class:`ServiceClosedError`, with what to do, unless open."""
        if self._state is ServiceState.UNOPENED:
            raise ServiceClosedError(
                "The AsyncRuntimeService is not open yet: use "
                "`async with AsyncRuntimeService(...) as service:` or `await service.open()`."
            )
        if self._state is ServiceState.CLOSED:
            raise ServiceClosedError("The AsyncRuntimeService has been closed.")

    # -- CPU-bound work ----------------------------------------------------------------------

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread, off the event loop (a few at once). Cancelling the
        caller abandons the result; the thread finishes its call."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._codec_limiter)

    async def run_small(self, small: bool, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the loop when the caller says the work is ``small`` and the
        :class:`InlineBudget` allows it, else as :meth:`run_sync` does."""
        if small and self.inline.allows():
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.inline.charge(time.perf_counter() - start)
        return await self.run_sync(fn, *args)

    async def decode(self, body: bytes | str) -> Any:
        """``protocol.loads`` (the official RuntimeDecoder): a small body on the loop (see
        :class:`InlineBudget`) unless a thread is decoding (the decoder's lock is never waited
        for on the loop), anything else in a worker thread."""
        if len(body) <= INLINE_DECODE_BYTES and self.inline.allows():
            start = time.perf_counter()
            done, value = p.loads_nowait(body)
            self.inline.charge(time.perf_counter() - start, done=done)
            if done:
                return value
        return await self.run_sync(p.loads, body)

    async def run_cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (a module-level function) in the CPU pool: in parallel with other calls,
        never on the loop. Cancelling the caller stops the computation. Raises what ``fn``
        raises, or :class:`~aioruntime.errors.WorkerDiedError`."""
        self.require_open()
        return await self.cpu.run(fn, *args)

    def cpu_statistics(self) -> CpuStatistics:
        return self.cpu.statistics()

    # -- background tasks --------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task :meth:`aclose` waits for (bounded); its exception never goes unretrieved."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_retrieve)
        return task

    async def cleanup(self, coro: Coroutine[Any, Any, Any], *, what: str, suppress: bool) -> None:
        """Run a clean-up request to completion even while the caller is being cancelled, for at
        most ``CLEANUP_TIMEOUT_S``. Cancellation of the caller is re-raised (the request goes on
        in the background until :meth:`aclose`). With ``suppress``, failures are logged instead
        of raised (used when another exception is already propagating)."""
        task = self.spawn(coro)
        timeout = asyncio.timeout(CLEANUP_TIMEOUT_S)
        try:
            async with timeout:
                await asyncio.shield(task)
        except TimeoutError:
            if not timeout.expired():
                if suppress:
                    log.warning("%s failed", what, exc_info=True)
                    return
                raise
            task.cancel()
            log.warning("%s did not finish within %s s; abandoned", what, CLEANUP_TIMEOUT_S)
            if not suppress:
                raise
        except Exception:
            if not suppress:
                raise
            log.warning("%s failed", what, exc_info=True)
