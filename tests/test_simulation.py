"""Choosing a job's noise level and simulation method, and the budget (no server, no QPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from circuits import ghz
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.primitives.containers.sampler_pub import SamplerPub

from aioruntime.protocol import ErrorCode
from emulator.simulation import (
    NoiseLevel,
    SimulationPlan,
    SimulationSettings,
    plan,
    requested_level,
    run,
    without_own_options,
)
from emulator.validation import JobInputError

SETTINGS = SimulationSettings()


def pub(circuit: QuantumCircuit, shots: int = 1000, values: Any = None) -> SamplerPub:
    return SamplerPub.coerce((circuit, values, shots))


def rotated(n: int, angle: float) -> QuantumCircuit:
    """A GHZ state turned by rz(angle) on every qubit: Clifford only at multiples of pi/2."""
    qc = ghz(n, measure=False)
    qc.rz(angle, range(n))
    qc.h(range(n))
    qc.measure_all()
    return qc


def methods(pubs: list[SamplerPub], level: NoiseLevel, **settings: Any) -> tuple[str, ...]:
    return plan(pubs, level=level, settings=SimulationSettings(**settings)).methods


@pytest.mark.parametrize(
    ("options", "level"),
    [
        ({}, None),
        ({"simulator": {"noise_level": "pauli"}}, NoiseLevel.PAULI),
        ({"experimental": {"noise_level": "FULL"}}, NoiseLevel.FULL),
        (
            {"simulator": {"noise_level": "none"}, "experimental": {"noise_level": "none"}},
            NoiseLevel.NONE,
        ),
    ],
)
def test_requested_level(options: dict[str, Any], level: NoiseLevel | None) -> None:
    assert requested_level({"options": options}) == level


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"simulator": {"noise_level": "loud"}}, "must be one of 'full', 'pauli', 'none'"),
        (
            {"simulator": {"noise_level": "full"}, "experimental": {"noise_level": "pauli"}},
            "Conflicting",
        ),
    ],
)
def test_bad_level_is_a_validation_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(JobInputError, match=message) as info:
        requested_level({"options": options})
    assert info.value.code == ErrorCode.VALIDATION


def test_experimental_noise_level_is_not_reported_as_ignored() -> None:
    only_ours = {"options": {"experimental": {"noise_level": "pauli"}}}
    assert without_own_options(["twirling", "experimental"], only_ours) == ["twirling"]
    more = {"options": {"experimental": {"noise_level": "pauli", "image": "x"}}}
    assert without_own_options(["experimental"], more) == ["experimental"]


def test_clifford_circuits_go_to_stim_unless_the_noise_is_full() -> None:
    clifford = [pub(ghz(120)), pub(rotated(4, math.pi / 2))]
    assert methods(clifford, NoiseLevel.PAULI) == ("stim", "stim")
    assert methods(clifford, NoiseLevel.NONE) == ("stim", "stim")
    full = methods([pub(ghz(5)), pub(ghz(12))], NoiseLevel.FULL)
    assert full == ("density_matrix", "statevector")  # 1000 shots > 2^5, < 2^12 amplitudes


def test_parameter_sets_decide_cliffordness_after_binding() -> None:
    theta = Parameter("θ")
    qc = ghz(3, measure=False)
    qc.rz(theta, 0)
    qc.h(range(3))
    qc.measure_all()
    assert methods([pub(qc, values=[0.0, math.pi / 2, -math.pi])], NoiseLevel.PAULI) == ("stim",)
    assert methods([pub(qc, values=[0.0, 0.1])], NoiseLevel.PAULI) == ("density_matrix",)


def test_aer_method_follows_width_and_memory() -> None:
    assert methods([pub(rotated(12, 0.3))], NoiseLevel.NONE) == ("statevector",)
    assert methods([pub(rotated(40, 0.3))], NoiseLevel.NONE) == ("matrix_product_state",)
    # 2^12 amplitudes take 64 KiB, 2^20 take 16 MiB
    assert methods([pub(rotated(12, 0.3))], NoiseLevel.NONE, max_memory_mb=1) == ("statevector",)
    assert methods([pub(rotated(20, 0.3))], NoiseLevel.NONE, max_memory_mb=1) == (
        "matrix_product_state",
    )


def test_a_job_over_budget_names_what_fits() -> None:
    with pytest.raises(JobInputError) as info:
        plan([pub(ghz(20), shots=4000)], level=NoiseLevel.FULL, settings=SETTINGS)
    assert "budget of 10 min per job" in info.value.message  # the default: 600 s
    with pytest.raises(JobInputError) as info:
        plan(
            [pub(ghz(20), shots=1000)],
            level=NoiseLevel.FULL,
            settings=SimulationSettings(budget_s=60),
        )
    error = info.value
    assert error.code == ErrorCode.JOB_TOO_LARGE and int(error.code) == 1001
    assert "more than the emulator's budget of 60 s per job" in error.message
    assert "'pauli' noise level" in error.message and "fewer shots" in error.message
    assert "20 qubits" in error.message
    # the same circuit at the pauli level is planned for Stim, well inside the budget
    cheap = plan([pub(ghz(20), shots=1000)], level=NoiseLevel.PAULI, settings=SETTINGS)
    assert cheap.methods == ("stim",) and cheap.predicted_s < 0.5


def test_budget_is_a_setting() -> None:
    pubs = [pub(rotated(16, 0.3), shots=100)]
    assert plan(pubs, level=NoiseLevel.PAULI, settings=SETTINGS).predicted_s < 60
    with pytest.raises(JobInputError, match="budget of 10 ms"):
        plan(pubs, level=NoiseLevel.PAULI, settings=SimulationSettings(budget_s=0.01))


def test_plan_metadata() -> None:
    p = plan([pub(ghz(3)), pub(rotated(3, 0.3))], level=NoiseLevel.PAULI, settings=SETTINGS)
    meta = p.metadata(seconds=0.25)
    assert meta["noise_level"] == "pauli" and meta["seconds"] == 0.25
    assert meta["methods"] == {"stim": 1, "density_matrix": 1}


def test_pre_processing_builds_the_noise_table_the_qpu_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a cache directory, the lane builds the twirled table; the QPU worker (another
    process: here, emptied caches) only reads it."""
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime.json import RuntimeEncoder

    from emulator import noise
    from emulator.classical import preprocess, sample
    from emulator.targets import device_target

    circuit = generate_preset_pass_manager(1, target=device_target("manila")).run(ghz(3))
    params = json.dumps({"pubs": [pub(circuit, 100)], "version": 2}, cls=RuntimeEncoder)
    settings = SimulationSettings(noise=NoiseLevel.PAULI, cache_dir=tmp_path)
    prepared = preprocess("sampler", params, "manila", settings=settings)
    assert list(tmp_path.glob("pauli-manila-*.json"))
    noise.table_for.cache_clear()
    noise.pauli_noise_for.cache_clear()

    def boom(*_: Any) -> None:
        raise AssertionError("the QPU computed a noise table")

    monkeypatch.setattr(noise.DeviceTable, "_compute", boom)
    counts = sample(prepared).data[0].meas.get_counts()
    assert sum(counts.values()) == 100


