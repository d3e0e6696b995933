"""A device's worker-side views: its transpiler ``Target`` and its Aer noise models.

Split from :mod:`emulator.backends` (the device catalogue the server needs: names, served
payloads, limits) because everything here builds qiskit and Aer objects, which only the worker
processes need. Per-device objects are cached per process with :func:`functools.cache` keyed by
the snapshot name: worker processes are long-lived and build each of them once.
"""

from __future__ import annotations

import warnings
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qiskit.transpiler import Target
    from qiskit_aer.noise import NoiseModel, QuantumError
    from qiskit_ibm_runtime.fake_provider.fake_backend import FakeBackendV2

__all__ = [
    "ErrorParts",
    "device_error_parts",
    "device_noise_model",
    "device_noise_model_for",
    "device_target",
    "restrict_noise_model",
]


@cache
def _fake_backend(source: str) -> FakeBackendV2:
    """A fake backend over one snapshot, built without importing every fake backend class."""
    from qiskit_ibm_runtime.fake_provider.fake_backend import FakeBackendV2
    from qiskit_ibm_runtime.utils.backend_decoder import decode_backend_configuration

    # Imported here: emulator.backends re-exports this module's names at its end.
    from .backends import _snapshot_dir, _sources, _unknown, device_configuration

    if source not in _sources():
        raise _unknown(source)

    def served_configuration(self: FakeBackendV2) -> dict[str, Any]:
        # The configuration the emulator serves (with its fractional gates), not the file's.
        conf = device_configuration(source)
        decode_backend_configuration(conf)
        conf["backend_name"] = self.backend_name
        return conf

    cls = type(
        f"EmulatedFake_{source}",
        (FakeBackendV2,),
        {
            "dirname": str(_snapshot_dir() / source),
            "conf_filename": f"conf_{source}.json",
            "props_filename": f"props_{source}.json",
            "backend_name": f"fake_{source}",
            "_get_conf_dict_from_json": served_configuration,
        },
    )
    return cls()


@cache
def device_target(source: str) -> Target:
    """The device's transpiler :class:`~qiskit.transpiler.Target`, with instruction durations.

    Built exactly as the fake backends build theirs (``convert_to_target`` with control flow and
    fractional gates allowed) from the served configuration, so it accepts every ISA circuit the
    device can run, with or without fractional gates.
    """
    return _fake_backend(source).target


@cache
def device_noise_model(source: str) -> NoiseModel:
    """``NoiseModel.from_backend`` on the fake backend: the whole device.

    Slow for large devices (about 4 s for 156 qubits) and slow to *simulate with* (Aer converts
    every qubit's errors per run): the QPU stage uses :func:`device_noise_model_for` instead.
    """
    from qiskit_aer.noise import NoiseModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NoiseModel.from_backend(_fake_backend(source))


def restrict_noise_model(model: NoiseModel, physical: tuple[int, ...]) -> NoiseModel:
    """Any device-wide noise model (e.g. a job's ``simulator.noise_model``) cut down to
    ``physical`` and renumbered ``0..n-1`` in that order, like :func:`device_noise_model_for`.
    Errors touching other qubits go; all-qubit errors stay; relaxation on delays is re-indexed."""
    from qiskit.circuit import Delay
    from qiskit_aer.noise import NoiseModel
    from qiskit_aer.noise.passes import RelaxationNoisePass

    index = {p: i for i, p in enumerate(physical)}
    out = NoiseModel(basis_gates=list(model.basis_gates))
    # NoiseModel has no public per-qubit accessors; its attribute layout is stable since Aer 0.8.
    for name, per_qubits in model._local_quantum_errors.items():
        for qubits, error in per_qubits.items():
            if all(q in index for q in qubits):
                out.add_quantum_error(error, name, [index[q] for q in qubits], warnings=False)
    for qubits, error in model._local_readout_errors.items():
        if all(q in index for q in qubits):
            out.add_readout_error(error, [index[q] for q in qubits], warnings=False)
    for name, error in model._default_quantum_errors.items():
        out.add_all_qubit_quantum_error(error, name, warnings=False)
    if model._default_readout_error is not None:
        out.add_all_qubit_readout_error(model._default_readout_error, warnings=False)
    for noise_pass in model._custom_noise_passes:
        # Relaxation during delays (the only custom pass from_backend adds): per-qubit arrays.
        if (
            isinstance(noise_pass, RelaxationNoisePass)
            and physical
            and len(noise_pass._t1s) > max(physical)
        ):
            sel = list(physical)
            out._custom_noise_passes.append(
                RelaxationNoisePass(
                    t1s=noise_pass._t1s[sel].tolist(),
                    t2s=noise_pass._t2s[sel].tolist(),
                    dt=noise_pass._dt,
                    op_types=Delay,
                    excited_state_populations=noise_pass._p1s[sel].tolist(),
                )
            )
    return out


