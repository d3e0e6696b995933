"""``AsyncSamplerV2`` and ``AsyncEstimatorV2``: the V2 primitives, with an awaitable ``run()``.

The request is the official client's, built with its own pure helpers: PUBs go through
``SamplerPub.coerce`` / ``EstimatorPub.coerce`` and the official validations (ISA against the
backend's Target, faulty qubits, classical registers, observables); options are the official
``SamplerOptions`` / ``EstimatorOptions`` dataclasses turned into ``params`` by their
``_get_program_inputs`` (only non-default options are sent) and into the top-level ``log_level``,
``tags``, ``cost`` and ``private`` by ``_get_runtime_options``; the body is encoded with the
official ``RuntimeEncoder``. Coercion, validation and encoding run in a worker thread, so large
payloads never stall the event loop.

``await primitive.run(pubs)`` returns an :class:`~aioruntime.AsyncRuntimeJob` as soon as the
server accepted the job (``POST /jobs``); ``await job`` then gives the ``PrimitiveResult``.

Pre-submission checks. The official client sends ``GET /instances/usage`` and
``GET /backends/{name}/status`` before **every** job, only to emit warnings. aioruntime skips
them by default (two extra round trips per job, which matters when a hundred jobs are submitted
at once); ``AsyncRuntimeService(preflight_checks=True)`` restores them.

Retries. Every ``POST /jobs`` carries a fresh ``Idempotency-Key`` header (an extension the
emulator honours; other servers ignore it), so a submission whose connection dropped after
sending can be retried without risking a second job. The official client retries POST only on
5xx (spec pitfall 11) and can duplicate a job when the server created it and then failed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from qiskit.primitives.containers.estimator_pub import EstimatorPub
from qiskit.primitives.containers.sampler_pub import SamplerPub
from qiskit_ibm_runtime.options import EstimatorOptions, SamplerOptions

from . import protocol as p
from .errors import BackendNotFoundError, InputValueError, ProgramNotFoundError
from .job import AsyncRuntimeJob
from .session import _ExecutionMode, current_mode

if TYPE_CHECKING:
    from qiskit.primitives.containers.estimator_pub import EstimatorPubLike
    from qiskit.primitives.containers.sampler_pub import SamplerPubLike

    from ._context import ClientContext
    from .backend import AsyncBackend

__all__ = ["AsyncEstimatorV2", "AsyncSamplerV2", "preflight"]

log = logging.getLogger("aioruntime.primitives")

OptionsT = TypeVar("OptionsT", SamplerOptions, EstimatorOptions)


def _input_error(exc: Exception) -> InputValueError:
    return InputValueError(str(exc))


async def preflight(context: ClientContext, backend: AsyncBackend) -> None:
    """The official client's checks before every job (only with ``preflight_checks``): warn
    when the instance has used up its time or the backend is not active. Never raises for
    what it finds; request failures propagate."""
    usage, status = await asyncio.gather(context.api.get_json(p.INSTANCES_USAGE), backend.status())
    if (usage or {}).get("usage_limit_reached"):
        warnings.warn(
            "This instance has met its usage limit; workloads will not run until time is "
            "made available.",
            UserWarning,
            stacklevel=3,
        )
    if status["operational"] and status["status_msg"] != "active":
        warnings.warn(
            f"The backend {backend.name} currently has a status of {status['status_msg']}.",
            UserWarning,
            stacklevel=3,
        )


class _AsyncPrimitive(Generic[OptionsT]):
    _options_class: ClassVar[type[Any]]
    _program_id: ClassVar[str]
    version = 2

    def __init__(
        self,
        mode: AsyncBackend | _ExecutionMode | None = None,
        options: dict[str, Any] | OptionsT | None = None,
    ) -> None:
        from .backend import AsyncBackend

        context = current_mode()
        if mode is None:
            if context is None:
                raise InputValueError(
                    "A mode is required: an AsyncBackend (job mode), an AsyncSession or an "
                    "AsyncBatch (or build the primitive inside `async with AsyncSession(...)`)."
                )
            mode = context
        if isinstance(mode, AsyncBackend) and context is not None:
            # As the official get_mode_service_backend: a backend inside an open session block
            # runs in that session.
            if context.backend_object.name != mode.name:
                raise InputValueError(
                    "The backend passed in to the primitive is different from the session "
                    "backend. Leave mode empty to use the session backend."
                )
            log.warning(
                "A backend was passed in as the mode but a session context manager is open, "
                "so this job will run inside that %s instead of in job mode.",
                type(context).__name__,
            )
            mode = context
        if isinstance(mode, _ExecutionMode):
            self._mode: _ExecutionMode | None = mode
            self._backend: AsyncBackend = mode.backend_object
        elif isinstance(mode, AsyncBackend):
            self._mode = None
            self._backend = mode
        else:
            raise InputValueError(
                "mode must be an AsyncBackend, AsyncSession or AsyncBatch, "
                f"got {type(mode).__name__}"
            )
        self._set_options(options)

    def __repr__(self) -> str:
        where = repr(self._mode) if self._mode is not None else f"backend {self._backend.name!r}"
        return f"<{type(self).__name__} on {where}>"

    # -- properties --------------------------------------------------------------------------

    @property
    def mode(self) -> _ExecutionMode | None:
        """The AsyncSession / AsyncBatch, or None in job mode."""
        return self._mode

    @property
    def options(self) -> OptionsT:
        return self._options

    def backend(self) -> AsyncBackend:
        return self._backend

    def _set_options(self, options: dict[str, Any] | OptionsT | None) -> None:
        from qiskit_ibm_runtime.options.utils import merge_options_v2

        try:
            if options is None:
                self._options = self._options_class()
            elif isinstance(options, dict):
                merged = merge_options_v2(self._options_class(), options)
                self._options = self._options_class(**merged)
            elif isinstance(options, self._options_class):
                self._options = replace(options)
            else:
                raise InputValueError(
                    f"options must be a dict or {self._options_class.__name__}, "
                    f"got {type(options).__name__}"
                )
        except (ValueError, TypeError) as exc:
            if isinstance(exc, InputValueError):
                raise
            raise _input_error(exc) from exc

    # -- submission --------------------------------------------------------------------------

    def _coerce(self, pubs: list[Any], default: Any) -> list[Any]:
        raise NotImplementedError

    def _validate_options(self, options: dict[str, Any]) -> None:
        pass

    def _prepare(
        self, pubs: list[Any], default: Any, options: OptionsT, session_id: str | None
    ) -> tuple[str, dict[str, Any]]:
        """Coerce, validate and encode the request body (runs in a worker thread).

        Mirrors ``BasePrimitiveV2._run`` and ``QiskitRuntimeService._run`` / ``program_run``."""
        from qiskit_ibm_runtime.exceptions import IBMInputValueError
        from qiskit_ibm_runtime.runtime_options import RuntimeOptions
        from qiskit_ibm_runtime.utils import (
            validate_isa_circuits,
            validate_no_dd_with_dynamic_circuits,
            validate_rzz_pubs,
        )

        backend = self._backend
        try:
            coerced = self._coerce(pubs, default)
            options_dict = asdict(options)
            self._validate_options(options_dict)
            inputs: dict[str, Any] = {"pubs": coerced}
            inputs.update(self._options_class._get_program_inputs(options_dict))
            runtime = self._options_class._get_runtime_options(options_dict)
            validate_no_dd_with_dynamic_circuits([pub.circuit for pub in coerced], options)
            if not backend.simulator:
                validate_rzz_pubs(coerced)
                for pub in coerced:
                    validate_isa_circuits([pub.circuit], backend.target)
                    backend.check_faulty(pub.circuit)  # the official check, cached per backend
            RuntimeOptions(
                log_level=runtime.get("log_level"),
                job_tags=runtime.get("job_tags"),
                image=runtime.get("image"),
            ).validate(channel="ibm_quantum_platform")
        except (IBMInputValueError, ValueError, TypeError) as exc:
            if isinstance(exc, InputValueError):
                raise
            raise _input_error(exc) from exc
        # Same keys, same order, same conditions as the official ``Runtime.program_run``.
        payload: dict[str, Any] = {"program_id": self._program_id, "params": inputs}
        if runtime.get("image"):
            payload["runtime"] = runtime["image"]
        if runtime.get("log_level"):
            payload["log_level"] = runtime["log_level"]
        payload["backend"] = backend.name
        if session_id:
            payload["session_id"] = session_id
        if runtime.get("job_tags"):
            payload["tags"] = runtime["job_tags"]
        if runtime.get("max_execution_time"):
            payload["cost"] = runtime["max_execution_time"]
        if runtime.get("private"):
            payload["private"] = True
        return p.dumps(payload), runtime

    async def _submit(self, pubs: Iterable[Any], default: Any) -> AsyncRuntimeJob:
        context = self._backend.context
        context.require_open()
        pub_list = list(pubs)
        options = replace(self._options)  # a snapshot: later changes don't affect this job
        session_id = await self._mode._session_id_for_job() if self._mode is not None else None
        body, runtime = await context.run_sync(
            self._prepare, pub_list, default, options, session_id
        )
        if context.config.preflight_checks:
            await preflight(context, self._backend)
        # No Accept header: the official ``program_run`` sends only Content-Type (spec 1.3 lists
        # Accept on POST /jobs too, but that is the client's header leak; the client wins).
        response = await context.api.request(
            "POST",
            p.JOBS,
            body=body,
            accept_json=False,
            read_timeout=context.config.submit_timeout_s,
            errors={404: (ProgramNotFoundError, {})},
            idempotency_key=uuid.uuid4().hex,
        )
        answer = response.json() or {}
        backend_name = str(answer.get("backend") or self._backend.name)
        backend = self._backend
        if backend_name != self._backend.name:  # the server moved it: load that backend
            try:
                backend = await self._backend.service.backend(backend_name)
            except BackendNotFoundError:
                pass
        return AsyncRuntimeJob(
            context=context,
            job_id=str(answer["id"]),
            program_id=self._program_id,
            backend=backend,
            backend_name=backend_name,
            session_id=str(answer.get("session_id") or session_id or "") or None,
            tags=list(runtime.get("job_tags") or []),
            private=bool(runtime.get("private")),
            image=runtime.get("image"),
        )


class AsyncSamplerV2(_AsyncPrimitive[SamplerOptions]):
    """The Sampler V2 primitive. ``options``: a dict or ``SamplerOptions`` (``default_shots``,
    ``environment.job_tags``, ``max_execution_time``, ``simulator.seed_simulator``,
    ``execution.rep_delay``, …)."""

    _options_class = SamplerOptions
    _program_id = "sampler"

    async def run(
        self, pubs: Iterable[SamplerPubLike], *, shots: int | None = None
    ) -> AsyncRuntimeJob:
        """Submit; returns the job once the server accepted it. ``shots`` applies to PUBs
        without their own. Raises :class:`InputValueError` for invalid PUBs or options (no
        request is sent) and :class:`SessionClosedError` in a closed session."""
        return await self._submit(pubs, shots)

    def _coerce(self, pubs: list[Any], default: Any) -> list[Any]:
        from qiskit_ibm_runtime.utils import validate_classical_registers

        coerced = [SamplerPub.coerce(pub, default) for pub in pubs]
        validate_classical_registers(coerced)
        return coerced


class AsyncEstimatorV2(_AsyncPrimitive[EstimatorOptions]):
    """The Estimator V2 primitive. ``options``: a dict or ``EstimatorOptions``
    (``default_precision``, ``resilience_level``, ``environment.job_tags``, …)."""

    _options_class = EstimatorOptions
    _program_id = "estimator"

    async def run(
        self, pubs: Iterable[EstimatorPubLike], *, precision: float | None = None
    ) -> AsyncRuntimeJob:
        """Submit; returns the job once the server accepted it. ``precision`` applies to PUBs
        without their own and must be > 0."""
        if precision is not None and precision <= 0:
            raise InputValueError("The precision value must be strictly greater than 0.")
        return await self._submit(pubs, precision)

    def _coerce(self, pubs: list[Any], default: Any) -> list[Any]:
        from qiskit_ibm_runtime.utils import validate_estimator_pubs

        coerced = [EstimatorPub.coerce(pub, default) for pub in pubs]
        validate_estimator_pubs(coerced)
        return coerced

    def _validate_options(self, options: dict[str, Any]) -> None:
        if (
            options.get("resilience", {}).get("pec_mitigation", False) is True
            and self._backend.simulator
            and not options["simulator"]["coupling_map"]
        ):
            raise InputValueError(
                "When the backend is a simulator and pec_mitigation is enabled, "
                "a coupling map is required."
            )
