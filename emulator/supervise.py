"""Background tasks under supervision: nothing the emulator starts may die in silence.

:class:`Supervisor` owns every task that is not a request handler or a job pipeline: the session
timekeeper, the writes of changes made outside a request (a session activated by a QPU grant),
and so on. A supervised task that raises is logged with its traceback; a *service* (a loop that
must always run, like the timekeeper) is restarted after a short pause, and if it keeps crashing
the supervisor calls ``on_fatal`` (the app stops the emulator) instead of limping on with TTLs
no longer enforced. :meth:`aclose` cancels and awaits everything it owns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

__all__ = ["Supervisor"]

log = logging.getLogger("emulator.supervise")

#: A service that crashes this many times in a row is fatal.
MAX_RESTARTS = 5


class Supervisor:
    def __init__(self, on_fatal: Callable[[BaseException], None] | None = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_fatal = on_fatal
        self._closed = False
        self.crashes = 0

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run a one-off task; if it raises, the error is logged (with what it was doing)."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def service(self, factory: Callable[[], Awaitable[None]], *, name: str) -> asyncio.Task[Any]:
        """Run ``factory()`` for as long as the supervisor lives, restarting it if it crashes."""
        return self.spawn(self._keep(factory, name), name=name)

    async def _keep(self, factory: Callable[[], Awaitable[None]], name: str) -> None:
        failures = 0
        while True:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.crashes += 1
                log.exception("%s crashed (%d in a row)", name, failures)
                if failures >= MAX_RESTARTS:
                    log.critical("%s keeps crashing; stopping the emulator", name)
                    if self._on_fatal is not None:
                        self._on_fatal(exc)
                    raise
                await asyncio.sleep(0.05 * failures)
                log.warning("%s restarted", name)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, asyncio.CancelledError):
            self.crashes += 1
            log.error("background task %s failed", task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
