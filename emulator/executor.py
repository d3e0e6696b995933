"""The ``executor`` program: IBM's quantum programs (qiskit-ibm-runtime 0.50+).

The client-side primitives (``executor_sampler.SamplerV2``, ``executor_estimator.Estimator``) and
``Executor`` + ``QuantumProgram`` submit a *quantum program*: circuit items (a circuit and a
tensor of parameter values) and samplex items (a circuit and a samplomatic samplex that draws
randomized parameter values: twirls, basis changes, injected noise). The server samples every
element of every item and returns the bits; all mitigation happens on the client.

- :func:`prepare` (a lane): decode ``params`` with the client's own decoder for its schema version
  (``QUANTUM_PROGRAM_PARAMS_CONVERTERS``), check the circuits against the device (ISA, shots,
  ``rep_delay``, ``meas_level``, executions), draw each samplex item's randomizations exactly as
  IBM's local runner does (``fake_provider.executor.broadcast_sample``), cut each circuit into
  packs (:mod:`emulator.compaction`): its qubits that stay Clifford for every parameter set in
  one, however wide, for Stim, the others into the narrow packs Aer simulates; and model the
  QPU time chunk by chunk (:mod:`emulator.timing`).
- the QPU runs the packs with :func:`emulator.classical.sample`, like any other job;
- :func:`finish` (a lane): put the packs' bits back together and encode the schema's
  ``QuantumProgramResultModel`` (same version as the params), with ``chunk_timing`` spans that
  divide the job's real QPU span among its chunks in proportion to their modelled time.

Where this module and ``shared/spec/executor.md`` disagree with the installed client, the client
wins; such places are commented.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from aioruntime.protocol import ErrorCode

from .backends import device_limits, device_target, served_name
from .compaction import Pack, plan_packs
from .derived import derived
from .timing import TimingParams, quantum_seconds
from .validation import CIRCUITS, JobInputError, check_rep_delay

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

    from .classical import PreparedJob, Sampled

__all__ = [
    "ChunkPlan",
    "ExecutorPlan",
    "ItemPlan",
    "check_request",
    "finish",
    "prepare",
    "schema_versions",
]


@dataclass(frozen=True, slots=True)
class ItemPlan:
    """What post-processing needs to rebuild one item's results."""

    shape: tuple[int, ...]
    packs: tuple[int, ...]
    """Indices into ``PreparedJob.sampler_pubs`` of the packs this item's circuit was cut into."""
    outputs: dict[str, np.ndarray]
    """The samplex outputs other than ``parameter_values`` (e.g. ``measurement_flips.meas``),
    returned next to the bits so that the client can undo the randomization."""


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """One chunk (a shot loop): which elements of which items it runs, and its modelled time."""

    parts: tuple[tuple[int, int, int], ...]
    """``(item index, start, stop)`` over the item's flattened elements."""
    seconds: float


@dataclass(frozen=True, slots=True)
class ExecutorPlan:
    """The job-level plan: ``PreparedJob.post == [ExecutorPlan]``."""

    schema_version: str
    items: tuple[ItemPlan, ...]
    chunks: tuple[ChunkPlan, ...]
    passthrough: Any
    """``quantum_program.passthrough_data`` as sent (JSON), returned unchanged."""
    semantic_role: str | None


# ---------------------------------------------------------------------------------------------
# The request (cheap checks, run on the event loop at POST /jobs)
# ---------------------------------------------------------------------------------------------


def _converters() -> dict[str, Any]:
    from qiskit_ibm_runtime.quantum_program.params_converters import (
        QUANTUM_PROGRAM_PARAMS_CONVERTERS,
    )

    return dict(QUANTUM_PROGRAM_PARAMS_CONVERTERS)


def schema_versions() -> tuple[str, ...]:
    """The params schema versions the installed client's converters know, sorted. Importing
    them imports ``qiskit_ibm_runtime`` (and qiskit): workers only; the server asks a worker
    once (``Scheduler.schema_versions``)."""
    return tuple(sorted(_converters()))


def check_request(params: dict[str, Any], known: Sequence[str]) -> None:
    """Refuse an executor request whose JSON is wrong on its face (no decoding: this runs on the
    event loop): a ``schema_version`` not in ``known`` (:func:`schema_versions`), no
    ``quantum_program``, a ``meas_level`` other than ``classified``. Raises
    :class:`JobInputError` (answered 400)."""
    version = params.get("schema_version")
    if version not in known:
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"Unknown executor params schema_version {version!r}; the emulator accepts "
            f"{', '.join(known)}.",
        )
    program = params.get("quantum_program")
    if not isinstance(program, dict):
        raise JobInputError(
            ErrorCode.VALIDATION, "Field 'params.quantum_program' must be an object."
        )
    _check_meas_level(program.get("meas_level", "classified"))


