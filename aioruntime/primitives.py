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

Submission itself (the mode, a dry run's mock twin, the ``POST /jobs`` body, the checks below,
the job handle) is shared with the executor path in ``_submit.py``.

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

import copy
import pickle
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, TypeVar

import numpy as np
from qiskit.primitives.containers.estimator_pub import EstimatorPub
from qiskit.primitives.containers.sampler_pub import SamplerPub
from qiskit_ibm_runtime.options import EstimatorOptions, SamplerOptions

from . import protocol as p
from ._submit import job_body, mock_twin, post_job, resolve_mode
from .errors import InputValueError
from .job import AsyncRuntimeJob
from .session import _ExecutionMode

if TYPE_CHECKING:
    from qiskit.primitives.containers.estimator_pub import EstimatorPubLike
    from qiskit.primitives.containers.sampler_pub import SamplerPubLike

    from .backend import AsyncBackend

__all__ = ["AsyncEstimatorV2", "AsyncSamplerV2"]

OptionsT = TypeVar("OptionsT", SamplerOptions, EstimatorOptions)


#: A request this small is encoded on the event loop when its inline budget allows
#: (``ClientContext.run_small``): a trivial job (three instructions on ``ibm_fez``'s 156-qubit
#: layout) takes about 0.9 ms to check and encode, less than the thread hop it would need.
_SMALL_PUBS = 4
_SMALL_INSTRUCTIONS = 64
_SMALL_VALUES = 64


def _is_small(pubs: list[Any]) -> bool:
    """Whether encoding ``pubs`` (as given to ``run``) is small work: a few PUBs of short
    circuits with few parameter values and observables. Anything unusual is not (and nothing
    is converted to find out: an observable's ``__array__`` may be a dense matrix)."""
    from qiskit.circuit import QuantumCircuit

    if len(pubs) > _SMALL_PUBS:
        return False
    for pub in pubs:
        if isinstance(pub, (SamplerPub, EstimatorPub)):
            circuit = pub.circuit
            values = pub.parameter_values  # counted, not converted (as_array() copies them)
            if values.size * values.num_parameters > _SMALL_VALUES:
                return False
            extras: list[Any] = []
            if isinstance(pub, EstimatorPub):
                extras.append(None if pub.observables.size == 1 else pub.observables)
        elif isinstance(pub, (tuple, list)) and pub:
            circuit, extras = pub[0], list(pub[1:])
        else:
            circuit, extras = pub, []
        if not isinstance(circuit, QuantumCircuit) or len(circuit.data) > _SMALL_INSTRUCTIONS:
            return False
        if circuit.has_control_flow_op():  # one instruction may hold a long body
            return False
        if not all(_small_value(extra) for extra in extras):
            return False
    return True


