"""aioruntime: an asyncio-native client for IBM's Qiskit Runtime REST API.

::

    from aioruntime import AsyncRuntimeService, AsyncSession, AsyncEstimatorV2

    async with AsyncRuntimeService(url=..., token=..., instance=...) as service:
        backend = await service.backend("ibm_fez")
        async with AsyncSession(backend) as session:
            job = await AsyncEstimatorV2(mode=session).run([(isa_circuit, observable)])
            result = await job

IBM's executor path: :class:`AsyncExecutorSamplerV2` and :class:`AsyncExecutorEstimatorV2` (the
client-side primitives), :class:`AsyncExecutor` (``QuantumProgram``) and
:class:`AsyncNoiseLearnerV3`; their CPU work runs in worker processes (``_cpu.py``).
Cost and time of a workload before it runs: :mod:`aioruntime.estimate`.

The wire protocol lives in :mod:`aioruntime.protocol`; the exception tree is drawn in
:mod:`aioruntime.errors`.
"""

from __future__ import annotations

from ._config import VERSION as __version__
from ._cpu import CpuStatistics
from ._wait import WaitStatistics
from .backend import AsyncBackend
from .errors import (
    AioRuntimeError,
    ApiError,
    BackendNotFoundError,
    BadRequestError,
    ClosedError,
    ConnectError,
    ConnectionLostError,
    InputValueError,
    InvalidStateError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobMaxTimeoutError,
    JobNotFoundError,
    JobTimeoutError,
    NotAuthorizedError,
    NotFoundError,
    ProgramNotFoundError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    ServiceClosedError,
    SessionClosedError,
    SessionNotFoundError,
    TransportError,
    UsageError,
    WorkerDiedError,
)
from .executor import AsyncExecutor, AsyncNoiseLearnerV3
from .executor_primitives import AsyncExecutorEstimatorV2, AsyncExecutorSamplerV2
from .job import AsyncRuntimeJob
from .primitives import AsyncEstimatorV2, AsyncSamplerV2
from .service import AsyncRuntimeService, ServiceState, ServiceStatistics
from .session import AsyncBatch, AsyncSession, ModeState

__all__ = [
    "AioRuntimeError",
    "ApiError",
    "AsyncBackend",
    "AsyncBatch",
    "AsyncEstimatorV2",
    "AsyncExecutor",
    "AsyncExecutorEstimatorV2",
    "AsyncExecutorSamplerV2",
    "AsyncNoiseLearnerV3",
    "AsyncRuntimeJob",
    "AsyncRuntimeService",
    "AsyncSamplerV2",
    "AsyncSession",
    "BackendNotFoundError",
    "BadRequestError",
    "ClosedError",
    "ConnectError",
    "ConnectionLostError",
    "CpuStatistics",
    "InputValueError",
    "InvalidStateError",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobMaxTimeoutError",
    "JobNotFoundError",
    "JobTimeoutError",
    "ModeState",
    "NotAuthorizedError",
    "NotFoundError",
    "ProgramNotFoundError",
    "RateLimitError",
    "RequestTimeoutError",
    "ServerError",
    "ServiceClosedError",
    "ServiceState",
    "ServiceStatistics",
    "SessionClosedError",
    "SessionNotFoundError",
    "TransportError",
    "UsageError",
    "WaitStatistics",
    "WorkerDiedError",
    "__version__",
]
