"""The worker plane on Ray: lanes and QPUs as actors, on this machine or on a cluster.

``--workers ray`` runs the emulator's CPU work as Ray actors; the aiohttp front end, the store
and the scheduler stay in the emulator's process, which is the Ray driver. Each served backend's
QPU is one actor that runs one call at a time (``max_concurrency=1``) and keeps its device's
target loaded; the classical lanes are a pool of actors, reused most recent first, at most
``lanes * backends`` of them (as :class:`~emulator.workers.ProcessPlane`). Actor resources come
from ``--ray-lane-resources`` and ``--ray-qpu-resources`` (:mod:`emulator.rayspec`); actors are
spread over the nodes (Ray's ``SPREAD`` strategy) unless resources pin them.

The process plane's guarantees hold here too:

* **Cancelling** the task awaiting a call kills its actor (``ray.kill``) and replaces it. Ray
  2.60 refuses ``ray.cancel(ref, force=True)`` for actor tasks ("not supported"), and a plain
  ``ray.cancel`` does not interrupt a running synchronous actor task, so killing the actor is
  the one way to stop the computation, as the process plane kills its worker.
* **A dead actor** (its process killed, its node gone, Ray's memory monitor) fails the call it
  was running with :class:`~emulator.workers.WorkerDied`, naming Ray's reason, and is replaced:
  QPU actors at once, lanes when fewer than ``lanes`` are left.
* **Idle deaths are heard at once.** Each actor also runs ``watch``, a call that never returns,
  in a concurrency group of its own (so it never shares the QPU's one slot); Ray fails it when
  the actor dies, which retires the actor before a job is handed to it. A call handed to an
  actor whose node died moments earlier, before Ray noticed, still fails like the calls that
  were running there: telling "not started" from "running" would cost an acknowledgement per
  call, some 2.5 ms of Ray round trip (the process plane's pipe gets it for free).

Ray is joined at the first use: ``--ray-address``/``RAY_ADDRESS``, otherwise a local instance is
started and stopped with the emulator; a process that already called ``ray.init`` (a test
session, a notebook) keeps its own connection and job ``runtime_env``. Otherwise actors run the
emulator's code shipped as ``py_modules`` (:func:`emulator.rayspec.code_runtime_env`): Ray
takes local directories only in the job's ``runtime_env``, not an actor's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ray
from ray.exceptions import RayError, RayTaskError

from . import worker
from .rayspec import Resources, code_runtime_env
from .workers import LANE_NICENESS, WorkerDied, lane_slots

__all__ = ["RayPlane"]

T = TypeVar("T")

log = logging.getLogger("emulator.rayplane")

#: Seconds between warnings while Ray cannot place the actors (no node has the resources).
_PLACEMENT_WARNING_S = 30.0
#: Actors a call may try when the ones it gets die before they start (as WorkerPool's).
_SPARE_ATTEMPTS = 4


class _NeverRan(Exception):
    """The call's actor died before it started: the call never ran."""


class _WorkerBody:
    """One lane or QPU worker: the body of :class:`~emulator.workers.WorkerPool`'s process."""

    def __init__(self, nice: int, memory_mb: int) -> None:
        """``nice``: the niceness to run at (the emulator's, plus ``LANE_NICENESS`` for a
        lane), as the process plane's workers do."""
        # Ray sets OMP_NUM_THREADS=1 in an actor that asked for no CPUs. Aer takes its threads
        # from OpenMP, and the process plane lets wide circuits use every core: without a
        # num_cpus of its own, an actor does the same; with one, Ray's value stands.
        assigned = ray.get_runtime_context().get_assigned_resources()  # type: ignore[no-untyped-call]
        if assigned.get("CPU") is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        self.nice = _set_niceness(nice)
        if memory_mb > 0:  # the same per-stage budget as ``python -m emulator.worker``
            worker._memory_budget = memory_mb * 2**20
            worker._start_aer_threads()

    def warm(self, sources: tuple[str, ...]) -> dict[str, Any]:
        """Load the devices (none: just say where this actor runs)."""
        if sources:
            worker.warm(sources)
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
            "pid": os.getpid(),
            "nice": self.nice,
        }

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        return func(*args)

    @ray.method(concurrency_group="watch")
    def watch(self) -> None:
        threading.Event().wait()  # returns never: Ray fails it when the actor dies


#: One call at a time in the default group; ``watch`` alone in its own. (Ray's stubs do not
#: know the concurrency options, hence Any.)
_WorkerActor: Any = ray.remote(  # type: ignore[call-overload]
    max_concurrency=1, concurrency_groups={"watch": 1}, max_restarts=0
)(_WorkerBody)


@dataclass(eq=False, slots=True)
class _Actor:
    handle: Any
    role: str  # "lane" or the backend's name
    where: dict[str, Any] = field(default_factory=dict)
    alive: bool = True
    ready: asyncio.Future[Any] | None = None