def test_full_noise_is_the_device_model_of_the_circuits_instructions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At ``full``, a group of circuits gets Aer's device model of the instructions it runs:
    the same counts, seed for seed, as the model of every instruction of the device; the
    circuit's delay and reset (relaxation on both) are among them."""
    from qiskit_aer.primitives import SamplerV2 as AerSampler

    from emulator import targets

    qc = QuantumCircuit(2, 2)
    qc.sx(0)
    qc.rz(0.3, 0)
    qc.cz(0, 1)
    qc.delay(2000, 1, unit="ns")
    qc.reset(1)
    qc.sx(1)
    qc.barrier()
    qc.measure([0, 1], [0, 1])
    asked: list[tuple[Any, ...]] = []
    original = targets.device_noise_model_for

    def spy(*args: Any) -> Any:
        asked.append(args)
        return original(*args)

    monkeypatch.setattr(targets, "device_noise_model_for", spy)
    full = SimulationPlan(level=NoiseLevel.FULL, methods=("density_matrix",), predicted_s=0.0)
    data, _ = run([pub(qc, shots=4000)], [(0, 1)], "fez", full, seed=11)
    assert asked == [("fez", (0, 1), frozenset(qc.count_ops()))]

    everything = original("fez", (0, 1))
    options = {"method": "density_matrix", "noise_model": everything, "max_parallel_threads": 0}
    reference = AerSampler(seed=11, options={"backend_options": options}).run([(qc, None, 4000)])
    assert data[0].c.get_counts() == reference.result()[0].data.c.get_counts()
    assert len(data[0].c.get_counts()) == 4  # the device's errors, on both qubits


def test_aer_out_of_memory_fails_cleanly() -> None:
    qc = rotated(22, 0.3)
    by_hand = SimulationPlan(NoiseLevel.NONE, ("statevector",), 1.0, max_memory_mb=1)
    with pytest.raises(JobInputError) as info:
        run([pub(qc, shots=10)], [tuple(range(22))], "fez", by_hand)
    assert info.value.code == ErrorCode.EXECUTION_FAILED
    assert "Insufficient memory" in info.value.message and "--sim-memory" in info.value.message


def test_a_clifford_circuit_is_compiled_for_stim_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan's Clifford check and the noiseless sampling share one Stim program per
    circuit: a repeated circuit's jobs compile nothing, and each draws its own seed's bits."""
    from emulator import stim_sampler

    compiled: list[QuantumCircuit] = []
    real = stim_sampler.compile_circuit

    def counted(circuit: QuantumCircuit, noise: Any) -> Any:
        compiled.append(circuit)
        return real(circuit, noise)

    monkeypatch.setattr(stim_sampler, "compile_circuit", counted)
    qc = ghz(3)
    ones = []
    for seed in (1, 2, 1):
        pubs = [pub(qc, shots=200)]
        simulation = plan(pubs, level=NoiseLevel.NONE, settings=SETTINGS)
        assert simulation.methods == ("stim",)
        (data,), _ = run(pubs, [(0, 1, 2)], "fez", simulation, seed=seed)
        counts = data.meas.get_counts()
        assert set(counts) == {"000", "111"} and sum(counts.values()) == 200
        ones.append(counts["111"])
    assert compiled == [qc]
    assert ones[0] == ones[2]  # the same seed, the same bits