def _small_value(value: Any) -> bool:
    """Whether a PUB's parameter values, observables, shots or precision are few."""
    from qiskit.quantum_info import SparsePauliOp

    if value is None or isinstance(value, (int, float, str)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biuf" and value.size <= _SMALL_VALUES
    if isinstance(value, SparsePauliOp):
        return len(value) <= _SMALL_VALUES
    if isinstance(value, (list, tuple)):
        return len(value) <= _SMALL_VALUES and all(isinstance(v, (int, float, str)) for v in value)
    return False


def _input_error(exc: Exception) -> InputValueError:
    return InputValueError(str(exc))


@dataclass(frozen=True)
class _Snapshot:
    """The options as they were when ``run()`` was called, nested options included: their
    pickle, which is also the key of their request form (equal pickles, equal options), or a
    deep copy when something in them does not pickle (``experimental`` takes any value)."""

    key: bytes | None
    deep_copy: Any = None

    @classmethod
    def of(cls, options: Any) -> _Snapshot:
        try:
            return cls(pickle.dumps(options, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:  # any pickling failure: a lambda, a lock, a socket
            return cls(None, copy.deepcopy(options))

    def value(self) -> Any:
        return pickle.loads(self.key) if self.key is not None else self.deep_copy


class _OptionsForm(NamedTuple):
    key: bytes | None
    options: Any  # the options themselves, for the checks that read them
    inputs: dict[str, Any]  # what ``_get_program_inputs`` adds to ``params``: shared, not changed
    runtime: dict[str, Any]  # ``_get_runtime_options``: copied for each job


class _AsyncPrimitive(Generic[OptionsT]):
    _options_class: ClassVar[type[Any]]
    _program_id: ClassVar[str]
    version = 2

    def __init__(
        self,
        mode: AsyncBackend | _ExecutionMode | None = None,
        options: dict[str, Any] | OptionsT | None = None,
    ) -> None:
        self._mode, self._backend = resolve_mode(mode)
        self._form: _OptionsForm | None = None
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
        self, pubs: list[Any], default: Any, options: _Snapshot
    ) -> tuple[str, dict[str, Any]]:
        """Coerce, validate and encode the request's ``params`` (runs in a worker thread).

        Mirrors ``BasePrimitiveV2._run`` and ``QiskitRuntimeService._run`` / ``program_run``."""
        from qiskit_ibm_runtime.exceptions import IBMInputValueError
        from qiskit_ibm_runtime.utils import (
            validate_isa_circuits,
            validate_no_dd_with_dynamic_circuits,
            validate_rzz_pubs,
        )

        backend = self._backend
        try:
            coerced = self._coerce(pubs, default)
            form = self._options_form(options)
            inputs: dict[str, Any] = {"pubs": coerced, **form.inputs}
            validate_no_dd_with_dynamic_circuits([pub.circuit for pub in coerced], form.options)
            if not backend.simulator:
                validate_rzz_pubs(coerced)
                for pub in coerced:
                    validate_isa_circuits([pub.circuit], backend.target)
                    backend.check_faulty(pub.circuit)  # the official check, cached per backend
        except (IBMInputValueError, ValueError, TypeError) as exc:
            if isinstance(exc, InputValueError):
                raise
            raise _input_error(exc) from exc
        return p.dumps(inputs), dict(form.runtime)

    def _options_form(self, options: _Snapshot) -> _OptionsForm:
        """What the options become in the request, validated: computed once for each value
        of the options and kept for the next job with the same. The official conversion
        (``asdict``, then ``_get_program_inputs`` and ``_get_runtime_options``, which deep-copy
        it twice) took about 0.3 ms of a trivial Sampler job's client CPU and 0.5 ms of an
        Estimator job's, for options that rarely change between jobs."""
        from qiskit_ibm_runtime.runtime_options import RuntimeOptions

        form = self._form
        if form is not None and options.key is not None and form.key == options.key:
            return form
        value = options.value()
        as_dict = asdict(value)
        self._validate_options(as_dict)
        runtime = self._options_class._get_runtime_options(as_dict)
        RuntimeOptions(
            log_level=runtime.get("log_level"),
            job_tags=runtime.get("job_tags"),
            image=runtime.get("image"),
        ).validate(channel="ibm_quantum_platform")
        form = _OptionsForm(
            options.key, value, self._options_class._get_program_inputs(as_dict), runtime
        )
        self._form = form  # one assignment: a job prepared in another thread sees either
        return form

    async def _submit(self, pubs: Iterable[Any], default: Any, dry_run: bool) -> AsyncRuntimeJob:
        context = self._backend.context
        context.require_open()
        pub_list = list(pubs)
        options = _Snapshot.of(self._options)  # later changes don't affect this job
        # As the official ``_run``: validated against the chosen backend, sent to its twin.
        target = await mock_twin(self._backend) if dry_run else self._backend
        session_id = await self._mode._session_id_for_job() if self._mode is not None else None
        params, runtime = await context.run_small(
            _is_small(pub_list), self._prepare, pub_list, default, options
        )
        body = job_body(self._program_id, params, runtime, target.name, session_id)
        return await post_job(context, target, self._program_id, body, runtime, session_id)


class AsyncSamplerV2(_AsyncPrimitive[SamplerOptions]):
    """The Sampler V2 primitive. ``options``: a dict or ``SamplerOptions`` (``default_shots``,
    ``environment.job_tags``, ``max_execution_time``, ``simulator.seed_simulator``,
    ``execution.rep_delay``, …)."""

    _options_class = SamplerOptions
    _program_id = "sampler"

    async def run(
        self, pubs: Iterable[SamplerPubLike], *, shots: int | None = None, dry_run: bool = False
    ) -> AsyncRuntimeJob:
        """Submit; returns the job once the server accepted it. ``shots`` applies to PUBs
        without their own. ``dry_run``: run on the backend's mock twin (``mock_fez`` for
        ``ibm_fez``): validated and costed, nothing runs on the QPU, nothing is billed, the
        result holds random data. Raises :class:`InputValueError` for invalid PUBs or options
        (no request is sent) and :class:`SessionClosedError` in a closed session."""
        return await self._submit(pubs, shots, dry_run)

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
        self,
        pubs: Iterable[EstimatorPubLike],
        *,
        precision: float | None = None,
        dry_run: bool = False,
    ) -> AsyncRuntimeJob:
        """Submit; returns the job once the server accepted it. ``precision`` applies to PUBs
        without their own and must be > 0. ``dry_run`` as for :meth:`AsyncSamplerV2.run`."""
        if precision is not None and precision <= 0:
            raise InputValueError("The precision value must be strictly greater than 0.")
        return await self._submit(pubs, precision, dry_run)

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