class RayPlane:
    """Lane and QPU workers as Ray actors (see the module docstring)."""

    kind = "ray"

    def __init__(
        self,
        *,
        backends: Mapping[str, str],
        lanes: int,
        memory_mb: int = 0,
        address: str | None = None,
        lane_resources: Resources | None = None,
        qpu_resources: Mapping[str, Resources] | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        cpu_slots: int = 0,
    ) -> None:
        """``backends``: served backend name → device source (``emulator.backends``).
        ``cpu_slots`` (0: no bound) bounds the lane calls at once, and so the lane actors, as
        on the process plane: for a small cluster, where each actor's imports cost seconds."""
        self._backends = dict(backends)
        slots = lane_slots(lanes, len(self._backends), cpu_slots)
        self._lanes = min(lanes, slots)  # lane actors started by warm() and kept
        self._memory_mb = memory_mb
        self._address = address
        self._lane_resources = lane_resources or Resources()
        self._qpu_resources = dict(qpu_resources or {})
        self._runtime_env = code_runtime_env(runtime_env)
        self._sources: tuple[str, ...] = tuple(sorted(set(self._backends.values())))
        self._slots = asyncio.Semaphore(slots)
        self._slot_count = slots
        self._idle: list[_Actor] = []
        self._lane_actors: set[_Actor] = set()
        self._qpus: dict[str, _Actor] = {}
        self._connected = False
        self._connect_lock = asyncio.Lock()
        self._owns_ray = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._warmed = False  # before warm(), actors load no device (tests of the plane)
        self._changed = asyncio.Event()
        self.replaced = 0
        #: Calls handed to an actor and not answered yet.
        self.calls_in_flight = 0
        self.cluster = ""

    # -- lifecycle ---------------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._connected:
            return
        if self._closed:
            raise RuntimeError("the Ray worker plane is closed")
        async with self._connect_lock:
            if not self._connected:
                await asyncio.wrap_future(self._start_driver_thread())
                self._connected = True

    def _start_driver_thread(self) -> concurrent.futures.Future[None]:
        """Run ``ray.init`` (seconds: never on the loop) and, at :meth:`aclose`,
        ``ray.shutdown`` on a thread of their own that lives as long as the connection. Ray
        ties a local instance's processes to the thread that started them (Linux's
        ``PR_SET_PDEATHSIG`` fires when that *thread* ends): started from a pool thread, the
        instance would die with it, and with the emulator's process it does die, as it should.
        """
        started: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                self._init()
            except BaseException as exc:
                started.set_exception(exc)
                return
            started.set_result(None)
            self._stop.wait()
            if self._owns_ray:
                ray.shutdown()

        self._thread = threading.Thread(target=run, name="ray-driver", daemon=True)
        self._thread.start()
        return started

    def _init(self) -> None:
        if not ray.is_initialized():
            options: dict[str, Any] = {"address": self._address}
            if self._address is None:
                _loopback_only()
                options = {"address": "local", "_node_ip_address": "127.0.0.1"}
            log.info("joining Ray at %s", options["address"])
            if self._address is None:  # our own instance: its workers at our priority
                options["_system_config"] = {"worker_niceness": 0}
            ray.init(
                **options,
                runtime_env=self._runtime_env,
                include_dashboard=False,
                configure_logging=False,
                namespace="aioruntime-emulator",
            )
            self._owns_ray = True
        context = ray.get_runtime_context()
        self.cluster = str(getattr(context, "gcs_address", "") or self._address or "local")

    async def warm(self, sources: tuple[str, ...]) -> None:
        """Join Ray, start one QPU actor per backend and ``lanes`` lane actors, and wait until
        each has its devices loaded (``worker.warm``)."""
        await self._connect()
        self._warmed = True
        for backend in self._backends:
            self._qpu_actor(backend)
        while len(self._lane_actors) < self._lanes:
            self._idle.append(self._spawn_lane())
        actors = [*self._qpus.values(), *self._lane_actors]
        pending = {a.ready for a in actors if a.ready is not None}
        while pending:
            _, pending = await asyncio.wait(pending, timeout=_PLACEMENT_WARNING_S)
            if pending:
                log.warning(
                    "%d Ray actors are not ready yet (no node with their resources free, or "
                    "slow imports); still waiting",
                    len(pending),
                )
        for actor in actors:  # a warm-up that failed names its cause now, not at a job
            failed = actor.ready is not None and actor.ready.exception()
            if failed:
                raise WorkerDied(f"a Ray {actor.role} actor failed to start: {_reason(failed)}")

    async def aclose(self) -> None:
        """Kill every actor; stop the local Ray instance if this plane started it."""
        self._closed = True
        actors = [*self._lane_actors, *self._qpus.values()]
        self._idle.clear()
        for actor in actors:
            self._retire(actor, "the emulator stopped", kill=True)
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    # -- calls -------------------------------------------------------------------------------

    async def lane(self, func: Callable[..., T], *args: Any) -> T:
        await self._connect()
        async with self._slots:
            return await self._call(self._checkout, func, args)

    async def qpu(self, backend: str, func: Callable[..., T], *args: Any) -> T:
        await self._connect()
        return await self._call(lambda: self._qpu_actor(backend), func, args)

    async def _call(
        self, pick: Callable[[], _Actor], func: Callable[..., T], args: tuple[Any, ...]
    ) -> T:
        """``func(*args)`` on the actor ``pick()`` gives. A call that was still queued behind
        its actor's start when the actor died never ran (the process plane's "no ACK"): it
        goes to another actor. One that may have run fails with WorkerDied."""
        reason = "no Ray actor could be started"
        for _ in range(_SPARE_ATTEMPTS):
            actor = pick()
            try:
                return await self._call_on(actor, func, args)
            except _NeverRan as exc:
                reason = str(exc)
                log.warning("a call went to a Ray actor that never started (%s); retrying", exc)
        raise WorkerDied(f"no Ray actor could take the call: {reason}")

    async def _call_on(self, actor: _Actor, func: Callable[..., T], args: tuple[Any, ...]) -> T:
        # A call is sent only once its actor's warm-up has answered. Queueing it behind the
        # warm-up instead (Ray runs one caller's calls in order) saves a round trip on an
        # actor's first call, but then a death cannot be placed: the warm-up's answer can
        # still be on its way when the call has started (the actor's reply goes out on Ray's
        # I/O thread while the next task runs), so the warm-up failing does not prove that
        # the call never ran; a call retried on that guess ran twice (it hung a test).
        ready = actor.ready
        if ready is not None:
            if not ready.done():
                await asyncio.wait([ready])  # a caller's cancel leaves the start alone
            error = None if ready.cancelled() else ready.exception()
            if ready.cancelled() or error is not None:
                reason = "its start was cancelled" if error is None else _reason(error)
                self._retire(actor, reason, kill=True)
                raise _NeverRan(reason)  # nothing was sent: another actor takes the call
        ref = actor.handle.call.remote(func, *args)
        self.calls_in_flight += 1
        self._changed.set()
        try:
            result: T = await ref
        except RayTaskError as exc:  # the function raised: re-raise what it raised
            self._release(actor)
            cause = exc.cause
            raise cause if isinstance(cause, Exception) else RuntimeError(str(exc)) from None
        except RayError as exc:  # the actor, its process or its node is gone
            reason = _reason(exc)
            self._retire(actor, reason)
            raise WorkerDied(reason) from None
        except BaseException:  # cancelled (a job cancel, the simulation budget): stop it
            self._retire(actor, "its call was cancelled", kill=True)
            raise
        finally:
            self.calls_in_flight -= 1
            self._changed.set()
        self._release(actor)
        return result

    def _release(self, actor: _Actor) -> None:
        if actor.alive and actor.role == "lane" and not self._closed:
            self._idle.append(actor)

    # -- actors ------------------------------------------------------------------------------

    def _checkout(self) -> _Actor:
        while self._idle:
            actor = self._idle.pop()
            if actor.alive:
                return actor
        return self._spawn_lane()

    def _qpu_actor(self, backend: str) -> _Actor:
        actor = self._qpus.get(backend)
        if actor is None or not actor.alive:
            source = self._backends[backend]
            resources = self._qpu_resources.get(backend, self._qpu_resources.get("", Resources()))
            actor = self._spawn(backend, (source,) if self._warmed else (), resources, nice=0)
            self._qpus[backend] = actor
        return actor

    def _spawn_lane(self) -> _Actor:
        sources = self._sources if self._warmed else ()
        actor = self._spawn("lane", sources, self._lane_resources, nice=LANE_NICENESS)
        self._lane_actors.add(actor)
        return actor

    def _spawn(
        self, role: str, sources: tuple[str, ...], resources: Resources, *, nice: int
    ) -> _Actor:
        if self._closed:
            raise RuntimeError("the Ray worker plane is closed")
        options: dict[str, Any] = {
            "scheduling_strategy": "SPREAD",
            **resources.options(),
        }
        niceness = os.getpriority(os.PRIO_PROCESS, 0) + nice  # as the process plane's workers
        handle = _WorkerActor.options(**options).remote(niceness, self._memory_mb)
        actor = _Actor(handle, role)
        # The warm-up reports where the actor runs; calls wait for it (see _call_on).
        actor.ready = asyncio.wrap_future(handle.warm.remote(sources).future())
        actor.ready.add_done_callback(lambda f: self._on_ready(actor, f))
        watch = asyncio.wrap_future(handle.watch.remote().future())
        watch.add_done_callback(lambda f: self._on_watch(actor, f))
        self._changed.set()
        return actor

    def _on_ready(self, actor: _Actor, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            actor.where = fut.result()
            self._changed.set()

    def _on_watch(self, actor: _Actor, fut: asyncio.Future[Any]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        self._retire(actor, _reason(exc) if exc is not None else "its watch ended")

    def _retire(self, actor: _Actor, reason: str, *, kill: bool = False) -> None:
        """Forget a dead (or doomed) actor and start its replacement; idempotent."""
        if not actor.alive:
            return
        actor.alive = False
        self._changed.set()
        if kill:
            try:
                ray.kill(actor.handle, no_restart=True)
            except Exception as exc:  # Ray already shut down: the actor went with it
                log.debug("could not kill a Ray actor: %r", exc)
        if actor.role == "lane":
            self._lane_actors.discard(actor)
        elif self._qpus.get(actor.role) is actor:
            del self._qpus[actor.role]
        if self._closed:
            return
        where = f"pid {actor.where['pid']} on {actor.where['ip']}" if actor.where else "starting"
        log.warning("Ray %s actor (%s) lost: %s", actor.role, where, reason)
        if not actor.where:
            return  # it never got ready: replaced when next needed, not in a loop of failures
        self.replaced += 1
        if actor.role != "lane":
            self._qpu_actor(actor.role)
        elif len(self._lane_actors) < self._lanes:
            self._idle.append(self._spawn_lane())

    # -- observation -------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """Actors alive and where they run (cheap: no call to Ray)."""
        actors = [*self._lane_actors, *(a for a in self._qpus.values() if a.alive)]
        nodes: dict[str, dict[str, Any]] = {}
        for a in actors:
            node = nodes.setdefault(
                a.where.get("node_id", "starting"),
                {"ip": a.where.get("ip"), "lane_workers": 0, "qpu_workers": []},
            )
            if a.role == "lane":
                node["lane_workers"] += 1
            else:
                node["qpu_workers"].append(a.role)
        lanes = len(self._lane_actors)
        return {
            "kind": self.kind,
            "alive": len(actors),
            "lane_workers": lanes,
            "qpu_workers": len(actors) - lanes,
            "cpu_slots": self._slot_count,
            "where": f"Ray actors on {len(nodes)} node(s) of {self.cluster or 'Ray'}",
            "cluster": self.cluster,
            "nodes": [{"node_id": k, **v} for k, v in sorted(nodes.items())],
            "actors": [{"role": a.role, **a.where} for a in actors],
            "replaced": self.replaced,
            "calls_in_flight": self.calls_in_flight,
        }

    async def until(self, predicate: Callable[[RayPlane], bool]) -> None:
        """Wait until ``predicate(self)`` holds, re-checked when an actor starts, gets ready or
        dies, or a call is handed over or answered (no polling); bound it with
        ``asyncio.timeout``."""
        while not predicate(self):
            self._changed.clear()
            await self._changed.wait()


def _set_niceness(target: int) -> int:
    """Run this process at niceness ``target``, if allowed; returns the niceness it runs at.

    Ray starts its workers at its ``worker_niceness``, 15 by default: under everything else on
    the machine. With two busy processes at niceness 0 on the 2-core test machine, the actors
    took minutes to import qiskit and the Ray tests timed out, while the process plane (QPU
    worker at the emulator's niceness, lanes 5 above) kept going. Raising a process's priority
    needs ``CAP_SYS_NICE`` (or an ``RLIMIT_NICE``): without it the actor stays where Ray put it
    (the emulator's own local Ray instance starts its workers at 0 instead)."""
    if os.getpriority(os.PRIO_PROCESS, 0) != target:
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, target)
    return os.getpriority(os.PRIO_PROCESS, 0)


def _loopback_only() -> None:
    """Make the local Ray instance listen on loopback only, as the emulator does by default.

    Ray 2.60 binds a local instance's servers to every interface whatever ``_node_ip_address``
    says, unless told the machine is a cluster of one (its switch for Windows and macOS, read at
    import, hence the constant too); its worker processes inherit the variable."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


#: The fields of Ray's actor error that identify it rather than say what happened.
_ID_FIELDS = ("class_name:", "actor_id:", "pid:", "name:", "namespace:", "ip:")


def _reason(exc: BaseException) -> str:
    """Ray's account of a lost call (its sentences, not the actor's ids), for the job's
    failure reason and the log."""
    lines = [line.strip() for line in str(exc).splitlines()]
    text = " ".join(line for line in lines if line and not line.startswith(_ID_FIELDS))
    return f"{type(exc).__name__}: {text}"[:500]