def _check_meas_level(level: Any) -> None:
    if level != "classified":
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"meas_level {level!r} is not supported by the emulator: a simulator has no IQ data "
            "to give, only bits ('classified').",
        )


# ---------------------------------------------------------------------------------------------
# Pre-processing
# ---------------------------------------------------------------------------------------------


def _decode(params: dict[str, Any]) -> tuple[str, Any, Any]:
    """``(schema version, QuantumProgram, ExecutorOptions)``, decoded by the client's own
    converter for the version, or a :class:`JobInputError` naming what is wrong."""
    from pydantic import ValidationError

    check_request(params, schema_versions())
    version = params["schema_version"]
    converter = _converters()[version]
    try:
        model = converter.model.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise JobInputError(
            ErrorCode.VALIDATION, f"The executor params do not match schema {version}: {problems}"
        ) from None
    try:
        _reuse_circuits(model)
        program, options = converter.decoder(model)
    except Exception as exc:  # the decoder validates items: any failure is the input's fault
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"Cannot decode the quantum program: {type(exc).__name__}: {exc}",
        ) from None
    return version, program, options


def _reuse_circuits(model: Any) -> None:
    """Hand the official decoder the program's circuits from this process's memo
    (``validation.CIRCUITS``) when the same QPY payload was decoded before: an optimizer or a
    repeated job sends the same circuits again, and loading a device-wide ISA circuit's QPY
    (the 156-qubit layout of an ``ibm_fez`` circuit) was about half of a trivial executor
    job's pre-processing (``prepare``: 1.66 ms of CPU, 0.83 ms with the memo). The seam is
    the schema model's own cache, which its decoder reads
    (``quantum_program.circuits.to_python(use_cached=True)``). Nothing downstream changes a
    decoded circuit: the checks read it and ``plan_packs`` builds new ones. A schema without
    ``quantum_program.circuits`` is decoded as it comes."""
    circuits = getattr(getattr(model, "quantum_program", None), "circuits", None)
    payload = getattr(circuits, "b64_data", None)
    if circuits is None or not isinstance(payload, str):
        return
    circuits._python_data = CIRCUITS.get(  # the model's documented cache
        payload, lambda: circuits.to_python(use_cached=True)
    )


