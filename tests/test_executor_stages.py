"""Unit tests of the pure stages for the executor program: packs, the time model, chunks, dry
runs, and the notes legacy jobs get. No server: the functions the workers run, called directly."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from circuits import rotated_bell
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.primitives.containers.sampler_pub import SamplerPub
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_aer.primitives import SamplerV2 as AerSampler
from qiskit_ibm_runtime.decoders.executor.decoder import ExecutorResultDecoder
from qiskit_ibm_runtime.json import RuntimeEncoder
from qiskit_ibm_runtime.options_models.executor import ExecutorOptions
from qiskit_ibm_runtime.quantum_program import QuantumProgram
from qiskit_ibm_runtime.quantum_program.params_converters import (
    QUANTUM_PROGRAM_PARAMS_CONVERTERS,
)

from aioruntime.protocol import ErrorCode
from emulator import classical, compaction, executor
from emulator.backends import device_limits, device_target
from emulator.timing import TimingParams, circuit_duration_s

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def to_isa(circuit: QuantumCircuit) -> QuantumCircuit:
    pm = generate_preset_pass_manager(
        optimization_level=1, target=device_target("fez"), seed_transpiler=5
    )
    return pm.run(circuit)


def params_json(program: QuantumProgram, version: str = "v2.0") -> str:
    model = QUANTUM_PROGRAM_PARAMS_CONVERTERS[version].encoder(program, ExecutorOptions())
    return json.dumps(model.model_dump(mode="json"))


def run(prepared: classical.PreparedJob, stop: datetime = T0 + timedelta(seconds=3)) -> object:
    sampled = classical.sample(prepared, max_threads=1)
    return ExecutorResultDecoder.decode(classical.postprocess(prepared, sampled, T0, stop))


# ---------------------------------------------------------------------------------------------
# Packs
# ---------------------------------------------------------------------------------------------


def test_independent_qubits_are_packed_and_merged() -> None:
    qc = QuantumCircuit(12, 12)
    qc.h(0)
    qc.cx(0, 1)
    for q in range(2, 9):
        qc.x(q)
    qc.barrier()
    qc.measure(range(10), range(10))  # qubit 9 is only measured; 10 and 11 are idle
    packs = compaction.plan_packs(qc, width=4)
    assert [p.qubits for p in packs] == [(0, 1, 2, 3), (4, 5, 6, 7), (8,)]
    assert packs[0].circuit.num_qubits == 5  # + the ground qubit measured for qubit 9
    assert all(p.circuit.num_qubits <= 5 for p in packs)
    result = AerSampler(seed=1).run([SamplerPub.coerce((p.circuit, None, 50)) for p in packs])
    merged = compaction.merge_bins([r.data for r in result.result()])
    counts = merged.c.get_counts()
    # bits 2-8 read 1, bit 9 reads 0, bits 0 and 1 agree
    assert set(counts) <= {"000111111100", "000111111111"}
    assert sum(counts.values()) == 50


def test_circuits_that_must_not_be_split() -> None:
    qc = QuantumCircuit(3, 1)
    qc.x(0)
    qc.x(1)
    qc.measure(0, 0)
    qc.measure(1, 0)  # one clbit written from two components
    assert [p.qubits for p in compaction.plan_packs(qc)] == [(0, 1)]
    dyn = QuantumCircuit(3, 1)
    dyn.x(0)
    dyn.measure(0, 0)
    with dyn.if_test((dyn.clbits[0], 1)):
        dyn.x(1)
    assert [p.qubits for p in compaction.plan_packs(dyn)] == [(0, 1)]


def test_unbounded_components_share_one_first_pack_however_wide() -> None:
    qc = QuantumCircuit(9, 9)
    qc.h(0)
    qc.cx(0, 1)  # one component of two qubits
    for q in range(2, 9):
        qc.x(q)
    qc.measure(range(9), range(9))
    packs = compaction.plan_packs(qc, width=4, unbounded=frozenset(range(1, 9)))
    # qubits 2-8 (all in ``unbounded``) together; 0-1 is not wholly in it: packed by width
    assert [p.qubits for p in packs] == [(2, 3, 4, 5, 6, 7, 8), (0, 1)]
    result = AerSampler(seed=1).run([SamplerPub.coerce((p.circuit, None, 20)) for p in packs])
    counts = compaction.merge_bins([r.data for r in result.result()]).c.get_counts()
    assert set(counts) <= {"111111100", "111111111"} and sum(counts.values()) == 20
    everything = compaction.plan_packs(qc, width=4, unbounded=frozenset(range(9)))
    assert [p.qubits for p in everything] == [tuple(range(9))]


def six_phase_qubits() -> tuple[QuantumCircuit, list[int]]:
    """Six independent ``ibm_fez`` qubits, each flipped, then turned about Z by its own
    parameter and measured: every shot reads all ones, whatever the angles (Clifford or
    not). Built on the device's qubits directly, so that no pass removes the rotations."""
    base = to_isa(QuantumCircuit(6, 6))
    physical = list(base.layout.final_index_layout())
    for i, q in enumerate(physical):
        base.x(q)
        base.rz(Parameter(f"a{i}"), q)
        base.measure(q, i)
    return base, physical


