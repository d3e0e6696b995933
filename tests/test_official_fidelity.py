"""Job fields and behaviours IBM's own client relies on, through the unmodified official client
against the real emulator (one emulator for the module: the default devices, instant clock)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.primitives import StatevectorEstimator
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import EstimatorV2, Session


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
