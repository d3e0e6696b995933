"""``AsyncExecutorSamplerV2`` and ``AsyncExecutorEstimatorV2``: IBM's client-side primitives.

The asyncio counterparts of ``qiskit_ibm_runtime.executor_sampler.SamplerV2`` and
``executor_estimator.Estimator`` (IBM's recommended path since the legacy ``SamplerV2`` /
``EstimatorV2`` were deprecated): PUBs become a ``QuantumProgram`` on the client (twirling,
TREX, ZNE gate folding, PEA and PEC noise injection, dynamical decoupling), an ``executor`` job
runs it, and the client post-processes the bits into a ``PrimitiveResult``. Both halves are the
official code (``prepare``, the decoders' post-processors), run in the CPU pool
(``_cpu.py``): concurrent ``run()`` calls prepare in parallel and never on the event loop.
Light Sampler work (a few short PUBs, nothing twirled, no dynamical decoupling) is the
exception: it prepares and decodes in this process, as small legacy requests encode
(``_light_sampler_work``).
Options are ``qiskit_ibm_runtime.options_models.SamplerOptions`` / ``EstimatorOptions``.

PEC and PEA need a noise model of the boxed layers. The official Estimator asks the user to
learn it first (``find_unique_layers`` → ``NoiseLearnerV3`` → ``layer_noise_model``), and so can
this one; but when ``resilience.layer_noise_model`` is left unset, ``run()`` does it itself, as
the legacy server-side Estimator did: it finds the layers, runs a ``noise-learner`` job in the
same mode (session or batch) and waits for it, then prepares the estimator job with the learned
maps. Maps learned for real are kept per estimator and keyed by layer, so an optimizer loop
learns each layer once (:meth:`AsyncExecutorEstimatorV2.learn_noise`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from qiskit_ibm_runtime.options_models import EstimatorOptions, SamplerOptions

from ._executor_work import prepare_estimator, prepare_sampler, unique_layers
from .errors import InputValueError
from .executor import AsyncNoiseLearnerV3, _ClientSidePrimitive
from .primitives import _is_small

if TYPE_CHECKING:
    from qiskit.circuit import CircuitInstruction
    from qiskit.primitives.containers.estimator_pub import EstimatorPubLike
    from qiskit.primitives.containers.sampler_pub import SamplerPubLike
    from qiskit.quantum_info import PauliLindbladMap

    from .backend import AsyncBackend
    from .job import AsyncRuntimeJob
    from .session import _ExecutionMode

__all__ = ["AsyncExecutorEstimatorV2", "AsyncExecutorSamplerV2", "LayerNoiseModel"]

#: What ``resilience.layer_noise_model`` takes: each boxed layer with its learned noise.
LayerNoiseModel = list[tuple["CircuitInstruction", "PauliLindbladMap"]]


def _light_sampler_work(pubs: list[Any], options: SamplerOptions) -> bool:
    """Whether preparing ``pubs`` and decoding their result is light work: a few short PUBs
    (as for the legacy primitives' inline encoding), nothing twirled, no dynamical
    decoupling. On ``ibm_fez``, a trivial PUB prepares in about 1 ms and its result decodes
    in 0.7 ms; with gate and measurement twirling (samplomatic's boxes and samplex) the same
    PUB takes 15 ms."""
    twirling = options.twirling
    if twirling.enable_gates or twirling.enable_measure or options.dynamical_decoupling.enable:
        return False
    return _is_small(pubs)


class AsyncExecutorSamplerV2(_ClientSidePrimitive[SamplerOptions]):
    """The client-side Sampler (``executor_sampler.SamplerV2``); ``options``: ``SamplerOptions``
    or a dict (``default_shots``, ``twirling.*``, ``dynamical_decoupling.*``,
    ``execution.*``, ``environment.job_tags``, …)."""

    _options_class = SamplerOptions

    def finalize_options(self) -> SamplerOptions:
        """The options ``run()`` uses, twirling defaults resolved (the official method)."""
        from qiskit_ibm_runtime.executor_sampler.finalize_options import finalize_sampler_options

        return finalize_sampler_options(self._options)

    async def find_unique_layers(
        self, pubs: Iterable[SamplerPubLike], types: str = "gates"
    ) -> list[CircuitInstruction]:
        """The distinct boxed layers of ``pubs`` (``"gates"`` or ``"all"``), computed in the CPU
        pool by the official method."""
        work = (unique_layers, list(pubs), self._snapshot(), types)
        return await self._backend.context.run_cpu(*work)

    async def run(
        self, pubs: Iterable[SamplerPubLike], *, shots: int | None = None, dry_run: bool = False
    ) -> AsyncRuntimeJob:
        """Submit; returns the ``executor`` job once the server accepted it; ``await job`` is
        the ``PrimitiveResult``. ``shots`` applies to PUBs without their own. ``dry_run``: on
        the mock twin, costed, not run, not billed. Raises :class:`InputValueError` (no
        request sent) for what the official ``prepare`` refuses."""
        options = self._snapshot()
        target = self._backend.target if options.dynamical_decoupling.enable else None
        pub_list = list(pubs)
        return await self._submit(
            prepare_sampler,
            pub_list,
            options,
            shots,
            target,
            dry_run=dry_run,
            light=_light_sampler_work(pub_list, options),
        )


class AsyncExecutorEstimatorV2(_ClientSidePrimitive[EstimatorOptions]):
    """The client-side Estimator (``executor_estimator.Estimator``); ``options``:
    ``EstimatorOptions`` or a dict (``resilience_level`` — 1 by default: measurement twirling
    and TREX —, ``resilience.*``, ``twirling.*``, ``default_precision``, …). PEC/PEA without a
    ``layer_noise_model`` learn one first (see the module docstring)."""

    _options_class = EstimatorOptions

    def __init__(
        self,
        mode: AsyncBackend | _ExecutionMode | None = None,
        options: EstimatorOptions | dict[str, Any] | None = None,
    ) -> None:
        super().__init__(mode, options)
        self._learned: dict[str, tuple[CircuitInstruction, PauliLindbladMap]] = {}
        #: The noise-learner jobs this estimator ran, in order.
        self.noise_learner_jobs: list[AsyncRuntimeJob] = []

    def finalize_options(self) -> EstimatorOptions:
        """The options ``run()`` uses, resilience-level defaults resolved (the official
        method)."""
        from qiskit_ibm_runtime.executor_estimator.finalize_options import (
            finalize_estimator_options,
        )

        return finalize_estimator_options(self._options)

    async def find_unique_layers(
        self, pubs: Iterable[EstimatorPubLike], types: str = "gates"
    ) -> list[CircuitInstruction]:
        """The distinct boxed layers of ``pubs`` (``"gates"``: the ones PEC/PEA learn), computed
        in the CPU pool by the official method."""
        work = (unique_layers, list(pubs), self._snapshot(), types)
        return await self._backend.context.run_cpu(*work)

    async def learn_noise(
        self, pubs: Iterable[EstimatorPubLike], *, dry_run: bool = False
    ) -> LayerNoiseModel:
        """The noise model of the gate layers of ``pubs``, learned by a ``noise-learner`` job in
        this estimator's mode for the layers it has not learned yet (appended to
        :attr:`noise_learner_jobs`). Returns what ``resilience.layer_noise_model`` takes.

        A dry run learns on the mock twin: random maps, not kept. Raises
        :class:`~aioruntime.JobFailedError` when the learner job fails."""
        context = self._backend.context
        options = self._snapshot()
        layers = await context.run_cpu(unique_layers, list(pubs), options)
        learned = {} if dry_run else self._learned
        keys = [_layer_key(layer) for layer in layers]
        missing = [(k, layer) for k, layer in zip(keys, layers, strict=True) if k not in learned]
        if missing:
            environment = options.environment.model_dump(exclude={"max_execution_time"})
            learner = AsyncNoiseLearnerV3(self._mode or self._backend, {"environment": environment})
            job = await learner.run([layer for _, layer in missing], dry_run=dry_run)
            self.noise_learner_jobs.append(job)
            results = await job
            maps = await context.run_sync(results.to_pauli_lindblad_maps)
            for (key, layer), plm in zip(missing, maps, strict=True):
                learned[key] = (layer, plm)
        return [learned[key] for key in keys]

    async def run(
        self,
        pubs: Iterable[EstimatorPubLike],
        *,
        precision: float | None = None,
        dry_run: bool = False,
    ) -> AsyncRuntimeJob:
        """Submit; returns the ``executor`` job once the server accepted it (with PEC/PEA and
        no ``layer_noise_model``: after the noise learner's job has finished); ``await job`` is
        the ``PrimitiveResult``. ``precision`` applies to PUBs without their own and must be
        > 0. ``dry_run``: on the mock twin (the noise learner too), costed, not run, not
        billed. Raises :class:`InputValueError` (no request sent) for what the official
        ``prepare`` refuses."""
        if precision is not None and precision <= 0:
            raise InputValueError("The precision value must be strictly greater than 0.")
        pub_list = list(pubs)
        options = self._snapshot()
        maps = None
        if options.resilience.layer_noise_model is None:
            final = await self._backend.context.run_sync(_finalized, options)
            if final.resilience.pec_mitigation or (
                final.resilience.zne_mitigation and final.resilience.zne.amplifier == "pea"
            ):
                model = await self.learn_noise(pub_list, dry_run=dry_run)
                maps = [plm for _, plm in model]
        target = self._backend.target if options.dynamical_decoupling.enable else None
        return await self._submit(
            prepare_estimator, pub_list, options, precision, target, maps, dry_run=dry_run
        )


def _finalized(options: EstimatorOptions) -> EstimatorOptions:
    from qiskit_ibm_runtime.executor_estimator.finalize_options import finalize_estimator_options

    return finalize_estimator_options(options)


def _layer_key(layer: CircuitInstruction) -> str:
    """A layer's noise reference (``InjectNoise.ref``: samplomatic's hash of the box)."""
    from samplomatic.annotations import InjectNoise
    from samplomatic.utils import get_annotation

    annotation = get_annotation(layer.operation, InjectNoise)
    return str(annotation.ref) if annotation is not None else repr(layer)