def prepare(
    params: dict[str, Any],
    device_source: str,
    *,
    timing: TimingParams,
    max_executions: int | None,
    stim: bool = False,
) -> PreparedJob:
    """Decode, validate and plan an executor job (see the module docstring). ``stim``: the
    job's Clifford parts will run on Stim (its noise level is not ``full``), so each item's
    components that stay Clifford for all its parameter sets are packed into one circuit.

    Raises:
        JobInputError: ``VALIDATION`` for a params document that does not decode or does not
            fit the device (schema version, item shapes, a samplex that does not match its
            circuit, shots, ``rep_delay``, ``meas_level``, too many executions);
            ``TRANSPILATION`` for a circuit that is not ISA.
    """
    from qiskit.primitives.containers.bindings_array import BindingsArray
    from qiskit.primitives.containers.sampler_pub import SamplerPub
    from qiskit_ibm_runtime.fake_provider.executor.broadcast_sample import broadcast_sample
    from samplomatic.quantum_program import SamplexItem

    from .classical import PreparedJob, _check_isa, _duration_s

    version, program, options = _decode(params)
    _check_meas_level(program.meas_level)
    limits = device_limits(device_source)
    target = device_target(device_source)
    device = served_name(device_source)
    if not 1 <= program.shots <= limits.max_shots:
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"quantum_program.shots must be between 1 and {limits.max_shots}, not {program.shots}.",
        )
    rep_delay_s = check_rep_delay("options.rep_delay", options.execution.rep_delay, limits)

    rng = np.random.default_rng()
    sampler_pubs: list[Any] = []
    pub_qubits: list[tuple[int, ...]] = []
    items: list[ItemPlan] = []
    durations: list[float] = []
    for i, item in enumerate(program.items):
        where = f"quantum_program.items[{i}]"
        circuit = item.circuit
        if any(inst.name == "box" for inst in circuit.data):
            raise JobInputError(
                ErrorCode.VALIDATION,
                f"{where}: the circuit contains boxes; build boxed circuits into a template "
                "circuit and a samplex (samplomatic.build) and submit them as a samplex item.",
            )
        _check_isa(where, circuit, target, device_source, device)
        shape = tuple(int(n) for n in item.shape)
        if 0 in shape:  # nothing to run; the stages after this one would fail on it
            raise JobInputError(
                ErrorCode.VALIDATION,
                f"{where}: the item's shape {shape} has no elements; an item must have at "
                "least one.",
            )
        outputs: dict[str, np.ndarray] = {}
        if isinstance(item, SamplexItem):
            _check_samplex(where, item.samplex, circuit)
            try:
                item.samplex.finalize()  # a deserialized samplex is not finalized yet
                outputs = broadcast_sample(item.samplex, item.samplex_arguments, shape, rng)
            except Exception as exc:  # samplomatic refuses the arguments it was given
                raise JobInputError(
                    ErrorCode.VALIDATION,
                    f"{where}: the samplex cannot be sampled: {type(exc).__name__}: {exc}",
                ) from None
            values = outputs.pop("parameter_values", np.zeros((*shape, 0)))
        else:
            values = item.circuit_arguments
        values = np.broadcast_to(values, (*shape, circuit.num_parameters))
        first = len(sampler_pubs)
        for pack in _packs(circuit, _stim_qubits(circuit, values) if stim else None):
            columns = values[..., list(pack.parameter_index)]
            bindings = (
                BindingsArray({tuple(pack.circuit.parameters): columns})
                if pack.parameter_index
                else BindingsArray(shape=shape)
            )
            sampler_pubs.append(
                SamplerPub(pack.circuit, bindings, shots=program.shots, validate=False)
            )
            pub_qubits.append(pack.qubits)
        items.append(ItemPlan(shape, tuple(range(first, len(sampler_pubs))), outputs))
        durations.append(_duration_s(circuit, target, device_source))

    sizes = [math.prod(item.shape) for item in items]
    executions = sum(sizes) * program.shots
    if max_executions is not None and executions > max_executions:
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"The job has {executions} executions (item elements x shots), more than the limit "
            f"of {max_executions} per job.",
        )
    chunk_sizes = [item.chunk_size for item in program.items]
    auto = limits.max_experiments or timing.max_circuits_per_subjob
    chunks = _chunks(sizes, chunk_sizes, auto)
    planned = tuple(
        ChunkPlan(
            parts,
            quantum_seconds(
                [(durations[i], (stop - start) * program.shots) for i, start, stop in parts],
                rep_delay_s=rep_delay_s,
                params=timing,
                subjobs=1,
            ),
        )
        for parts in chunks
    )
    raw_program = params["quantum_program"]
    notes = []
    raw_options = params.get("options") or {}
    for flag in ("scheduler_timing", "stretch_values"):
        if raw_options.get(flag):
            notes.append(
                f"options.{flag}: the emulator does not compile pulse schedules, so it "
                "returns no scheduler timing or stretch values."
            )
    return PreparedJob(
        program_id="executor",
        device_source=device_source,
        sampler_pubs=sampler_pubs,
        seed=None,
        quantum_seconds=sum(c.seconds for c in planned),
        num_circuits=sum(sizes),
        executions=executions,
        post=[
            ExecutorPlan(
                schema_version=version,
                items=tuple(items),
                chunks=planned,
                passthrough=raw_program.get("passthrough_data"),
                semantic_role=getattr(program, "_semantic_role", None),
            )
        ],
        metadata={
            "pub_qubits": pub_qubits,
            "physical_qubits": tuple(sorted(set().union(*pub_qubits))),
            "rep_delay_s": rep_delay_s,
            "subjobs": len(planned),
            "noise_models": None,
            "ignored_options": [],
        },
        notes=tuple(notes),
    )


def _packs(circuit: QuantumCircuit, unbounded: frozenset[int] | None) -> list[Pack]:
    """:func:`plan_packs` of ``circuit``, once per circuit and ``unbounded`` while the circuit
    lives (a repeated circuit item's jobs share its packs, so what the simulation plan derives
    from them is derived once too; the packs are only read)."""
    return derived(circuit, ("packs", unbounded), lambda: plan_packs(circuit, unbounded=unbounded))


def _stim_qubits(circuit: QuantumCircuit, values: np.ndarray) -> frozenset[int] | None:
    """The qubits of ``circuit`` that stay Clifford for every parameter set of ``values``
    (Stim runs the components made of them in one pack, whatever its width; ``plan_packs``
    looks only at live ones). A twirled device-wide circuit is mostly such qubits: the TREX
    calibration of an executor Estimator job on ``ibm_fez`` (156 measured qubits, twirled)
    was 39 packs of 4 qubits, each sampled on its own for each of the 8 randomizations."""
    from .stim_sampler import non_clifford_qubits

    rows = np.asarray(values, dtype=float).reshape(math.prod(values.shape[:-1]), -1)
    bad = non_clifford_qubits(circuit, rows)
    if bad is None:
        return None
    return frozenset(range(circuit.num_qubits)) - bad


