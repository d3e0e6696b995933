"""The functions the scheduler runs on the worker plane, and ``python -m emulator.worker``.

Workers are started as ``python -m emulator.worker`` by :class:`emulator.workers.WorkerPool`
(the pipe protocol, both ends, lives in :mod:`emulator.workers`).

A worker never outlives the emulator that started it (``--parent``): on Linux the kernel kills
it when its parent dies (``PR_SET_PDEATHSIG``), and everywhere a watchdog thread exits at once
when its stdin pipe hangs up or its parent changes. Otherwise a worker in the middle of a long
simulation would keep computing after a ``SIGKILL`` of the emulator, and run alongside the same
job re-queued by the next start.

Each stage of a job may grow the worker's address space by at most ``--memory-mb``
(``RLIMIT_AS``, Linux): beyond that, allocations fail, and the job fails with a reason that
names the limit instead of the host running out of memory.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import io
import math
import os
import pickle
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime

    from aioruntime.protocol import CircuitMemo

    from .classical import PreparedJob, Sampled
    from .simulation import SimulationSettings
    from .timing import TimingParams

__all__ = [
    "Opaque",
    "OpaqueJob",
    "Planned",
    "Prepared",
    "Whole",
    "estimate",
    "main",
    "postprocess",
    "preprocess",
    "run_whole",
    "sample",
    "warm",
]

#: Aer's default ``statevector_parallel_threshold``.
_PARALLEL_QUBITS = 14

#: Bytes one stage of a job may add to this worker's address space (0: no limit; ``main``).
_memory_budget = 0


@dataclass(frozen=True, slots=True)
class Opaque:
    """A stage's output that only another worker opens (sampled bits; a prepared job is an
    :class:`OpaqueJob`): pickled here once and carried by the scheduler as bytes. Unpickling a
    prepared job in the server rebuilt its circuits there (about 2 ms of the event loop's time
    per job, and qiskit imported in the server) only to pickle them again for the next stage."""

    data: bytes

    @classmethod
    def wrap(cls, obj: Any) -> Opaque:
        return cls(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))

    def open(self) -> Any:
        return pickle.loads(self.data)


@dataclass(frozen=True, slots=True)
class OpaqueJob:
    """A prepared job (:class:`emulator.classical.PreparedJob`) pickled in two parts for the
    stages after pre-processing: its circuits, which the QPU samples, and the rest. Post-
    processing opens only the rest: it reads the plans, not the circuits, and unpickling the
    circuits was most of the cost of opening a job there (0.12 of a trivial ``ibm_fez`` job's
    0.16 ms)."""

    rest: bytes
    circuits: bytes

    @classmethod
    def wrap(cls, job: PreparedJob) -> OpaqueJob:
        rest = pickle.dumps(replace(job, sampler_pubs=[]), pickle.HIGHEST_PROTOCOL)
        out = io.BytesIO()
        _pub_pickler()(out, pickle.HIGHEST_PROTOCOL).dump(job.sampler_pubs)
        return cls(rest, out.getvalue())

    def open(self) -> PreparedJob:
        """The whole job."""
        job: PreparedJob = pickle.loads(self.rest)
        return replace(job, sampler_pubs=pickle.loads(self.circuits))

    def open_plans(self) -> PreparedJob:
        """The job without its circuits (``sampler_pubs`` empty)."""
        job: PreparedJob = pickle.loads(self.rest)
        return job


@functools.cache
def _pub_pickler() -> type[pickle.Pickler]:
    """A pickler of a job's PUBs that writes each circuit on its own (:func:`_wire`), once per
    circuit object (:func:`emulator.derived.derived`), opened once per process and payload
    (:func:`_circuit_qpy`, :func:`_circuit`). A program's repeated circuit is one object in
    pre-processing (the job decoder's memo, then its compaction, once): writing it was half the
    cost of handing a trivial ``ibm_fez`` job to the QPU (0.07 of 0.14 ms), and reading it most
    of the QPU's opening of the job."""
    from qiskit.circuit import QuantumCircuit

    from .derived import derived

    class PubPickler(pickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is not QuantumCircuit:
                return NotImplemented
            return derived(obj, "wire", lambda: _wire(obj))

    return PubPickler


def _wire(circuit: Any) -> tuple[Any, tuple[bytes]]:
    """How ``circuit`` crosses to the next stage's worker: its QPY, or its pickle when QPY
    cannot write it (metadata that is not JSON, an annotation without a serializer).

    QPY, because pickling a qiskit 2 circuit is slow: it builds every instruction's Python
    object. The 78 packs of one executor Estimator job on ``ibm_fez`` (a twirled 2-qubit
    ansatz and its TREX calibration, 4 qubits and 156 bits each) took 127 ms to pickle and
    49 ms to unpickle, against 11 and 12 ms as QPY; a 12-qubit random circuit of depth 40
    transpiled to the device, 174 and 142 ms against 35 and 11 ms. QPY keeps what the QPU
    reads: instructions, parameters (names and UUIDs), registers, layout, metadata."""
    from qiskit import qpy

    out = io.BytesIO()
    try:
        qpy.dump(circuit, out)
    except Exception:  # whatever QPY refuses, pickle carries (losing nothing)
        return _circuit, (pickle.dumps(circuit, pickle.HIGHEST_PROTOCOL),)
    return _circuit_qpy, (out.getvalue(),)


def _circuit_qpy(data: bytes) -> Any:
    """The circuit written as QPY ``data`` by :func:`_wire` (opened as :func:`_circuit` is)."""
    from qiskit import qpy

    return _opened().get(data, lambda: qpy.load(io.BytesIO(data))[0])


def _circuit(data: bytes) -> Any:
    """The circuit pickled as ``data``: the one this thread opened before from the same bytes
    (so, like the job decoder's, it must never be changed), or a new one."""
    return _opened().get(data, lambda: pickle.loads(data))


@functools.cache
def _opened() -> CircuitMemo:
    """The circuits this process's threads unpickled last (:func:`_circuit`)."""
    from aioruntime.protocol import CircuitMemo

    return CircuitMemo(entries=16, max_payload=64 * 1024)


@dataclass(frozen=True, slots=True)
class Planned:
    """What the scheduler needs of a pre-processed job."""

    quantum_seconds: float
    dry_run: bool
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Prepared(Planned):
    """A pre-processed job for the next stage's worker: what the scheduler needs, and the job
    itself (opaque)."""

    job: OpaqueJob


def warm(sources: Sequence[str]) -> None:
    """Import every module a job needs and load the devices' targets into this worker's
    caches, so that the first job pays no start-up cost."""
    import qiskit_aer.primitives  # noqa: F401
    import qiskit_ibm_runtime.json  # noqa: F401
    import stim  # noqa: F401

    from . import classical, estimation, executor, simulation, stim_sampler  # noqa: F401
    from .backends import split_source
    from .targets import device_target

    for source in sources:
        device_target(split_source(source)[0])
    # What is loaded now lives as long as the worker: move it out of the garbage collector's
    # reach. Without this, every full collection walks ~170,000 objects (qiskit, Aer, the
    # targets): 150-200 ms measured in a worker on the 2-core machine, a stall that hit one
    # job's stage in twenty (a 240 ms pre-processing or QPU span in a batch of 25 ms ones).
    # Frozen in the zygote, the objects also stay shared with the forked workers: a collection
    # would otherwise write to every page it visits (copy-on-write). Instagram's prefork recipe.
    gc.collect()
    gc.freeze()


def preprocess(
    program_id: str,
    params: str,
    source: str,
    timing: TimingParams,
    max_executions: int,
    stall_s: float = 0.0,
    settings: SimulationSettings | None = None,
) -> Prepared:
    job = _preprocess(program_id, params, source, timing, max_executions, stall_s, settings)
    return Prepared(job.quantum_seconds, job.dry_run, tuple(job.notes), OpaqueJob.wrap(job))


def _preprocess(
    program_id: str,
    params: str,
    source: str,
    timing: TimingParams,
    max_executions: int,
    stall_s: float,
    settings: SimulationSettings | None,
) -> PreparedJob:
    from aioruntime.protocol import ErrorCode

    from .classical import preprocess as _classical_preprocess
    from .simulation import SimulationSettings

    if stall_s:
        time.sleep(stall_s)  # an injected fault: a slow classical stage
    with _memory_limited("Decoding and checking the job", ErrorCode.VALIDATION):
        return _classical_preprocess(
            program_id,
            params,
            source,
            timing=timing,
            max_executions=max_executions,
            settings=settings or SimulationSettings(),
        )


@dataclass(frozen=True, slots=True)
class Whole:
    """A job run start to end in one call (:func:`run_whole`): what the scheduler records."""

    prepared: Planned
    #: The result text; None when the job needs more QPU time than its limit (not sampled).
    result: str | None
    #: Wall-clock instants (``time.time()``) of ``pre_end``, ``qpu_start``, ``qpu_end``,
    #: ``post_start`` (the job's ``pre_start`` is the scheduler's).
    stamps: dict[str, float]


def run_whole(
    program_id: str,
    params: str,
    source: str,
    timing: TimingParams,
    max_executions: int,
    stall_s: float,
    settings: SimulationSettings | None,
    limit_s: float,
) -> Whole:
    """Pre-process, sample and post-process in one call, on the backend's QPU worker, while the
    scheduler holds the QPU. The scheduler's fast path for a job that finds a lane and the QPU
    free under a clock that adds no hold: it saves two worker round trips and the transfer of
    the prepared job and its bits between processes, and the stages hand each other live
    objects (pickling the prepared job and unpickling it twice cost about 0.6 ms of a trivial
    job's 2.7). A job whose modelled QPU time exceeds ``limit_s`` is not sampled (``result``
    None: the scheduler answers it as ran too long)."""
    from datetime import UTC, datetime

    job = _preprocess(program_id, params, source, timing, max_executions, stall_s, settings)
    planned = Planned(job.quantum_seconds, job.dry_run, tuple(job.notes))
    stamps = {"pre_end": time.time()}
    if job.quantum_seconds > limit_s:
        return Whole(planned, None, stamps)
    if job.dry_run:  # no QPU span: mock data
        stamps["post_start"] = time.time()
        now = datetime.now(UTC)
        return Whole(planned, _postprocess(job, None, now, now), stamps)
    stamps["qpu_start"] = time.time()
    bits = _sample(job)
    stamps["qpu_end"] = stamps["post_start"] = time.time()
    start, stop = (datetime.fromtimestamp(stamps[k], UTC) for k in ("qpu_start", "qpu_end"))
    return Whole(planned, _postprocess(job, bits, start, stop), stamps)


def estimate(
    program_id: str, params: str, source: str, timing: TimingParams, max_executions: int
) -> float | None:
    """The job's modelled QPU seconds, for ``estimated_running_time_seconds`` before it ran
    (None when its input is bad: that is reported when the job runs). The simulation budget
    does not apply here: the modelled QPU time does not depend on it."""
    from .classical import JobInputError
    from .classical import preprocess as _preprocess
    from .simulation import SimulationSettings

    try:
        with _memory_limited("Estimating the job", 0):
            prepared = _preprocess(
                program_id,
                params,
                source,
                timing=timing,
                max_executions=max_executions,
                settings=SimulationSettings(budget_s=math.inf),
            )
    except JobInputError:
        return None
    return prepared.quantum_seconds


def schema_versions() -> dict[str, tuple[str, ...]]:
    """The params schema versions each program with versions accepts, as the installed client's
    converters know them. The server asks a worker (``Scheduler.schema_versions``): importing
    the converters imports qiskit, which the server never does."""
    from . import executor, noise_learner

    return {
        "executor": executor.schema_versions(),
        "noise-learner": noise_learner.schema_versions(),
    }


def sample(job: OpaqueJob) -> Opaque:
    """Sample the prepared ``job`` (:class:`Prepared.job`); the bits stay opaque."""
    return Opaque.wrap(_sample(job.open()))


def _sample(prepared: PreparedJob) -> Sampled:
    from aioruntime.protocol import ErrorCode

    from .classical import sample as _classical_sample

    # Aer's OpenMP threads cost far more than they save on small circuits (a Bell pair: 11.8 ms
    # with every core, 0.8 ms with one); from Aer's own statevector-parallel threshold up,
    # let it use every core. (Stim is single-threaded whatever this says.)
    widest = max((len(q) for q in prepared.metadata.get("pub_qubits", ())), default=0)
    with _memory_limited("Simulating the job", ErrorCode.EXECUTION_FAILED):
        return _classical_sample(prepared, max_threads=0 if widest >= _PARALLEL_QUBITS else 1)


def postprocess(job: OpaqueJob, sampled: Opaque | None, start: datetime, stop: datetime) -> str:
    """The result text of the prepared ``job`` from its ``sampled`` bits (``None`` for a dry
    run; see :func:`emulator.classical.postprocess`)."""
    return _postprocess(job, sampled, start, stop)


def _postprocess(
    job: PreparedJob | OpaqueJob, bits: Sampled | Opaque | None, start: datetime, stop: datetime
) -> str:
    """:func:`postprocess` of live objects or of pickles, opened within the memory limit."""
    from aioruntime.protocol import ErrorCode

    from .classical import postprocess as _classical_postprocess

    with _memory_limited("Building the job's result", ErrorCode.EXECUTION_FAILED):
        if isinstance(job, OpaqueJob):  # a dry run's mock data follows the circuits
            prepared = job.open() if bits is None else job.open_plans()
        else:
            prepared = job
        sampled = bits.open() if isinstance(bits, Opaque) else bits
        return _classical_postprocess(prepared, sampled, start, stop)


# -- guards: memory, and the parent's death ---------------------------------------------------


@contextlib.contextmanager
def _memory_limited(stage: str, code: int) -> Iterator[None]:
    """Run one stage of a job within ``_memory_budget``; running out fails the job, naming the
    limit (a Python MemoryError, or Aer's failed allocation), and leaves the worker usable."""
    from .validation import JobInputError

    limited = _memory_budget > 0 and _limit_growth(_memory_budget)
    hint = (
        f"a worker process may grow by at most {_memory_budget // 2**20} MiB for one job "
        "(--worker-memory-mb)"
        if limited
        else "the emulator's host is out of memory"
    )
    try:
        yield
    except MemoryError:
        raise JobInputError(code, f"{stage} needs more memory than allowed: {hint}.") from None
    except JobInputError as exc:
        if limited and "allocate memory" in exc.message:  # Aer: "Cannot allocate memory ..."
            raise JobInputError(exc.code, f"{exc.message} ({hint}).") from None
        raise
    finally:
        if limited:
            _limit_growth(None)


def _start_aer_threads() -> None:
    """Import what jobs use, and run a small simulation on every core, before any budget applies.

    The budget should measure a job, not imports, nor the threads a process starts once and then
    reuses: Aer's executor thread and OpenMP team each take a stack and a malloc arena, some 150
    MiB of address space. Started later, under a budget a job has nearly used up, such a thread
    can fail to start and leave Aer waiting for it forever."""
    from qiskit import QuantumCircuit
    from qiskit_aer.primitives import SamplerV2

    from . import classical, estimation  # noqa: F401

    qc = QuantumCircuit(_PARALLEL_QUBITS)
    for q in range(_PARALLEL_QUBITS):
        qc.h(q)
        qc.rz(0.1, q)  # not Clifford: a statevector, simulated in parallel from 14 qubits up
    qc.measure_all()
    options = {"backend_options": {"max_parallel_threads": 0}}
    SamplerV2(options=options).run([qc], shots=1).result()


def _limit_growth(extra: int | None) -> bool:
    """Let this process's address space grow by at most ``extra`` bytes from now on (``None``:
    lift the limit). False where that cannot be done (no ``/proc``, or no ``resource``)."""
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if extra is None:
            resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
            return True
        size = _address_space()
        soft = size + extra if hard == resource.RLIM_INFINITY else min(size + extra, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    except (ImportError, OSError, ValueError):
        return False
    return True


#: ``(pid, fd)``: this process's ``/proc/self/statm``, kept open. Every job stage reads it (see
#: :func:`_memory_limited`); opening and reading it as a file each time made a stage's limit cost
#: 59 µs, against 9 µs with ``os.pread`` here. The pid tells a forked child (whose
#: ``/proc/self`` is another file) to open its own.
_statm: tuple[int, int] | None = None


def _address_space() -> int:
    """This process's virtual memory size in bytes (``/proc/self/statm``'s first field)."""
    global _statm
    pid = os.getpid()
    if _statm is None or _statm[0] != pid:
        _statm = (pid, os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
    return int(os.pread(_statm[1], 64, 0).split()[0]) * os.sysconf("SC_PAGE_SIZE")


def guard_parent(parent: int, watch_fd: int = 0) -> None:
    """Make sure this process does not outlive ``parent`` (see the module docstring): the
    kernel kills it when ``parent`` dies (Linux), and a watchdog exits it as soon as
    ``watch_fd`` (the pipe or socket from the parent) hangs up or the parent changes."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the kernel was asked to tell us
        os._exit(1)
    watchdog = threading.Thread(
        target=_watch_parent, args=(parent, watch_fd), name="watchdog", daemon=True
    )
    watchdog.start()


def _watch_parent(parent: int, watch_fd: int) -> None:
    """Exit at once when ``watch_fd`` hangs up (the parent's end is gone) or the parent
    changes, even while the main thread is deep in a computation."""
    import select

    if not hasattr(select, "poll"):
        return
    poller = select.poll()
    poller.register(watch_fd, 0)  # POLLHUP, POLLERR and POLLNVAL are always reported
    while not poller.poll(1000) and os.getppid() == parent:
        pass
    os._exit(1)


def main(argv: Sequence[str]) -> None:
    """``python -m emulator.worker [--nice N] [--parent PID] [--memory-mb N]``."""
    global _memory_budget
    parser = argparse.ArgumentParser(prog="python -m emulator.worker")
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--parent", type=int, default=0, help="exit when this process is gone")
    parser.add_argument("--memory-mb", type=int, default=0, help="budget of one job stage")
    args = parser.parse_args(argv)
    if args.parent:
        guard_parent(args.parent)
    if args.nice:
        os.nice(args.nice)
    if args.memory_mb > 0:
        _memory_budget = args.memory_mb * 2**20
        _start_aer_threads()
    from .workers import serve

    serve()


if __name__ == "__main__":
    # Run main() of the module ``emulator.worker``, the one the pickled calls refer to, not of
    # this ``__main__`` copy, so that the settings it makes are the ones the calls see.
    from emulator import worker

    worker.main(sys.argv[1:])
