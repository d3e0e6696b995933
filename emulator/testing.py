"""Run the emulator in a background thread, for tests and benchmarks.

``EmulatorThread`` serves the real app over loopback on a free port, on its own event loop, so
a test can drive it with the blocking official client, with aioruntime on another loop, or both::

    with EmulatorThread(Config(clock=ClockSpec.parse("manual"))) as emu:
        service = emu.official_service()
        ...
        emu.advance(61)                    # move the manual clock: TTLs expire, no sleeping
        stats = emu.statistics()

Everything that touches the server's objects goes through :meth:`EmulatorThread.call`, which
runs it on the server's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Future
from typing import Any, Self, TypeVar

from aiohttp import web

from aioruntime import protocol as p

from .api.keys import CLOCK, REQUEST_LOG, SCHEDULER, STORE
from .app import create_app
from .clock import ManualClock
from .config import Config
from .scheduler import Scheduler, Statistics
from .store import JobRecord, Store

__all__ = ["EmulatorProcess", "EmulatorThread"]

T = TypeVar("T")

_shared_lock = threading.Lock()
_shared_loop: asyncio.AbstractEventLoop | None = None


def _loop_in_thread() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="emulator-loop", daemon=True).start()
    return loop


def shared_loop() -> asyncio.AbstractEventLoop:
    """One background loop per process. Emulators started on it share anyio's worker
    processes (they belong to the loop), so the second emulator starts with warm workers."""
    global _shared_loop
    with _shared_lock:
        if _shared_loop is None:
            _shared_loop = _loop_in_thread()
        return _shared_loop


class _PointsClients:
    """What a client needs to reach a running emulator (shared by thread and process)."""

    # -- pointing clients at it --------------------------------------------------------------

    port: int
    api_key: str
    instance: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def runtime_url(self) -> str:
        return self.base_url + p.RUNTIME_PREFIXES[0]

    def client_env(self, *, experimental_url: bool = True) -> dict[str, str]:
        """Environment for the official client with no code changes (spec 5.2, recipe B)."""
        return {
            "QISKIT_IBM_TOKEN": self.api_key,
            "QISKIT_IBM_INSTANCE": self.instance,
            "QISKIT_IBM_URL": (
                self.base_url + p.RUNTIME_PREFIXES[1] if experimental_url else self.runtime_url
            ),
            "QISKIT_IBM_CHANNEL": "ibm_quantum_platform",
            "IAM_URL": self.base_url,
            "GLOBAL_SEARCH_URL": self.base_url,
            "GLOBAL_CATALOG_URL": self.base_url + p.CATALOG_PREFIX,
        }

    @contextlib.contextmanager
    def environment(self, extra: Mapping[str, str] | None = None) -> Iterator[None]:
        """Temporarily set :meth:`client_env` in ``os.environ``."""
        values = {**self.client_env(), **(extra or {})}
        saved = {k: os.environ.get(k) for k in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def official_service(self, *, env: Mapping[str, str] | None = None, **kwargs: Any) -> Any:
        """An unmodified ``QiskitRuntimeService`` pointed here (spec 5.1, recipe A)."""
        from qiskit_ibm_runtime import QiskitRuntimeService

        with self.environment(env):
            return QiskitRuntimeService(
                channel="ibm_quantum_platform",
                token=kwargs.pop("token", self.api_key),
                instance=kwargs.pop("instance", self.instance),
                url=self.runtime_url,
                url_resolver=lambda url, instance, private_endpoint=False, channel=None: url,
                **kwargs,
            )


class EmulatorThread(_PointsClients):
    """The emulator on a background event loop; ``own_loop=True`` gives it a private one."""

    def __init__(
        self, config: Config | None = None, *, start_timeout: float = 120.0, own_loop: bool = False
    ) -> None:
        self.config = config or Config(port=0)
        self._start_timeout = start_timeout
        self._own_loop = own_loop
        self._loop = _loop_in_thread() if own_loop else shared_loop()
        self._runner: web.AppRunner | None = None
        self._started = False
        self.app: web.Application | None = None
        self.port = 0
        self.api_key = self.config.api_keys[0].key
        self.instance = self.config.instances[0]

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> EmulatorThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._started = True
        try:
            self._submit(self._start()).result(self._start_timeout)
        except BaseException:
            self.stop()
            raise

    async def _start(self) -> None:
        self.app = create_app(self.config)
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        """Stop serving and clean up the app (idempotent)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            with contextlib.suppress(Exception):
                self._submit(runner.cleanup()).result(60)
        if self._own_loop and self._started:
            self._started = False
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # -- access to the server ----------------------------------------------------------------

    def call(self, fn: Callable[[], T], timeout: float = 60) -> T:
        """Run ``fn()`` on the server's loop and return its value."""

        async def call() -> T:
            return fn()

        return self._submit(call()).result(timeout)

    def run(self, fn: Callable[[], Awaitable[T]], timeout: float = 60) -> T:
        """Await ``fn()`` on the server's loop and return its value."""

        async def run() -> T:
            return await fn()

        return self._submit(run()).result(timeout)

    @property
    def scheduler(self) -> Scheduler:
        assert self.app is not None
        return self.app[SCHEDULER]

    @property
    def store(self) -> Store:
        assert self.app is not None
        return self.app[STORE]

    def statistics(self) -> Statistics:
        return self.call(self.scheduler.statistics)

    def advance(self, seconds: float) -> None:
        """Move a manual clock forward (and let the woken timers run)."""
        assert self.app is not None
        clock = self.app[CLOCK]
        if not isinstance(clock, ManualClock):
            raise TypeError("advance() needs the emulator to run with clock 'manual'")

        async def step() -> None:
            clock.advance(seconds)
            for _ in range(5):  # let woken timers and the dispatch that follows them run
                await asyncio.sleep(0)

        self.run(step)

    def until(self, predicate: Callable[[Scheduler], bool], timeout: float = 60) -> None:
        """Block until ``predicate(scheduler)`` holds on the server (re-checked as jobs move)."""

        async def wait() -> None:
            async with asyncio.timeout(timeout):
                await self.scheduler.until(lambda: predicate(self.scheduler))

        self.run(wait, timeout=timeout + 5)

    def wait_final(self, job_id: str, timeout: float = 120) -> str:
        """Block until the job is final (server-side event, no polling); returns its state."""

        async def wait() -> JobRecord | None:
            async with asyncio.timeout(timeout):
                return await self.store.wait_final(job_id)

        rec = self.run(wait, timeout=timeout + 5)
        if rec is None:
            raise KeyError(job_id)
        return rec.state

    @property
    def requests(self) -> list[dict[str, Any]]:
        assert self.app is not None
        return self.app[REQUEST_LOG]