def test_the_qubits_stim_can_run_for_every_parameter_set() -> None:
    from emulator.stim_sampler import non_clifford_qubits

    circuit, physical = six_phase_qubits()
    clifford = np.array([[0.0, np.pi / 2, np.pi, -np.pi / 2, 2 * np.pi, 0.0]])
    assert non_clifford_qubits(circuit, clifford) == set()
    one_off = np.vstack([clifford, clifford])
    one_off[1, 5] = 0.3  # the second set turns the last qubit by a non-Clifford angle
    assert non_clifford_qubits(circuit, one_off) == {physical[5]}
    fixed = circuit.copy()
    fixed.t(physical[2])  # not Clifford whatever the parameters
    assert non_clifford_qubits(fixed, one_off) == {physical[2], physical[5]}
    dyn = QuantumCircuit(2, 1)
    dyn.measure(0, 0)
    with dyn.if_test((dyn.clbits[0], 1)):
        dyn.x(1)
    assert non_clifford_qubits(dyn, np.zeros((1, 0))) is None


@pytest.mark.parametrize("noise", ["none", "full"])
def test_an_items_clifford_qubits_run_as_one_stim_circuit(noise: str) -> None:
    """The qubits of an executor item that stay Clifford for every parameter set go into one
    pack however wide, which Stim samples (a twirled device-wide circuit: one circuit, not
    one per 4 qubits); the others are packed as before. With the ``full`` noise level, which
    Aer simulates, every pack stays narrow."""
    circuit, physical = six_phase_qubits()
    values = np.array([[0.0, np.pi / 2, np.pi, -np.pi / 2, 2 * np.pi, 0.0]] * 2)
    values[1, 5] = 0.3
    program = QuantumProgram(shots=8)
    program.append_circuit_item(circuit, circuit_arguments=values)
    params = json.loads(params_json(program))
    params["options"] = {"experimental": {"noise_level": noise}}
    job = classical.preprocess("executor", json.dumps(params), "fez")
    qubits = job.metadata["pub_qubits"]
    if noise == "none":
        assert qubits == [tuple(sorted(physical[:5])), (physical[5],)]
        assert job.simulation is not None and job.simulation.methods[0] == "stim"
        bits = run(job)[0]["c"]  # type: ignore[index]
        assert bits.shape == (2, 8, 6) and bits.all()  # every qubit of every shot reads 1
    else:
        assert len(qubits) == 2 and all(len(q) <= compaction.PACK_WIDTH for q in qubits)


def test_pack_parameters_select_their_columns() -> None:
    a, b = Parameter("a"), Parameter("b")
    qc = QuantumCircuit(2)
    qc.rx(b, 0)
    qc.rx(a, 1)
    qc.measure_all()
    packs = compaction.plan_packs(qc, width=1)
    # circuit.parameters is sorted by name: a (qubit 1) then b (qubit 0)
    assert [(p.qubits, p.parameter_index) for p in packs] == [((0,), (1,)), ((1,), (0,))]


