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

import importlib
from typing import TYPE_CHECKING, Any

#: Public name → (module, attribute). Imported on first use (PEP 562), so that
#: ``import aioruntime.protocol`` (the emulator's only need) does not import qiskit.
_EXPORTS: dict[str, tuple[str, str]] = {
    "AioRuntimeError": ("errors", "AioRuntimeError"),
    "ApiError": ("errors", "ApiError"),
    "AsyncBackend": ("backend", "AsyncBackend"),
    "AsyncBatch": ("session", "AsyncBatch"),
    "AsyncEstimatorV2": ("primitives", "AsyncEstimatorV2"),
    "AsyncExecutor": ("executor", "AsyncExecutor"),
    "AsyncExecutorEstimatorV2": ("executor_primitives", "AsyncExecutorEstimatorV2"),
    "AsyncExecutorSamplerV2": ("executor_primitives", "AsyncExecutorSamplerV2"),
    "AsyncNoiseLearnerV3": ("executor", "AsyncNoiseLearnerV3"),
    "AsyncRuntimeJob": ("job", "AsyncRuntimeJob"),
    "AsyncRuntimeService": ("service", "AsyncRuntimeService"),
    "AsyncSamplerV2": ("primitives", "AsyncSamplerV2"),
    "AsyncSession": ("session", "AsyncSession"),
    "BackendNotFoundError": ("errors", "BackendNotFoundError"),
    "BadRequestError": ("errors", "BadRequestError"),
    "ClosedError": ("errors", "ClosedError"),
    "ConnectError": ("errors", "ConnectError"),
    "ConnectionLostError": ("errors", "ConnectionLostError"),
    "CpuStatistics": ("_cpu", "CpuStatistics"),
    "InputValueError": ("errors", "InputValueError"),
    "InvalidStateError": ("errors", "InvalidStateError"),
    "JobCancelledError": ("errors", "JobCancelledError"),
    "JobError": ("errors", "JobError"),
    "JobFailedError": ("errors", "JobFailedError"),
    "JobMaxTimeoutError": ("errors", "JobMaxTimeoutError"),
    "JobNotFoundError": ("errors", "JobNotFoundError"),
    "JobTimeoutError": ("errors", "JobTimeoutError"),
    "ModeState": ("session", "ModeState"),
    "NotAuthorizedError": ("errors", "NotAuthorizedError"),
    "NotFoundError": ("errors", "NotFoundError"),
    "ProgramNotFoundError": ("errors", "ProgramNotFoundError"),
    "RateLimitError": ("errors", "RateLimitError"),
    "RequestTimeoutError": ("errors", "RequestTimeoutError"),
    "ServerError": ("errors", "ServerError"),
    "ServiceClosedError": ("errors", "ServiceClosedError"),
    "ServiceState": ("service", "ServiceState"),
    "ServiceStatistics": ("service", "ServiceStatistics"),
    "SessionClosedError": ("errors", "SessionClosedError"),
    "SessionNotFoundError": ("errors", "SessionNotFoundError"),
    "TransportError": ("errors", "TransportError"),
    "UsageError": ("errors", "UsageError"),
    "WaitStatistics": ("_wait", "WaitStatistics"),
    "WorkerDiedError": ("errors", "WorkerDiedError"),
    "__version__": ("_config", "VERSION"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'aioruntime' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value  # once imported, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
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