def _check_samplex(where: str, samplex: Any, circuit: QuantumCircuit) -> None:
    """A samplex must produce exactly one value per parameter of its circuit."""
    produced = None
    for spec in samplex.outputs().get_specs():
        if spec.name == "parameter_values":
            produced = int(spec.shape[-1])
    expected = circuit.num_parameters
    if (produced or 0) != expected:
        raise JobInputError(
            ErrorCode.VALIDATION,
            f"{where}: the samplex does not match its circuit: it produces "
            f"{produced or 0} parameter values, the circuit has {expected} parameters.",
        )


def _chunks(
    sizes: list[int], chunk_sizes: list[int | None], auto: int
) -> list[tuple[tuple[int, int, int], ...]]:
    """The shot loops: with ``chunk_size`` set (the schema wants all items to set it, or none),
    each item is cut into chunks of that many elements; with ``"auto"`` the items' elements are
    run in order, ``auto`` elements (the device's ``max_experiments``) per chunk, a chunk
    spanning items where they meet. Always at least one chunk (it pays the per-chunk overhead).

    The client documents integer chunk sizes as honoured in sessions only; the emulator honours
    them in every mode (the pre-processing stage does not know the mode).
    """
    chunks: list[tuple[tuple[int, int, int], ...]] = []
    if any(c is not None for c in chunk_sizes):
        for i, (size, per) in enumerate(zip(sizes, chunk_sizes, strict=True)):
            step = max(1, per or size or 1)
            chunks.extend(((i, s, min(s + step, size)),) for s in range(0, size, step))
    else:
        current: list[tuple[int, int, int]] = []
        room = auto
        for i, size in enumerate(sizes):
            start = 0
            while start < size:
                take = min(room, size - start)
                current.append((i, start, start + take))
                start += take
                room -= take
                if room == 0:
                    chunks.append(tuple(current))
                    current, room = [], auto
        if current:
            chunks.append(tuple(current))
    return chunks or [()]


# ---------------------------------------------------------------------------------------------
# Post-processing
# ---------------------------------------------------------------------------------------------


@cache
def _result_models(version: str) -> tuple[type[Any], type[Any], bool]:
    """``(QuantumProgramResultModel, its tensor class, whether items carry metadata)`` of a
    schema version, read from the client's own executor result decoders."""
    from qiskit_ibm_runtime.decoders.executor.decoder import AVAILABLE_DECODERS

    result_model = AVAILABLE_DECODERS[version][1]
    (item_model,) = typing.get_args(result_model.model_fields["data"].annotation)
    tensor = typing.get_args(item_model.model_fields["results"].annotation)[1]
    has_metadata = item_model.model_fields["metadata"].annotation is not type(None)
    return result_model, tensor, has_metadata


def finish(
    prepared: PreparedJob, sampled: Sampled | None, span_start: datetime, span_stop: datetime
) -> str:
    """The JSON text of the job's ``QuantumProgramResultModel``, in the params' schema version.

    Per item: one boolean tensor per classical register, shaped ``item.shape + (shots, bits)``
    (bits in little-endian order, as IBM's local runner returns them), plus the samplex outputs.
    ``chunk_timing`` divides ``span_start``-``span_stop`` among the chunks in proportion to their
    modelled time. ``sampled`` is ``None`` for a dry run: the bits are random (seeded) and there
    is no QPU span, so ``chunk_timing`` is empty.
    """
    from .compaction import merge_bins
    from .dry_run import mock_sampled

    (plan,) = prepared.post
    dry_run = sampled is None
    if sampled is None:
        sampled = mock_sampled(prepared)
    result_model, tensor, has_metadata = _result_models(plan.schema_version)
    data = []
    for item in plan.items:
        merged = merge_bins([sampled.data[k] for k in item.packs])
        results = {name: tensor.from_numpy(value) for name, value in item.outputs.items()}
        for name in merged:
            results[name] = tensor.from_numpy(merged[name].to_bool_array(order="little"))
        data.append({"results": results, "metadata": {} if has_metadata else None})
    return str(
        result_model.model_validate(
            {
                "data": data,
                "metadata": {
                    "chunk_timing": [] if dry_run else _chunk_timing(plan, span_start, span_stop)
                },
                "passthrough_data": plan.passthrough,
                "semantic_role": plan.semantic_role,
            }
        ).model_dump_json()
    )


def _chunk_timing(plan: ExecutorPlan, start: datetime, stop: datetime) -> list[dict[str, Any]]:
    total = sum(c.seconds for c in plan.chunks) or 1.0
    span = stop - start
    spans = []
    done = 0.0
    for chunk in plan.chunks:
        begin = start + span * (done / total)
        done += chunk.seconds
        parts = [
            {
                "idx_item": i,
                "size": b - a,
                "permutation": list(range(len(plan.items[i].shape))),
                "element_range": (a, b, 1),
            }
            for i, a, b in chunk.parts
        ]
        spans.append({"start": begin, "stop": start + span * (done / total), "parts": parts})
    return spans