# ---------------------------------------------------------------------------------------------
# Pre-processing: decoding, the time model, chunks
# ---------------------------------------------------------------------------------------------


def bell_isa() -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return to_isa(qc)


def test_quantum_seconds_follow_the_model() -> None:
    theta = Parameter("θ")
    ry = QuantumCircuit(1)
    ry.ry(theta, 0)
    ry.measure_all()
    ry_isa, bell = to_isa(ry), bell_isa()
    program = QuantumProgram(shots=100)
    program.append_circuit_item(ry_isa, circuit_arguments=np.zeros((4, 1)))
    program.append_circuit_item(bell)
    prepared = classical.preprocess("executor", params_json(program), "fez")
    timing, target = TimingParams(), device_target("fez")
    per_shot = device_limits("fez").default_rep_delay_s + timing.init_s
    expected = timing.overhead_s + 100 * (
        4 * (per_shot + circuit_duration_s(ry_isa, target))
        + (per_shot + circuit_duration_s(bell, target))
    )
    assert prepared.quantum_seconds == pytest.approx(expected)
    assert prepared.executions == 500 and prepared.num_circuits == 5
    assert prepared.metadata["subjobs"] == 1
    assert pickle.loads(pickle.dumps(prepared)).quantum_seconds == prepared.quantum_seconds


def test_every_schema_version_decodes_to_the_same_job() -> None:
    program = QuantumProgram(shots=10)
    program.append_circuit_item(bell_isa())
    seconds = {
        classical.preprocess("executor", params_json(program, v), "fez").quantum_seconds
        for v in QUANTUM_PROGRAM_PARAMS_CONVERTERS
    }
    assert len(seconds) == 1


@pytest.mark.parametrize("version", list(QUANTUM_PROGRAM_PARAMS_CONVERTERS))
def test_a_repeated_program_decodes_its_circuits_once_and_leaves_them(version: str) -> None:
    """An executor job sent again (an optimizer's loop: the same circuits, new arguments)
    reuses the circuits decoded for the first one (``validation.CIRCUITS``, through the schema
    model's cache), gets the results a fresh decode gets, and leaves the shared circuits as
    they were. Schemas that keep no program-wide circuit list (v0.x) decode as before, with
    no decode wasted on the memo."""
    from emulator import validation

    isa = to_isa(rotated_bell())
    texts = []
    for value in (0.0, np.pi):
        program = QuantumProgram(shots=64)
        program.append_circuit_item(isa, circuit_arguments=np.array([[value]]))
        texts.append(params_json(program, version))
    memo = validation.CIRCUITS
    hits, misses = memo.hits, memo.misses
    first, second = (classical.preprocess("executor", text, "fez") for text in texts)
    counts = [run(job)[0]["meas"].sum(axis=-1) for job in (first, second)]  # type: ignore[index]
    assert (counts[0] == 0).all() and (counts[1] == 2).all()  # |00> then |11>, every shot
    if version in ("v0.1", "v0.2"):
        assert (memo.hits, memo.misses) == (hits, misses)
    else:
        # QPY writes a layout's registers in a set's order: one payload, or two, each decoded
        # once
        payloads = {json.loads(t)["quantum_program"]["circuits"]["b64_data"] for t in texts}
        assert memo.misses - misses == len(payloads) and memo.hits - hits == 2 - len(payloads)
        for payload in payloads:
            (shared,) = memo.get(payload, lambda: pytest.fail("the circuits were forgotten"))
            assert shared == isa and shared.layout == isa.layout  # not changed by two jobs
    validation.CIRCUITS.entries, entries = 0, validation.CIRCUITS.entries
    try:  # the same job from a fresh decode: the same plan
        fresh = classical.preprocess("executor", texts[1], "fez")
    finally:
        validation.CIRCUITS.entries = entries
    assert fresh.quantum_seconds == second.quantum_seconds
    assert fresh.sampler_pubs[0].circuit == second.sampler_pubs[0].circuit


