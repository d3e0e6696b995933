"""The functions the scheduler runs in worker processes, and the worker's main loop.

Workers are started as ``python -m emulator.worker`` by :class:`emulator.lanes.WorkerPool`: a
fresh interpreter that never re-runs the parent's main module (anyio's ``to_process`` does, with
``__main__`` removed, which breaks any script or notebook that imports qiskit at top level,
because ``dill`` imports ``__main__``).

Protocol on the pipes: the parent writes ``<length>\\n<pickle of (func, args)>``; the worker
answers ``ACK\\n`` as soon as it has read the call (so the parent can tell "died before the call"
from "died during it"), then ``OK <length>\\n<pickle of result>`` or
``EXC <length>\\n<pickle of exception>``.
"""

from __future__ import annotations

import pickle
import sys
import time
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from datetime import datetime

    from .classical import PreparedJob, Sampled
    from .simulation import SimulationSettings
    from .timing import TimingParams

__all__ = ["postprocess", "preprocess", "sample", "serve", "warm"]

#: Aer's default ``statevector_parallel_threshold``.
_PARALLEL_QUBITS = 14


def warm(sources: tuple[str, ...]) -> None:
    """Import every module a job needs and load the devices' targets into this worker's
    caches, so that the first job pays no start-up cost."""
    import qiskit_aer.primitives  # noqa: F401
    import qiskit_ibm_runtime.json  # noqa: F401
    import stim  # noqa: F401

    from . import classical, estimation, simulation, stim_sampler  # noqa: F401
    from .targets import device_target

    for source in sources:
        device_target(source)


def preprocess(
    program_id: str,
    params: str,
    source: str,
    timing: TimingParams,
    max_executions: int,
    stall_s: float = 0.0,
    settings: SimulationSettings | None = None,
) -> PreparedJob:
    from .classical import preprocess as _preprocess
    from .simulation import SimulationSettings

    if stall_s:
        time.sleep(stall_s)  # an injected fault: a slow classical stage
    return _preprocess(
        program_id,
        params,
        source,
        timing=timing,
        max_executions=max_executions,
        settings=settings or SimulationSettings(),
    )


def sample(prepared: PreparedJob) -> Sampled:
    from .classical import sample as _sample

    # Aer's OpenMP threads cost far more than they save on small circuits (a Bell pair: 11.8 ms
    # with every core, 0.8 ms with one); from Aer's own statevector-parallel threshold up,
    # let it use every core. (Stim is single-threaded whatever this says.)
    widest = max((len(q) for q in prepared.metadata.get("pub_qubits", ())), default=0)
    return _sample(prepared, max_threads=0 if widest >= _PARALLEL_QUBITS else 1)


def postprocess(prepared: PreparedJob, sampled: Sampled, start: datetime, stop: datetime) -> str:
    from .classical import postprocess as _postprocess

    return _postprocess(prepared, sampled, start, stop)


def _reply(out: BinaryIO, tag: bytes, obj: Any) -> None:
    try:
        payload = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an unpicklable result or exception: say so, stay alive
        tag, payload = b"EXC", pickle.dumps(RuntimeError(f"unpicklable {tag.decode()}: {exc!r}"))
    out.write(b"%s %d\n" % (tag, len(payload)))
    out.write(payload)
    out.flush()


def serve() -> None:
    """Answer calls from the parent until stdin closes."""
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


if __name__ == "__main__":
    import os

    if len(sys.argv) > 2 and sys.argv[1] == "--nice":
        os.nice(int(sys.argv[2]))
    serve()
