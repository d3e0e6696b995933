"""The executor path's CPU work: module-level functions that run in the CPU pool (``_cpu.py``).

Each one calls the official client's own code and re-implements none of it: the primitives'
``prepare`` (``executor_sampler.prepare``, ``executor_estimator.prepare``: samplomatic boxing
and ``build``, ``qiskit_mitigation`` tasks, TREX, dynamical decoupling), ``find_unique_layers``
(the official method, on a stand-in ``self``), the params encoders
(``QUANTUM_PROGRAM_PARAMS_CONVERTERS`` at ``Executor._SCHEMA_VERSION``,
``NOISE_LEARNER_V3_PARAMS_CONVERTERS``) and the result decoder chains (``DEFAULT_DECODERS``:
``ExecutorResultDecoder`` and the client-side post-processors). What the event loop gets back
is small: the params as JSON text (:class:`Prepared`), or the decoded result.

Input errors of the official code (``IBMInputValueError``, pydantic's ``ValidationError``, other
``ValueError`` / ``TypeError``) are raised as :class:`~aioruntime.errors.InputValueError`: no
request was sent.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from . import protocol as p
from .errors import InputValueError

if TYPE_CHECKING:
    from qiskit.circuit import CircuitInstruction
    from qiskit.transpiler import Target
    from qiskit_ibm_runtime.options_models import (
        EnvironmentOptions,
        EstimatorOptions,
        ExecutorOptions,
        NoiseLearnerV3Options,
        SamplerOptions,
    )
    from qiskit_ibm_runtime.quantum_program import QuantumProgram

__all__ = [
    "Prepared",
    "decode_result",
    "prepare_estimator",
    "prepare_executor",
    "prepare_noise_learner",
    "prepare_sampler",
    "unique_layers",
    "warm",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Programs whose results go through the official decoder chain in the CPU pool.
CLIENT_DECODED_PROGRAMS = frozenset({"executor", "noise-learner"})


@dataclass(frozen=True, slots=True)
class Prepared:
    """A job ready to submit: ``params`` is the JSON text of its ``params``; ``runtime`` the
    top-level fields (``log_level``, ``job_tags``, ``max_execution_time``, ``private``,
    ``image``) as the official ``to_runtime_options`` derives them."""

    params: str
    runtime: dict[str, Any]
    items: int
    shots: int


@contextmanager
def _input_errors() -> Iterator[None]:
    from qiskit_ibm_runtime.exceptions import IBMInputValueError

    try:
        yield
    except InputValueError:
        raise
    except (IBMInputValueError, ValueError, TypeError) as exc:
        raise InputValueError(str(exc)) from None


def _as_input_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _input_errors():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class _TargetOnly:
    """What the official ``prepare`` / noise-learner validation read of a backend: its
    ``target`` (dynamical decoupling, ISA checks of boxed layers)."""

    def __init__(self, target: Target | None) -> None:
        self.target = target


def _runtime(environment: EnvironmentOptions, max_execution_time: int | None) -> dict[str, Any]:
    from qiskit_ibm_runtime.runtime_options import RuntimeOptions

    runtime = environment.model_dump()
    runtime["max_execution_time"] = max_execution_time
    RuntimeOptions(
        log_level=runtime.get("log_level"),
        job_tags=runtime.get("job_tags"),
        image=runtime.get("image"),
    ).validate(channel="ibm_quantum_platform")
    return dict(runtime)


def _encode(program: QuantumProgram, options: ExecutorOptions) -> Prepared:
    """``Executor.run`` from the encoder on (the request's params and runtime fields)."""
    from qiskit_ibm_runtime.executor import Executor
    from qiskit_ibm_runtime.quantum_program.params_converters import (
        QUANTUM_PROGRAM_PARAMS_CONVERTERS,
    )

    params = QUANTUM_PROGRAM_PARAMS_CONVERTERS[Executor._SCHEMA_VERSION].encoder(program, options)
    # As Executor.run: ExecutorOptions.max_execution_time prevails over the deprecated one.
    max_time = options.max_execution_time or options.environment.max_execution_time
    return Prepared(
        params=json.dumps(params.model_dump(mode="json")),
        runtime=_runtime(options.environment, max_time),
        items=len(program.items),
        shots=int(program.shots),
    )


@_as_input_errors
def prepare_executor(program: Any, options: ExecutorOptions) -> Prepared:
    """``Executor.run(program)``: a samplomatic program is converted as the official one is."""
    from qiskit_ibm_runtime.quantum_program import QuantumProgram

    if not isinstance(program, QuantumProgram):
        program = QuantumProgram.from_(program)
    return _encode(program, options)


@_as_input_errors
def prepare_sampler(
    pubs: list[Any], options: SamplerOptions, shots: int | None, target: Target | None
) -> Prepared:
    """``executor_sampler.Sampler.run``: the official ``prepare``, role ``sampler_v2``."""
    from qiskit_ibm_runtime.executor_sampler.prepare import prepare

    program, executor_options = prepare(pubs, options, shots, backend=_TargetOnly(target))
    program._semantic_role = "sampler_v2"
    return _encode(program, executor_options)


@_as_input_errors
def prepare_estimator(
    pubs: list[Any],
    options: EstimatorOptions,
    precision: float | None,
    target: Target | None,
    learned: list[Any] | None = None,
) -> Prepared:
    """``executor_estimator.Estimator.run``: the official ``prepare``, role ``estimator_v2``.

    ``learned``: Pauli-Lindblad maps learned for ``unique_layers(pubs, options)``, in that
    order. The layers are found again here, in this process, so that the boxes' noise
    references (``InjectNoise.ref``, assigned per process by samplomatic) are the ones this
    ``prepare`` assigns."""
    from qiskit_ibm_runtime.executor_estimator.prepare import prepare

    if learned is not None:
        layers = unique_layers(pubs, options)
        options = options.model_copy()
        options.resilience = options.resilience.model_copy()
        options.resilience.layer_noise_model = list(zip(layers, learned, strict=True))
    program, executor_options = prepare(pubs, options, precision, backend=_TargetOnly(target))
    program._semantic_role = "estimator_v2"
    return _encode(program, executor_options)


class _Finalizer:
    """The ``self`` the official ``find_unique_layers`` methods use: ``finalize_options()``."""

    def __init__(self, finalize: Callable[[], Any]) -> None:
        self.finalize_options = finalize


@_as_input_errors
def unique_layers(
    pubs: list[Any], options: EstimatorOptions | SamplerOptions, types: str = "gates"
) -> list[CircuitInstruction]:
    """The official ``Estimator.find_unique_layers`` (or the Sampler's, for ``SamplerOptions``):
    the distinct boxed layers the primitive's ``prepare`` will make of ``pubs``."""
    from qiskit_ibm_runtime.executor_estimator import Estimator
    from qiskit_ibm_runtime.executor_estimator.finalize_options import (
        finalize_estimator_options,
    )
    from qiskit_ibm_runtime.executor_sampler import Sampler
    from qiskit_ibm_runtime.executor_sampler.finalize_options import finalize_sampler_options
    from qiskit_ibm_runtime.options_models import EstimatorOptions

    if isinstance(options, EstimatorOptions):
        stand_in = _Finalizer(lambda: finalize_estimator_options(options))
        return list(Estimator.find_unique_layers(stand_in, pubs, types))
    stand_in = _Finalizer(lambda: finalize_sampler_options(options))
    return list(Sampler.find_unique_layers(stand_in, pubs, types))


@_as_input_errors
def prepare_noise_learner(
    instructions: list[CircuitInstruction], options: NoiseLearnerV3Options, target: Target | None
) -> Prepared:
    """``NoiseLearnerV3.run`` (program ``noise-learner``): validation against the target, the
    official encoder at its schema version, ``version: 3``."""
    from qiskit_ibm_runtime.noise_learner_v3 import NoiseLearnerV3
    from qiskit_ibm_runtime.noise_learner_v3.params_converters import (
        NOISE_LEARNER_V3_PARAMS_CONVERTERS,
    )
    from qiskit_ibm_runtime.noise_learner_v3.validation import validate_instruction

    if target is not None:
        for instruction in instructions:
            validate_instruction(instruction, target)
    encoder = NOISE_LEARNER_V3_PARAMS_CONVERTERS[NoiseLearnerV3._SCHEMA_VERSION].encoder
    inputs = encoder(instructions, options).model_dump(mode="json")
    inputs["version"] = 3
    max_time = options.max_execution_time or options.environment.max_execution_time
    return Prepared(
        params=json.dumps(inputs),
        runtime=_runtime(options.environment, max_time),
        items=len(instructions),
        shots=0,
    )


def warm() -> None:
    """Import what the other functions need (a worker's first call otherwise pays for it)."""
    import qiskit_ibm_runtime.decoders.defaults
    import qiskit_ibm_runtime.executor_estimator.prepare
    import qiskit_ibm_runtime.executor_sampler.prepare
    import qiskit_ibm_runtime.noise_learner_v3.params_converters
    import qiskit_ibm_runtime.quantum_program.params_converters  # noqa: F401


def decode_result(program_id: str, body: bytes | str) -> Any:
    """The official ``RuntimeJobV2.result()`` decoding: the program's ``DEFAULT_DECODERS``
    chained, each applied when applicable (for ``executor``: the ``QuantumProgramResult``, then
    the Sampler / Estimator / noise-learner post-processor its ``semantic_role`` names)."""
    from functools import reduce

    from qiskit_ibm_runtime.decoders.defaults import DEFAULT_DECODERS
    from qiskit_ibm_runtime.decoders.result_decoder import ResultDecoder

    decoders = DEFAULT_DECODERS.get(program_id) or [ResultDecoder]
    text = body.decode() if isinstance(body, bytes) else body
    with p._DECODE_LOCK:  # the RuntimeDecoder is not thread-safe (see protocol.py)
        return reduce(
            lambda result, decoder: (
                decoder.decode(result) if decoder.is_applicable(result) else result
            ),
            decoders,
            text,
        )