class EmulatorProcess(_PointsClients):
    """``python -m emulator`` in a subprocess: its own interpreter, GIL and worker processes.

    ``args`` are extra command-line flags. Start blocks until the server prints that it listens
    (no polling); :meth:`stop` sends a signal and waits for the exit code.
    """

    def __init__(
        self,
        *args: str,
        port: int = 0,
        env: Mapping[str, str] | None = None,
        api_key: str | None = None,
        instance: str = p.DEFAULT_INSTANCE,
    ) -> None:
        self.args = args
        self.port = port
        #: Without ``api_key`` the key is read from the start banner (the first key it accepts).
        self._key_from_banner = api_key is None
        self.api_key = api_key or ""
        self.instance = instance
        self.env = env
        self.proc: Any = None
        self.admin_key = ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop(signal.SIGKILL)

    def start(self, timeout: float = 180) -> Self:
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "emulator", "--port", str(self.port), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(self.env or {})},
        )
        assert self.proc.stdout is not None
        timer = threading.Timer(timeout, self.proc.kill)  # a hung start fails, not hangs
        timer.start()
        try:
            for line in self.proc.stdout:
                if "listening on" in line:
                    self.port = int(line.rsplit(":", 1)[1])
                elif "export QISKIT_IBM_TOKEN=" in line and self._key_from_banner:
                    self.api_key = line.split("=", 1)[1].strip()
                elif "Admin API:" in line:
                    self.admin_key = line.rsplit("Bearer ", 1)[1].strip().strip("'")
                    break
            else:
                raise RuntimeError(f"the emulator exited with {self.proc.wait()}")
        finally:
            timer.cancel()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        self.proc.send_signal(sig)
        code: int = self.proc.wait(timeout=timeout)
        if self.proc.stdout:
            self.proc.stdout.close()
        return code

    @property
    def pid(self) -> int:
        return int(self.proc.pid)