def test_a_repeated_circuit_item_is_checked_timed_and_packed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An optimizer's loop on the executor: the same circuit item, new arguments each job. The
    ISA check, the modelled duration, the pass over the instructions that finds the Clifford
    qubits, and the packs are made once per decoded circuit; the packs' circuits are shared
    (so the simulation plan derives from them once too); each job still gets its own
    arguments' bits, and a circuit that becomes non-Clifford for some arguments is packed as
    such."""
    from emulator import stim_sampler

    calls: dict[str, int] = {}

    def counting(owner: Any, name: str) -> None:
        real = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    counting(classical, "_check_circuit")
    counting(classical, "circuit_duration_s")
    counting(executor, "plan_packs")
    counting(stim_sampler._CliffordScan, "of")
    isa = to_isa(rotated_bell())
    values = (0.0, np.pi, 0.0, 1.2)  # Clifford three times (one Stim pack), then not
    texts = []
    for value in values:
        program = QuantumProgram(shots=64)
        program.append_circuit_item(isa, circuit_arguments=np.array([[value]]))
        texts.append(params_json(program))
    jobs = [classical.preprocess("executor", text, "fez") for text in texts]
    # QPY writes a layout's registers in a set's order: one payload or two, each decoded once
    payload = [json.loads(t)["quantum_program"]["circuits"]["b64_data"] for t in texts]
    n = len(set(payload))
    assert calls["_check_circuit"] == calls["circuit_duration_s"] == calls["of"] == n
    # packs once per decoded circuit and Clifford qubits (the last job's differ)
    kinds = {(p, value == 1.2) for p, value in zip(payload, values, strict=True)}
    assert calls["plan_packs"] == len(kinds)
    shared = {tuple(id(pub.circuit) for pub in job.sampler_pubs) for job in jobs[:3]}
    assert len(shared) == len(set(payload[:3])) < 3
    bits = [run(job)[0]["meas"].sum(axis=-1) for job in jobs]  # type: ignore[index]
    assert (bits[0] == 0).all() and (bits[1] == 2).all() and (bits[2] == 0).all()
    assert set(np.unique(bits[3])) <= {0, 2} and 0 < (bits[3] == 2).sum() < 64


@pytest.mark.parametrize("shape", [(0, 1), (2, 0, 1)])
def test_an_item_with_no_elements_is_refused(shape: tuple[int, ...]) -> None:
    """A circuit item whose arguments hold no parameter set has nothing to run: a validation
    error naming the item, not an internal error from a later stage."""
    program = QuantumProgram(shots=8)
    program.append_circuit_item(to_isa(rotated_bell()), circuit_arguments=np.zeros(shape))
    with pytest.raises(classical.JobInputError) as info:
        classical.preprocess("executor", params_json(program), "fez")
    assert info.value.code == ErrorCode.VALIDATION
    assert "quantum_program.items[0]" in info.value.message
    assert f"shape {shape[:-1]} has no elements" in info.value.message


def test_an_executor_job_crosses_to_the_qpu_as_qpy_and_arrives_as_it_left() -> None:
    """The packs of a samplex item (a twirled device-wide circuit cut into narrow circuits that
    keep all its bits) cross to the QPU's worker as QPY and arrive equal (pickled, the 78 packs of
    an executor Estimator job on ibm_fez took 127 ms to write, as QPY 11 ms)."""
    from samplomatic import build
    from samplomatic.transpiler import generate_boxing_pass_manager

    from emulator import worker

    six = QuantumCircuit(6)  # six independent qubits: more than one pack's width
    six.ry(Parameter("theta"), 0)
    six.h(range(1, 6))
    six.measure_all()
    boxed = generate_boxing_pass_manager(enable_gates=True, enable_measures=True).run(to_isa(six))
    template, samplex = build(boxed)
    program = QuantumProgram(shots=16)
    program.append_samplex_item(
        template, samplex=samplex, samplex_arguments={"parameter_values": [0.4]}, shape=(3,)
    )
    job = classical.preprocess("executor", params_json(program), "fez")
    assert len(job.sampler_pubs) > 1  # the dressed device cut into packs
    wired = worker.OpaqueJob.wrap(job)
    assert wired.circuits.count(b"QISKIT") == len(job.sampler_pubs)
    arrived = wired.open()
    for a, b in zip(job.sampler_pubs, arrived.sampler_pubs, strict=True):
        assert b.circuit == a.circuit and list(b.circuit.parameters) == list(a.circuit.parameters)
        assert np.array_equal(b.parameter_values.as_array(), a.parameter_values.as_array())
    result = run(replace(job, sampler_pubs=arrived.sampler_pubs))
    assert result[0]["meas"].shape[:2] == (3, 16)  # type: ignore[index]


def test_chunks() -> None:
    # chunk_size set: each item cut on its own
    assert executor._chunks([6, 1], [4, 4], 300) == [((0, 0, 4),), ((0, 4, 6),), ((1, 0, 1),)]
    # auto: the device's max_experiments per chunk, spanning items
    assert executor._chunks([5, 3], [None, None], 4) == [((0, 0, 4),), ((0, 4, 5), (1, 0, 3))]
    assert executor._chunks([], [], 4) == [()]


def test_chunk_timing_divides_the_qpu_span_by_modelled_time() -> None:
    program = QuantumProgram(shots=10)
    bell = bell_isa()
    program.append_circuit_item(bell, chunk_size=1)
    program.append_circuit_item(bell, chunk_size=1)
    prepared = classical.preprocess("executor", params_json(program), "fez")
    result: Any = run(prepared, T0 + timedelta(seconds=4))
    chunks = result.metadata.chunk_timing
    assert [(c.parts[0].idx_item, c.parts[0].size) for c in chunks] == [(0, 1), (1, 1)]
    assert chunks[0].start == T0 and chunks[-1].stop == T0 + timedelta(seconds=4)
    assert chunks[0].stop == chunks[1].start == T0 + timedelta(seconds=2)  # equal chunks
    assert prepared.quantum_seconds == pytest.approx(
        sum(c.seconds for c in prepared.post[0].chunks)
    )


# ---------------------------------------------------------------------------------------------
# Dry runs and notes
# ---------------------------------------------------------------------------------------------


def test_dry_run_source_gives_seeded_mock_data_without_a_span() -> None:
    program = QuantumProgram(shots=64)
    program.append_circuit_item(bell_isa())
    text = params_json(program)
    real = classical.preprocess("executor", text, "fez")
    dry = classical.preprocess("executor", text, "dry-run:fez")
    assert dry.dry_run and not real.dry_run
    assert dry.quantum_seconds == real.quantum_seconds and dry.device_source == "fez"
    first = classical.postprocess(dry, None, T0, T0)
    assert first == classical.postprocess(dry, None, T0, T0)  # seeded by the job's params
    decoded = ExecutorResultDecoder.decode(first)
    assert decoded.metadata.chunk_timing == []
    bits = decoded[0]["meas"]
    assert bits.shape == (64, 2) and np.any(bits[:, 0] != bits[:, 1])  # random, not a Bell pair


def test_legacy_estimator_gets_a_note_sampler_without_options_none() -> None:
    from qiskit.primitives.containers.estimator_pub import EstimatorPub
    from qiskit.quantum_info import SparsePauliOp

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    isa = to_isa(qc)
    pub = EstimatorPub.coerce((isa, SparsePauliOp("ZZ").apply_layout(isa.layout), None, 0.1))
    body = {"pubs": [pub], "options": {}, "version": 2, "support_qiskit": True}
    prepared = classical.preprocess("estimator", json.dumps(body, cls=RuntimeEncoder), "fez")
    (note,) = prepared.notes
    assert "resilience_level=1" in note and "IBM's default" in note
    body = {"pubs": [SamplerPub.coerce(bell_isa())], "options": {}, "version": 2}
    assert classical.preprocess("sampler", json.dumps(body, cls=RuntimeEncoder), "fez").notes == ()


def test_boxes_in_a_circuit_item_are_refused() -> None:
    qc = QuantumCircuit(2)
    with qc.box():
        qc.cz(0, 1)
    qc.measure_all()
    program = QuantumProgram(shots=10)
    program.append_circuit_item(qc)
    with pytest.raises(classical.JobInputError, match="samplex item") as info:
        classical.preprocess("executor", params_json(program), "fez")
    assert info.value.code == 1002
