"""The functions the scheduler runs on the worker plane, and ``python -m emulator.worker``.

Workers are started as ``python -m emulator.worker`` by :class:`emulator.workers.WorkerPool`
(the pipe protocol, both ends, lives in :mod:`emulator.workers`).
"""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

    from .classical import PreparedJob, Sampled
    from .simulation import SimulationSettings
    from .timing import TimingParams

__all__ = ["estimate", "postprocess", "preprocess", "sample", "warm"]

#: Aer's default ``statevector_parallel_threshold``.
_PARALLEL_QUBITS = 14


def warm(sources: tuple[str, ...]) -> None:
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


def sample(prepared: PreparedJob) -> Sampled:
    from .classical import sample as _sample

    # Aer's OpenMP threads cost far more than they save on small circuits (a Bell pair: 11.8 ms
    # with every core, 0.8 ms with one); from Aer's own statevector-parallel threshold up,
    # let it use every core. (Stim is single-threaded whatever this says.)
    widest = max((len(q) for q in prepared.metadata.get("pub_qubits", ())), default=0)
    return _sample(prepared, max_threads=0 if widest >= _PARALLEL_QUBITS else 1)


def postprocess(
    prepared: PreparedJob, sampled: Sampled | None, start: datetime, stop: datetime
) -> str:
    """``sampled`` is ``None`` for a dry run (see :func:`emulator.classical.postprocess`)."""
    from .classical import postprocess as _postprocess

    return _postprocess(prepared, sampled, start, stop)


if __name__ == "__main__":
    import os

    if len(sys.argv) > 2 and sys.argv[1] == "--nice":
        os.nice(int(sys.argv[2]))
    from .workers import serve

    serve()
