"""Job fields and behaviours IBM's own client relies on, through the unmodified official client
against the real emulator (one emulator for the module: the default devices, instant clock)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from circuits import bell
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.primitives import StatevectorEstimator
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import EstimatorV2, SamplerV2, Session

from emulator.testing import EmulatorThread


@pytest.fixture(scope="module")
def manila(official: Any) -> Any:
    return official.backend("ibm_manila")


# -- Estimator result shapes ------------------------------------------------------------------


def _shape_pubs(backend: Any) -> list[tuple[Any, ...]]:
    """PUBs of every observable / parameter shape: 0-d, a list, a 2-d array broadcast against
    parameter sets, a 0-d observable against a 2-d array of parameter sets."""
    a, b = Parameter("a"), Parameter("b")
    qc = QuantumCircuit(2)
    qc.ry(a, 0)
    qc.rx(b, 1)
    qc.cx(0, 1)
    isa = generate_preset_pass_manager(
        optimization_level=1, target=backend.target, seed_transpiler=5
    ).run(qc)

    def obs(label: str) -> SparsePauliOp:
        return SparsePauliOp(label).apply_layout(isa.layout)

    rng = np.random.default_rng(7)
    return [
        (isa, obs("ZZ"), [0.4, 0.9]),  # () x () -> ()
        (isa, [obs("ZZ"), obs("XI")], [0.4, 0.9]),  # (2,) x () -> (2,)
        (isa, [[obs("ZZ")], [obs("IZ")]], rng.uniform(0, 3, (3, 2))),  # (2, 1) x (3,) -> (2, 3)
        (isa, obs("ZI"), rng.uniform(0, 3, (2, 2, 2))),  # () x (2, 2) -> (2, 2)
    ]


def _check_shapes(result: Any, pubs: list[tuple[Any, ...]]) -> None:
    reference = StatevectorEstimator().run(pubs).result()
    for got, want in zip(result, reference, strict=True):
        assert got.data.shape == want.data.shape
        for field in ("evs", "stds", "ensemble_standard_error"):
            value = getattr(got.data, field)
            assert isinstance(value, np.ndarray) and value.shape == want.data.evs.shape, field
        assert np.all(np.abs(got.data.evs - want.data.evs) <= 5 * got.data.stds + 1e-9)


@pytest.mark.parametrize("in_session", [False, True], ids=["job", "session"])
def test_estimator_result_shapes_match_qiskit(manila: Any, in_session: bool) -> None:
    pubs = _shape_pubs(manila)
    if in_session:
        with Session(backend=manila) as session:
            result = EstimatorV2(mode=session).run(pubs, precision=0.05).result()
    else:
        result = EstimatorV2(mode=manila).run(pubs, precision=0.05).result()
    _check_shapes(result, pubs)
    assert result[0].data.evs.shape == () and result[0].data.stds.shape == ()


# -- What is simulated, whatever the options ---------------------------------------------------

#: Options IBM applies server-side and the emulator accepts without applying them.
OPTION_SETS: list[dict[str, Any]] = [
    {},
    {"resilience_level": 2},
    {"twirling": {"enable_gates": True, "enable_measure": True}},
    {"dynamical_decoupling": {"enable": True, "sequence_type": "XY4"}},
    {"resilience": {"measure_mitigation": True, "zne_mitigation": True}},
]


def _distant_pair(target: Any, layout: list[int]) -> tuple[QuantumCircuit, list[SparsePauliOp]]:
    """A non-Clifford Bell-like pair placed on ``layout``; distant qubits make the router lay a
    SWAP chain across the chip. Observables ZZ, XX, ZI (exact: 1, sin 0.3, cos 0.3)."""
    qc = QuantumCircuit(2)
    qc.ry(0.3, 0)
    qc.cx(0, 1)
    isa = generate_preset_pass_manager(
        optimization_level=1, target=target, initial_layout=layout, seed_transpiler=1
    ).run(qc)
    return isa, [SparsePauliOp(s).apply_layout(isa.layout) for s in ("ZZ", "XX", "IZ")]


def test_the_options_never_change_the_qubits_simulated() -> None:
    from circuits import params_json
    from qiskit.primitives.containers.estimator_pub import EstimatorPub

    from emulator import classical
    from emulator.backends import device_target

    isa, observables = _distant_pair(device_target("fez"), [150, 152])
    pub = EstimatorPub.coerce((isa, observables), 0.1)
    simulated = set()
    for options in OPTION_SETS:
        level = options.get("resilience_level")
        rest = {k: v for k, v in options.items() if k != "resilience_level"}
        extra = {"resilience_level": level} if level is not None else {}
        prepared = classical.preprocess("estimator", params_json([pub], rest, **extra), "fez")
        simulated.add(tuple(prepared.metadata["pub_qubits"]))
        # only the qubits the circuit acts on, each circuit compacted onto them
        assert all(
            c.num_qubits <= len(q) + 1
            for c, q in zip(
                (p.circuit for p in prepared.sampler_pubs),
                prepared.metadata["pub_qubits"],
                strict=True,
            )
        )
    assert len(simulated) == 1
    (pub_qubits,) = simulated
    assert all(len(q) < 10 for q in pub_qubits)


@pytest.mark.parametrize("layout", [[150, 152], [0, 155]], ids=["near", "across-the-chip"])
def test_estimator_options_on_distant_qubits_of_fez(official: Any, layout: list[int]) -> None:
    fez = official.backend("ibm_fez")
    isa, observables = _distant_pair(fez.target, layout)
    jobs = []
    for options in OPTION_SETS:
        estimator = EstimatorV2(mode=fez, options=options)
        jobs.append(estimator.run([(isa, observables)], precision=0.05))
    exact = np.array([1.0, np.sin(0.3), np.cos(0.3)])
    # A sample's std is 0 when all its shots agree, which IZ's (P(-1) = 2%) now and then do;
    # the estimate is then still within its precision: the standard error of 1/0.05^2 shots
    # of a +-1 observable with that mean, 0.05 * sqrt(1 - exact^2), bounds it from below.
    floor = 0.05 * np.sqrt(1 - exact**2)
    for job in jobs:
        data = job.result()[0].data  # no "Insufficient memory ... statevector"
        assert data.evs.shape == (3,)
        assert np.all(np.abs(data.evs - exact) <= 5 * np.maximum(data.stds, floor) + 1e-9)


# -- Calibration ids ----------------------------------------------------------------------------


def test_calibration_ids(
    official: Any, manila: Any, emulator: EmulatorThread, caplog: pytest.LogCaptureFixture
) -> None:
    from qiskit.providers.exceptions import QiskitBackendNotFoundError
    from qiskit_ibm_runtime.exceptions import IBMRuntimeError

    from emulator.backends import device_for_name

    # Where IBM reports it: the calibration a job used is in the job's body.
    isa = generate_preset_pass_manager(optimization_level=1, target=manila.target).run(bell())
    first = SamplerV2(mode=manila).run([isa], shots=10)
    first.result()
    current = official._active_api_client.job_get(first.job_id())["calibration_id"]
    # stable: derived from the device's properties snapshot, the same at every start
    assert current == device_for_name("ibm_manila").calibration_id

    # An unknown id: QiskitBackendNotFoundError, and the client's warning names the id.
    with caplog.at_level("WARNING", logger="qiskit_ibm_runtime"):
        with pytest.raises(QiskitBackendNotFoundError):
            official.backend("ibm_manila", calibration_id="invalid_id")
    assert any("invalid_id" in record.getMessage() for record in caplog.records)

    # The current one: a working backend whose jobs are sent with that calibration_id and run.
    calibrated = official.backend("ibm_manila", calibration_id=current)
    assert calibrated.calibration_id == current
    assert calibrated.target.num_qubits == 5  # properties fetched with the calibration id
    job = SamplerV2(mode=calibrated).run([isa], shots=10)
    assert job.result()[0].data.meas.num_shots == 10
    submits = [
        r for r in emulator.requests if r["method"] == "POST" and r["path"].endswith("/jobs")
    ]
    assert "calibration_id" in submits[-1]["body_keys"]
    assert official._active_api_client.job_get(job.job_id())["calibration_id"] == current
    listed = official._active_api_client.jobs_get(limit=5, backend_name="ibm_manila")["jobs"]
    assert {j["calibration_id"] for j in listed} == {current}

    # A job sent with an unknown calibration id is refused (the official client's message).
    calibrated._calibration_id = "stale-calibration"
    with pytest.raises(IBMRuntimeError, match="stale-calibration"):
        SamplerV2(mode=calibrated).run([isa], shots=10)


# -- Fractional gates ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ibm_fez", "ibm_torino"])
def test_heron_devices_offer_fractional_gates(official: Any, name: str) -> None:
    from qiskit_ibm_runtime.utils.utils import is_fractional_gate

    with_fg = official.backend(name, use_fractional_gates=True)
    assert {"rx", "rzz"} <= set(with_fg.basis_gates)
    assert {"rx", "rzz"} <= set(with_fg.configuration().supported_instructions)
    target = with_fg.target
    coupled = {tuple(pair) for pair in with_fg.configuration().coupling_map}
    assert set(target["rzz"]) == coupled  # on every coupled pair, as cz
    assert len(target["rx"]) == with_fg.num_qubits
    assert target["rzz"][next(iter(coupled))].duration > 0  # calibrated: a real duration

    # Without use_fractional_gates the client filters them out, as on IBM.
    plain = official.backend(name)
    assert not {"rx", "rzz"} & set(plain.basis_gates)
    assert not {"rx", "rzz"} & set(plain.target.operation_names)
    gates = [op for op in plain.target.operations if not isinstance(op, type)]  # not control flow
    assert not any(is_fractional_gate(op) for op in gates)
    # (Its properties keep the rx/rzz entries: properties_from_server_data filters gates by
    # their "name", e.g. "rzz72_73", not by "gate", so on IBM too they stay.)


def test_falcon_has_no_fractional_gates(official: Any) -> None:
    from qiskit_ibm_runtime.exceptions import IBMInputValueError

    with pytest.raises(IBMInputValueError, match="does not support fractional gates"):
        official.backend("ibm_manila", use_fractional_gates=True)


def test_circuits_with_fractional_gates_run(official: Any) -> None:
    from emulator.backends import device_target
    from emulator.timing import circuit_duration_s

    fez = official.backend("ibm_fez", use_fractional_gates=True)
    qc = QuantumCircuit(2)
    qc.rx(0.8, 0)
    qc.rx(0.4, 1)
    qc.rzz(0.6, 0, 1)
    qc.rx(0.5, 0)
    isa = generate_preset_pass_manager(
        optimization_level=1, target=fez.target, seed_transpiler=3
    ).run(qc)
    assert {"rx", "rzz"} <= set(isa.count_ops())  # what the transpiler made of them
    labels = ("ZZ", "ZI", "IZ", "XX", "YY")
    observables = [SparsePauliOp(s).apply_layout(isa.layout) for s in labels]
    job = EstimatorV2(mode=fez).run([(isa, observables)], precision=0.03)
    data = job.result()[0].data  # the ISA check accepts them and Aer simulates them
    exact = StatevectorEstimator().run([(qc, [SparsePauliOp(s) for s in labels])]).result()
    assert np.all(np.abs(data.evs - exact[0].data.evs) <= 5 * data.stds + 1e-9)
    # The time model has their durations: the circuit lasts its rx and rzz pulses.
    duration = circuit_duration_s(isa, device_target("fez"))
    (q0, q1) = (isa.layout.final_index_layout()[k] for k in (0, 1))
    rzz_s = fez.target["rzz"][(q0, q1)].duration
    assert duration >= rzz_s > 0
    assert job.metrics()["usage"]["quantum_seconds"] > 0


def test_rzz_angles_outside_the_calibrated_range_are_refused() -> None:
    from circuits import params_json, to_isa
    from qiskit.primitives.containers.sampler_pub import SamplerPub

    from emulator import classical

    theta = Parameter("θ")
    qc = QuantumCircuit(2)
    qc.rzz(theta, 0, 1)
    qc.measure_all()
    isa = to_isa(qc)
    ok = classical.preprocess("sampler", params_json([SamplerPub.coerce((isa, [0.5], 10))]), "fez")
    assert ok.num_circuits == 1
    with pytest.raises(classical.JobInputError, match=r"range \[0, pi/2\]"):
        classical.preprocess("sampler", params_json([SamplerPub.coerce((isa, [-0.5], 10))]), "fez")


# -- Retrieved and listed jobs ------------------------------------------------------------------


def test_retrieved_and_listed_jobs_know_their_backend(
    official: Any, emulator: EmulatorThread
) -> None:
    """_decode_job builds the job's backend from the body's ``backend`` (plus ``program.id``,
    ``created``, ``runtime``, ``session_id``, ``tags``, ``private``), on a service that has
    loaded nothing yet, in job mode and in a session."""
    fez = official.backend("ibm_fez")
    isa = generate_preset_pass_manager(optimization_level=1, target=fez.target).run(bell())
    single = SamplerV2(mode=fez).run([isa], shots=10)
    with Session(backend=fez) as session:
        in_session = SamplerV2(mode=session).run([isa], shots=10)
        in_session.result()
    single.result()
    assert single.backend().name == "ibm_fez"  # a job created in this process

    fresh = emulator.official_service()  # nothing cached: no backend loaded yet
    for job in (single, in_session):
        again = fresh.job(job.job_id())
        assert again.backend().name == "ibm_fez"
        assert again.primitive_id == "sampler" and again.creation_date is not None
    assert fresh.job(in_session.job_id()).session_id == session.session_id
    listed = fresh.jobs(backend_name="ibm_fez", limit=None)
    assert {single.job_id(), in_session.job_id()} <= {j.job_id() for j in listed}
    assert {j.backend().name for j in listed} == {"ibm_fez"}
    with emulator.environment():  # the environment-only recipe, "experimental" in the URL
        from qiskit_ibm_runtime import QiskitRuntimeService

        assert QiskitRuntimeService().job(single.job_id()).backend().name == "ibm_fez"


# -- Private jobs -------------------------------------------------------------------------------


def test_private_jobs_never_return_their_inputs(official: Any, manila: Any) -> None:
    isa = generate_preset_pass_manager(optimization_level=1, target=manila.target).run(bell())
    private = SamplerV2(mode=manila, options={"environment": {"private": True}})
    job = private.run([isa], shots=10)
    assert job.private and job.inputs == {}  # while it runs
    public = SamplerV2(mode=manila).run([isa], shots=10)
    job.result()
    public.result()
    assert job.inputs == {}  # and once it is done
    again = official.job(job.job_id())
    assert again.private and again.inputs == {}
    assert public.inputs["pubs"][0][2] == 10  # a public job gives them back

    api = official._active_api_client
    listed = {j["id"]: j for j in api.jobs_get(limit=20, backend_name="ibm_manila")["jobs"]}
    assert listed[job.job_id()]["private"] is True
    assert not any("params" in j for j in listed.values())
    assert "params" not in api.job_get(job.job_id(), exclude_params=False)
    assert [j.private for j in official.jobs(limit=20) if j.job_id() == job.job_id()] == [True]


# -- Saved accounts -----------------------------------------------------------------------------


def test_saved_account_pointing_at_the_emulator(
    emulator: EmulatorThread, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qiskit_ibm_runtime import QiskitRuntimeService
    from qiskit_ibm_runtime.api.utils import default_runtime_url_resolver

    env = emulator.client_env()
    for key in ("IAM_URL", "GLOBAL_SEARCH_URL", "GLOBAL_CATALOG_URL"):
        monkeypatch.setenv(key, env[key])
    for key in ("QISKIT_IBM_TOKEN", "QISKIT_IBM_INSTANCE", "QISKIT_IBM_URL", "QISKIT_IBM_CHANNEL"):
        monkeypatch.delenv(key, raising=False)
    filename = str(tmp_path / "qiskit-ibm.json")
    base = emulator.base_url
    urls = {
        "short": base + "/experimental",
        "long": base + "/experimental/api/v1",
        "slash": base + "/experimental/",  # the client then asks for ".../experimental//backends"
    }
    for name, url in urls.items():
        QiskitRuntimeService.save_account(
            channel="ibm_quantum_platform",
            token=emulator.api_key,
            instance=emulator.instance,
            url=url,
            filename=filename,
            name=name,
        )
    for name in urls:
        service = QiskitRuntimeService(filename=filename, name=name)
        assert {"ibm_fez", "ibm_manila"} <= {b.name for b in service.backends()}, name
    manila = service.backend("ibm_manila")
    isa = generate_preset_pass_manager(optimization_level=1, target=manila.target).run(bell())
    assert SamplerV2(mode=manila).run([isa], shots=10).result()[0].data.meas.num_shots == 10

    # Why the URL needs "experimental": any other is rebuilt from the CRN's region, dropping the
    # port and path, so the client never reaches the emulator (and lists no backends).
    assert (
        default_runtime_url_resolver(base, emulator.instance) == "http://quantum.127.0.0.1/api/v1"
    )


# -- Durations: usage is modelled, spans are wall time ------------------------------------------


def _span_s(job: Any) -> float:
    (span,) = job.result().metadata["execution"]["execution_spans"]
    return float((span.stop - span.start).total_seconds())


def test_usage_is_the_model_and_spans_follow_the_clock(
    official: Any, manila: Any, make_emulator: Any
) -> None:
    """README 'Durations: one clock': usage is the same modelled figure under every clock; the
    execution span is the wall time the QPU was held, at least K x usage under scaled:K."""
    from emulator.backends import device_target
    from emulator.timing import TimingParams, circuit_duration_s, quantum_seconds

    isa = generate_preset_pass_manager(
        optimization_level=1, target=manila.target, seed_transpiler=2
    ).run(bell())
    model = quantum_seconds(
        [(circuit_duration_s(isa, device_target("manila")), 100)],
        rep_delay_s=250e-6,
        params=TimingParams(),
        subjobs=1,
    )

    instant = SamplerV2(mode=manila).run([isa], shots=100)
    span = _span_s(instant)  # waits for the result: usage() is 0 until the job is final
    assert instant.usage() == pytest.approx(model, rel=1e-9)
    assert instant.metrics()["emulator"]["emulator_lag_s"] == 0.0  # nothing to overrun
    assert span >= 0.0  # Aer's wall time, however long: no relation to the usage

    scale = 0.01
    emu = make_emulator(backends="ibm_manila", clock=f"scaled:{scale}")
    scaled_backend = emu.official_service().backend("ibm_manila")
    scaled = SamplerV2(mode=scaled_backend).run([isa], shots=100)
    span = _span_s(scaled)
    assert scaled.usage() == pytest.approx(model, rel=1e-9)  # the same model figure
    lag = scaled.metrics()["emulator"]["emulator_lag_s"]
    # held until K x usage had passed (or longer, when Aer was slower: the lag)
    assert span >= scale * scaled.usage() - 1e-3
    assert lag >= 0.0


def test_rzz_angles_are_checked_only_in_circuits_with_rzz(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed angle out of [0, π/2], at the top or inside a control-flow block, is refused
    by the official check; a circuit without ``rzz`` (even with blocks) never runs it."""
    from qiskit.primitives.containers.sampler_pub import SamplerPub
    from qiskit_ibm_runtime.utils import utils

    from emulator import validation

    walked: list[Any] = []
    official = utils.is_valid_rzz_pub

    def counted(pub: Any) -> str:
        walked.append(pub.circuit)
        message: str = official(pub)
        return message

    monkeypatch.setattr(utils, "is_valid_rzz_pub", counted)
    top = QuantumCircuit(2, 1)
    top.rzz(2.0, 0, 1)
    nested = QuantumCircuit(2, 1)
    nested.measure(0, 0)
    with nested.if_test((nested.clbits[0], 1)):
        nested.rzz(-0.3, 0, 1)
    for circuit in (top, nested):
        with pytest.raises(validation.JobInputError, match=r"pubs\[0\]: .*range \[0, pi/2\]"):
            validation._check_rzz_angles(0, SamplerPub.coerce(circuit))
    fine = QuantumCircuit(2, 1)
    fine.rzz(0.7, 0, 1)
    validation._check_rzz_angles(0, SamplerPub.coerce(fine))
    assert walked == [top, nested, fine]

    plain = QuantumCircuit(2, 1)
    plain.h(0)
    plain.measure(0, 0)
    with plain.if_test((plain.clbits[0], 1)):
        plain.x(1)
    for _ in range(3):
        validation._check_rzz_angles(0, SamplerPub.coerce(plain))
    assert walked == [top, nested, fine]
