"""``AsyncExecutor`` and ``AsyncNoiseLearnerV3``: IBM's executor path, with an awaitable ``run()``.

The asyncio counterparts of ``qiskit_ibm_runtime.Executor`` (program ``executor``: runs a
``QuantumProgram``) and ``qiskit_ibm_runtime.NoiseLearnerV3`` (program ``noise-learner``: the
Pauli-Lindblad noise of boxed layers), and the base of the executor-based Sampler and Estimator
(``executor_primitives.py``). The request is the official one, built by the official code in
the CPU pool (``_executor_work.py``, ``_cpu.py``): the event loop only sends it. (Work a
primitive knows to be light is done in this process instead: see ``_ClientSidePrimitive._submit``.)

``await executor.run(program)`` returns an :class:`~aioruntime.AsyncRuntimeJob` once the server
accepted the job; ``await job`` gives what the official ``job.result()`` gives
(``QuantumProgramResult``; ``NoiseLearnerV3Results``), decoded in the CPU pool. Modes, cancel,
timeouts, metrics and usage are those of every job. ``dry_run=True`` sends the job to the
backend's mock twin (``ibm_fez`` → ``mock_fez``), as the official client does: validated and
costed (``await job.usage_estimation()``), nothing runs on the QPU, nothing is billed, the
result holds random data. Inside a session the job keeps the session id, as the official one
does; a server that keeps sessions to one device refuses it.

Options are the official pydantic models (``ExecutorOptions``, ``NoiseLearnerV3Options``, and
``options_models.SamplerOptions`` / ``EstimatorOptions`` for the primitives): ``options`` takes a
model or a dict; ``run()`` takes a deep copy, so later changes do not affect a submitted job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from qiskit_ibm_runtime.options_models import ExecutorOptions, NoiseLearnerV3Options
from qiskit_ibm_runtime.options_models.base import BaseOptionsModel

from ._executor_work import Prepared, prepare_executor, prepare_noise_learner
from ._submit import job_body, mock_twin, post_job, resolve_mode
from .errors import InputValueError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from qiskit.circuit import CircuitInstruction
    from qiskit_ibm_runtime.quantum_program import QuantumProgram

    from .backend import AsyncBackend
    from .job import AsyncRuntimeJob
    from .session import _ExecutionMode

__all__ = ["AsyncExecutor", "AsyncNoiseLearnerV3"]

OptionsT = TypeVar("OptionsT", bound=BaseOptionsModel)


class _ClientSidePrimitive(Generic[OptionsT]):
    """Mode, options and submission shared by the executor-path primitives."""

    _program_id: ClassVar[str] = "executor"
    _options_class: ClassVar[type[BaseOptionsModel]]

    def __init__(
        self,
        mode: AsyncBackend | _ExecutionMode | None = None,
        options: OptionsT | dict[str, Any] | None = None,
    ) -> None:
        self._mode, self._backend = resolve_mode(mode)
        self.options = options  # coerced by the setter

    def __repr__(self) -> str:
        where = repr(self._mode) if self._mode is not None else f"backend {self._backend.name!r}"
        return f"<{type(self).__name__} on {where}>"

    @property
    def options(self) -> OptionsT:
        """The official options model; assign a model or a dict (validated at once)."""
        return self._options

    @options.setter
    def options(self, value: OptionsT | dict[str, Any] | None) -> None:
        cls = self._options_class
        if value is None:
            value = cls()
        elif isinstance(value, dict):
            try:
                value = cls(**value)
            except ValueError as exc:  # pydantic's ValidationError
                raise InputValueError(str(exc)) from exc
        elif not isinstance(value, cls):
            raise InputValueError(
                f"options must be a dict or {cls.__name__}, got {type(value).__name__}"
            )
        self._options: OptionsT = value  # type: ignore[assignment]

    @property
    def mode(self) -> _ExecutionMode | None:
        """The AsyncSession / AsyncBatch, or None in job mode."""
        return self._mode

    def backend(self) -> AsyncBackend:
        return self._backend

    def _snapshot(self) -> OptionsT:
        snapshot: OptionsT = self._options.model_copy(deep=True)
        return snapshot

    async def _submit(
        self, work: Callable[..., Prepared], *args: Any, dry_run: bool, light: bool = False
    ) -> AsyncRuntimeJob:
        """Prepare with ``work(*args)`` in the CPU pool, then ``POST /jobs`` (to the mock twin
        for a dry run, in this primitive's session or batch if any).

        ``light``: the caller knows the preparation and the result's decoding are about a
        millisecond each (a few short PUBs, nothing to twirl or post-process). They then run in
        this process, as :meth:`ClientContext.run_small` runs small work: the CPU pool's
        round trip (pickling the PUBs, a 156-qubit layout's alone about 1.3 ms, and unpickling
        them in the worker) costs more than such work."""
        context = self._backend.context
        context.require_open()
        target = await mock_twin(self._backend) if dry_run else self._backend
        session_id = await self._mode._session_id_for_job() if self._mode is not None else None
        if light:
            prepared = await context.run_small(True, work, *args)
        else:
            prepared = await context.run_cpu(work, *args)
        program, runtime = self._program_id, prepared.runtime
        body = job_body(program, prepared.params, runtime, target.name, session_id)
        return await post_job(
            context, target, program, body, runtime, session_id, light_result=light
        )


class AsyncExecutor(_ClientSidePrimitive[ExecutorOptions]):
    """Runs ``QuantumProgram``\\ s (program ``executor``), like the official ``Executor``.

    ``options``: ``ExecutorOptions`` or a dict (``environment.job_tags``,
    ``max_execution_time``, ``execution.init_qubits``, ``execution.rep_delay``, …)."""

    _options_class = ExecutorOptions

    async def run(self, program: QuantumProgram | Any, *, dry_run: bool = False) -> AsyncRuntimeJob:
        """Submit ``program`` (a ``QuantumProgram``, or samplomatic's, converted as the official
        ``Executor.run`` converts it); returns the job once the server accepted it. ``await
        job`` gives the official ``QuantumProgramResult``. Raises :class:`InputValueError` (no
        request sent) for a program the official encoder refuses."""
        return await self._submit(prepare_executor, program, self._snapshot(), dry_run=dry_run)


class AsyncNoiseLearnerV3(_ClientSidePrimitive[NoiseLearnerV3Options]):
    """Learns the noise of boxed layers (program ``noise-learner``), like the official
    ``NoiseLearnerV3``. ``await job`` gives ``NoiseLearnerV3Results``;
    ``results.to_pauli_lindblad_maps()`` are what ``resilience.layer_noise_model`` takes."""

    _program_id = "noise-learner"

    _options_class = NoiseLearnerV3Options

    async def run(
        self, instructions: Iterable[CircuitInstruction], *, dry_run: bool = False
    ) -> AsyncRuntimeJob:
        """Submit the boxed, twirl-annotated ``instructions`` (e.g. from
        :meth:`AsyncExecutorEstimatorV2.find_unique_layers`). Raises
        :class:`InputValueError` (no request sent) for instructions the official validation
        refuses: a box without twirl annotation, qubits outside the device, non-ISA gates."""
        return await self._submit(
            prepare_noise_learner,
            list(instructions),
            self._snapshot(),
            self._backend.target,
            dry_run=dry_run,
        )
