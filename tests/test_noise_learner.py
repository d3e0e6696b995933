"""The ``noise-learner`` program (NoiseLearnerV3) and the executor Estimator's PEC and PEA paths.

The emulator answers the noise learner from the device's noise model, deterministically
(``emulator/noise_learner.py``); the client then uses the models to run PEC and PEA.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import BoxOp
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_aer.noise import ReadoutError, depolarizing_error
from qiskit_ibm_runtime.exceptions import IBMRuntimeError, RuntimeJobFailureError
from qiskit_ibm_runtime.executor_estimator import Estimator
from qiskit_ibm_runtime.noise_learner_v3 import NoiseLearnerV3
from qiskit_ibm_runtime.noise_learner_v3.params_converters import (
    NOISE_LEARNER_V3_PARAMS_CONVERTERS,
)
from qiskit_ibm_runtime.options_models import NoiseLearnerV3Options

from aioruntime.protocol import ErrorCode
from emulator import noise_learner


def bell_state() -> QuantumCircuit:
    qc = QuantumCircuit(3)
    qc.h(0)
    qc.cx(0, 1)
    qc.cx(1, 2)
    return qc


@pytest.fixture(scope="module")
def fez(official: Any) -> Any:
    return official.backend("ibm_fez")


@pytest.fixture(scope="module")
def isa(fez: Any) -> QuantumCircuit:
    pm = generate_preset_pass_manager(optimization_level=1, target=fez.target, seed_transpiler=7)
    return pm.run(bell_state())


@pytest.fixture(scope="module")
def observables(isa: QuantumCircuit) -> list[SparsePauliOp]:
    return [SparsePauliOp(label).apply_layout(isa.layout) for label in ("ZZI", "IZZ", "XXX")]


#: The mitigated values' spread comes from the randomizations, not the shots: on noiseless data
#: each randomization either carries an injected (PEA) or sampled (PEC) Pauli error or not, so
#: 4 or 8 randomizations give a few coarse values, whatever the shots (standard deviation
#: 0.05-0.13; PEA strayed past the tests' 0.25 once in forty runs, and in one full suite run).
#: 32 randomizations of 64 shots: 0.015-0.034 over twenty runs each of PEC and PEA (the 0.25 is
#: seven deviations away), in about the same time.
SHOTS, RANDOMIZATIONS = 64, 32


def pec_estimator(fez: Any) -> Estimator:
    estimator = Estimator(mode=fez)
    estimator.options.resilience.pec_mitigation = True
    estimator.options.default_shots = SHOTS
    estimator.options.twirling.num_randomizations = RANDOMIZATIONS  # a circuit to run each
    return estimator


# ---------------------------------------------------------------------------------------------
# The learned models
# ---------------------------------------------------------------------------------------------


def test_one_model_per_layer_from_the_device(
    fez: Any, isa: QuantumCircuit, observables: list[SparsePauliOp]
) -> None:
    layers = pec_estimator(fez).find_unique_layers([(isa, observables)])
    assert len(layers) == 2 and all(isinstance(layer.operation, BoxOp) for layer in layers)
    job = NoiseLearnerV3(fez).run(layers)
    results = job.result()
    assert len(results) == len(layers)
    for layer, result in zip(layers, results, strict=True):
        plm = result.to_pauli_lindblad_map()
        assert plm.num_qubits == len(layer.qubits)  # indexed in the box's physical-qubit order
        assert np.all(plm.rates >= 0) and np.any(plm.rates > 0)
        assert result.metadata["learning_protocol"] == "lindblad"
        # exactly the documented derivation, and deterministic
        expected = noise_learner.layer_model("fez", layer)
        assert list(result._rates) == pytest.approx(list(expected.rates))
        weights = {
            len(indices)
            for generator in result._generators
            for _, indices in generator.to_sparse_list()
        }
        assert weights <= {1, 2}
    again = NoiseLearnerV3(fez).run(layers).result()
    assert np.array_equal(again[0]._rates, results[0]._rates)
    # the learning circuits cost QPU time: minutes, as on IBM
    assert job.usage() == pytest.approx(job.metrics()["emulator"]["modelled_quantum_seconds"])
    assert job.usage() > 60


def test_measurement_layer_gets_a_readout_model(
    fez: Any, isa: QuantumCircuit, observables: list[SparsePauliOp]
) -> None:
    estimator = pec_estimator(fez)
    layers = estimator.find_unique_layers([(isa, observables)], types="all")
    measure = [
        layer
        for layer in layers
        if any(inst.operation.name == "measure" for inst in layer.operation.body)
    ]
    assert measure
    (result,) = NoiseLearnerV3(fez).run(measure[:1]).result()
    assert result.metadata["learning_protocol"] == "trex"
    labels = {label for g in result._generators for label, _ in g.to_sparse_list()}
    assert labels == {"X"} and np.all(result._rates > 0)


def test_dry_run_noise_learner(fez: Any, isa: QuantumCircuit, observables: Any) -> None:
    layers = pec_estimator(fez).find_unique_layers([(isa, observables)])
    job = NoiseLearnerV3(fez).run(layers, dry_run=True)
    results = job.result()
    assert job.backend().name == "mock_fez"
    assert len(results) == 2 and job.usage() == 0
    assert job.usage_estimation["quantum_seconds"] > 60
    real = noise_learner.layer_model("fez", layers[0])
    assert len(results[0]._rates) == len(real.rates)  # same generators, mock rates
    assert list(results[0]._rates) != pytest.approx(list(real.rates))


# ---------------------------------------------------------------------------------------------
# PEC and PEA end to end
# ---------------------------------------------------------------------------------------------


def test_pec_completes(fez: Any, isa: QuantumCircuit, observables: list[SparsePauliOp]) -> None:
    estimator = pec_estimator(fez)
    layers = estimator.find_unique_layers([(isa, observables)])
    maps = NoiseLearnerV3(fez).run(layers).result().to_pauli_lindblad_maps()
    estimator.options.resilience.layer_noise_model = list(zip(layers, maps, strict=True))
    result = estimator.run([(isa, observables)]).result()
    evs = result[0].data.evs
    assert evs.shape == (3,)
    # PEC inverts the device's noise on noiseless data: the values overshoot only slightly
    assert evs == pytest.approx([1.0, 1.0, 1.0], abs=0.25)


# Without noise every randomization gives the same value: the client's ZNE fit says so.
@pytest.mark.filterwarnings("ignore:No positive, finite standard errors:UserWarning")
def test_pea_completes(fez: Any, isa: QuantumCircuit, observables: list[SparsePauliOp]) -> None:
    estimator = Estimator(mode=fez)
    estimator.options.resilience.zne_mitigation = True
    estimator.options.resilience.zne.amplifier = "pea"
    estimator.options.default_shots = SHOTS
    estimator.options.twirling.num_randomizations = RANDOMIZATIONS
    layers = estimator.find_unique_layers([(isa, observables)])
    maps = NoiseLearnerV3(fez).run(layers).result().to_pauli_lindblad_maps()
    estimator.options.resilience.layer_noise_model = list(zip(layers, maps, strict=True))
    result = estimator.run([(isa, observables)]).result()
    assert result[0].data.evs == pytest.approx([1.0, 1.0, 1.0], abs=0.25)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_noise_learner_input(official: Any, fez: Any, isa: QuantumCircuit) -> None:
    untwirled = next(inst for inst in isa.data if inst.operation.name == "cz")
    box = QuantumCircuit(isa.qubits)
    with box.box():
        box.append(untwirled)
    encoder = NOISE_LEARNER_V3_PARAMS_CONVERTERS["v0.3"].encoder
    params = encoder(list(box.data), NoiseLearnerV3Options()).model_dump(mode="json")
    job = official._run(program_id="noise-learner", inputs=params, options={"backend": fez})
    with pytest.raises(RuntimeJobFailureError, match=rf"(?s){int(ErrorCode.VALIDATION)}.*Twirl"):
        job.result()
    params["schema_version"] = "v0.9"
    with pytest.raises(IBMRuntimeError, match=r"(?s)400.*noise-learner params schema_version"):
        official._run(program_id="noise-learner", inputs=params, options={"backend": fez})


# ---------------------------------------------------------------------------------------------
# The derivation, unit by unit
# ---------------------------------------------------------------------------------------------


def test_depolarizing_channels_give_uniform_rates() -> None:
    p = 0.01
    one = noise_learner._channel_rates(depolarizing_error(p, 1))
    assert set(one) == {("X", (0,)), ("Y", (0,)), ("Z", (0,))}
    # each Pauli fidelity 1 - p = exp(-2 (λ + λ)): two of the three generators anticommute
    assert all(rate == pytest.approx(-math.log(1 - p) / 4) for rate in one.values())
    two = noise_learner._channel_rates(depolarizing_error(p, 2))
    assert len(two) == 15
    # on two qubits, each non-identity Pauli anticommutes with 8 of the 15 generators
    assert all(rate == pytest.approx(-math.log(1 - p) / 16) for rate in two.values())
    assert two[("XZ", (0, 1))] == pytest.approx(two[("Y", (1,))])


def test_readout_rate_of_a_symmetrized_flip() -> None:
    from qiskit_aer.noise import NoiseModel

    model = NoiseModel()
    model.add_readout_error(ReadoutError([[0.98, 0.02], [0.04, 0.96]]), [0])
    assert noise_learner._readout_rate(model, 0) == pytest.approx(-0.5 * math.log(1 - 2 * 0.03))