@lru_cache(maxsize=256)
def device_noise_model_for(
    source: str,
    physical_qubits: tuple[int, ...],
    operations: frozenset[str] | None = None,
) -> NoiseModel:
    """The device noise model restricted to ``physical_qubits``, renumbered ``0..n-1`` in that
    order (qubit ``i`` of the model is physical qubit ``physical_qubits[i]``), and to the
    instructions named in ``operations`` (``None``: all of the device's).

    Equal to restricting :func:`device_noise_model` (same ``NoiseModel.from_backend`` applied to
    the sub-target), but costs milliseconds for a few qubits instead of seconds for the device.
    Aer computes each instruction's error from that instruction's calibration and its qubits'
    T1/T2 alone, so leaving instructions out changes none of the others' errors.
    """
    from qiskit_aer.noise import NoiseModel

    sub = _sub_target(device_target(source), physical_qubits, operations)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NoiseModel.from_backend(_target_backend_class()(sub))


#: Per instruction and qargs (renumbered like the qubits asked for), the errors Aer composes.
ErrorParts = list[tuple[str, tuple[int, ...], tuple["QuantumError", ...]]]


def device_error_parts(
    source: str, physical_qubits: tuple[int, ...], operations: frozenset[str] | None = None
) -> tuple[ErrorParts, list[tuple[int, Any]]]:
    """The errors of :func:`device_noise_model_for` before Aer composes them: per instruction
    and qargs, its depolarizing part then its thermal-relaxation part (either may be absent),
    and per qubit its ``ReadoutError``; renumbered like :func:`device_noise_model_for`.

    This is the loop of Aer's ``_basic_device_target_gate_errors`` (what
    ``NoiseModel.from_backend`` runs), with Aer's own builders of each part, without its last
    step, ``depol.compose(relax)``: that step is more than half of the model's cost
    (``QuantumError.compose`` copies circuits, 16 Paulis times each relaxation branch), and a
    Pauli twirl does not need it: a depolarizing channel's PTM is diagonal, so the composition's
    PTM diagonal is the product of the parts' diagonals. ``tests/test_noise.py`` checks the
    parts against the composed model of ``NoiseModel.from_backend``, so an Aer that builds
    its model differently fails there.

    Raises:
        ImportError: this Aer has not the per-part builders (callers compose instead).
    """
    from qiskit.circuit import Gate, Measure
    from qiskit_aer.noise.device.models import (
        _device_depolarizing_error,
        _device_thermal_relaxation_error,
        basic_device_readout_errors,
    )

    sub = _sub_target(device_target(source), physical_qubits, operations)
    qprops = sub.qubit_properties
    gates: ErrorParts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, props in sub.items():
            op = sub.operation_from_name(name)
            if isinstance(op, Measure) or props is None:
                continue
            for qargs, prop in props.items():
                if qargs is None or prop is None:
                    continue
                relax = None
                if prop.duration and qprops:
                    relax = _device_thermal_relaxation_error(
                        qubits=qargs,
                        gate_time=prop.duration,
                        relax_params={
                            q: (qprops[q].t1, qprops[q].t2, qprops[q].frequency) for q in qargs
                        },
                        temperature=0,  # NoiseModel.from_backend's default
                    )
                depol = None
                if prop.error and isinstance(op, Gate):
                    depol = _device_depolarizing_error(
                        qubits=qargs, error_param=prop.error, relax_error=relax
                    )
                parts = tuple(e for e in (depol, relax) if e is not None)
                if parts:
                    gates.append((name, tuple(qargs), parts))
        readout = [(qubits[0], error) for qubits, error in basic_device_readout_errors(target=sub)]
    return gates, readout


def _sub_target(
    target: Target, physical_qubits: tuple[int, ...], operations: frozenset[str] | None = None
) -> Target:
    """``target`` restricted to ``physical_qubits`` (renumbered in that order) and to the
    instructions named in ``operations`` (``None``: all)."""
    from qiskit.transpiler import Target

    index = {q: i for i, q in enumerate(physical_qubits)}
    qprops = target.qubit_properties
    sub = Target(
        num_qubits=len(physical_qubits),
        dt=target.dt,
        granularity=target.granularity,
        min_length=target.min_length,
        pulse_alignment=target.pulse_alignment,
        acquire_alignment=target.acquire_alignment,
        qubit_properties=[qprops[q] for q in physical_qubits] if qprops else None,
    )
    for name in target.operation_names:
        if operations is not None and name not in operations:
            continue
        op = target.operation_from_name(name)
        qmap = target[name]
        if None in qmap:  # a global instruction (e.g. control flow)
            sub.add_instruction(op, name=name)
            continue
        props = {
            tuple(index[q] for q in qargs): inst_props
            for qargs, inst_props in qmap.items()
            if qargs is not None and all(q in index for q in qargs)
        }
        if props:
            sub.add_instruction(op, props, name=name)
    return sub


@lru_cache(maxsize=1)
def _target_backend_class() -> type:
    """A minimal BackendV2 around a Target, for ``NoiseModel.from_backend``. Defined lazily so
    that listing and resolving devices does not import qiskit."""
    from qiskit.providers import BackendV2, Options

    class TargetBackend(BackendV2):  # type: ignore[misc]
        def __init__(self, target: Target) -> None:
            super().__init__(name="emulator_subtarget")
            self._sub_target = target

        @property
        def target(self) -> Target:
            return self._sub_target

        @property
        def max_circuits(self) -> None:
            return None

        @classmethod
        def _default_options(cls) -> Options:
            return Options()

        def run(self, run_input: Any, **options: Any) -> Any:
            raise NotImplementedError("a noise-model helper, not a simulator")

    return TargetBackend
