"""The device catalogue: names, served payloads, targets and noise models."""

from __future__ import annotations

import builtins
import copy
from pathlib import Path
from typing import Any

import pytest
from qiskit_ibm_runtime.utils.backend_decoder import (
    configuration_from_server_data,
    properties_from_server_data,
)

from emulator import backends
from emulator.backends import (
    DEFAULT_BACKENDS,
    available_devices,
    device_for_name,
    device_limits,
    device_noise_model,
    device_noise_model_for,
    device_target,
    resolve_devices,
    restrict_noise_model,
    source_for_name,
)


def test_catalogue_lists_every_snapshot_under_ibm_names() -> None:
    devices = available_devices()
    assert devices["ibm_fez"] == "fez"
    assert devices["ibm_torino"] == "torino"
    assert devices["ibm_manila"] == "manila"
    assert len(devices) > 50
    assert all(name == f"ibm_{source}" for name, source in devices.items())


@pytest.mark.parametrize(
    "spelling", ["ibm_manila", "ibmq_manila", "fake_manila", "manila", "IBMQ_Manila"]
)
def test_name_spellings(spelling: str) -> None:
    assert source_for_name(spelling) == "manila"


def test_unknown_name_is_none() -> None:
    assert source_for_name("ibm_atlantis") is None


def test_default_backends() -> None:
    devices = resolve_devices(DEFAULT_BACKENDS)
    assert [(d.name, d.source, d.num_qubits) for d in devices] == [
        ("ibm_fez", "fez", 156),
        ("ibm_torino", "torino", 133),
        ("ibm_manila", "manila", 5),
    ]
    for d in devices:
        assert d.configuration["backend_name"] == d.name
        assert d.configuration["simulator"] is False
        assert d.configuration["online_date"]
        assert d.configuration["n_qubits"] == d.num_qubits
        assert d.properties["backend_name"] == d.name


def test_aliases_and_spellings_are_served_as_asked() -> None:
    devices = resolve_devices(" my_qpu = ibm_fez , fake_manila,ibmq_torino ")
    assert [(d.name, d.source) for d in devices] == [
        ("my_qpu", "fez"),
        ("ibm_manila", "manila"),
        ("ibm_torino", "torino"),
    ]
    assert devices[0].configuration["backend_name"] == "my_qpu"
    assert devices[0].properties["backend_name"] == "my_qpu"


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("ibm_fez,ibm_atlantis", ["ibm_atlantis", "known devices", "ibm_fez", "ibm_manila"]),
        ("ibm_fez,fez", ["ibm_fez", "twice"]),
        ("a=ibm_fez,a=ibm_torino", ["'a'", "twice"]),
        ("ibm_fez=ibm_torino,ibm_fez", ["ibm_fez", "twice"]),
        (" , ", ["no devices"]),
        ("bad name!=ibm_fez", ["invalid served name"]),
        ("x=ibm_nowhere", ["ibm_nowhere", "known devices"]),
    ],
)
def test_bad_specs(spec: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        resolve_devices(spec)
    for word in words:
        assert word in str(info.value)


def test_served_payloads_decode_in_the_official_client() -> None:
    """The client silently drops a backend whose configuration does not decode (spec 2.3 E)."""
    for name in available_devices():
        device = device_for_name(name)
        conf = configuration_from_server_data(copy.deepcopy(device.configuration))
        assert conf is not None, name
        assert conf.backend_name == name
    for device in resolve_devices("ibm_fez,ibm_manila,alias=ibm_torino"):
        conf = configuration_from_server_data(copy.deepcopy(device.configuration))
        assert conf is not None and conf.backend_name == device.name
        assert conf.simulator is False
        props = properties_from_server_data(copy.deepcopy(device.properties))
        assert props.backend_name == device.name
        assert len(props.qubits) == device.num_qubits


def test_devices_do_not_share_mutable_payloads() -> None:
    a, b = resolve_devices("a=ibm_manila,b=ibm_manila")
    assert a.configuration is not b.configuration
    assert a.configuration["backend_name"] == "a"
    assert b.configuration["backend_name"] == "b"


def test_loading_reads_only_the_requested_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    backends._raw_json.cache_clear()
    snapshots = str(backends._snapshot_dir())
    opened: list[str] = []
    real_open = builtins.open

    def spy(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, Path)) and str(file).startswith(snapshots):
            opened.append(Path(file).name)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    available_devices()
    resolve_devices("ibm_manila")
    assert sorted(opened) == ["conf_manila.json", "props_manila.json"]


def test_device_limits() -> None:
    fez = device_limits("fez")
    assert fez.num_qubits == 156
    assert fez.max_shots == 100_000
    assert fez.max_experiments == 300
    assert fez.rep_delay_range_s == pytest.approx((0.0, 500e-6))
    assert fez.default_rep_delay_s == pytest.approx(250e-6)


def test_target_has_durations_and_is_cached() -> None:
    target = device_target("fez")
    assert target is device_target("fez")
    assert target.num_qubits == 156
    assert {"cz", "rz", "sx", "x", "measure", "delay"} <= set(target.operation_names)
    assert target["sx"][(0,)].duration == pytest.approx(24e-9, rel=0.5)
    assert target["measure"][(0,)].duration > 1e-6
    assert target.instruction_supported("cz", (0, 1))
    assert not target.instruction_supported("h", (0,))


def test_restricted_noise_model_equals_the_restricted_device_model() -> None:
    """The fast per-qubit-set model is the device model cut down and renumbered."""
    full = device_noise_model("manila")
    assert full is device_noise_model("manila")
    qubits = (0, 1, 3)
    sub = device_noise_model_for("manila", qubits)
    assert sub == restrict_noise_model(full, qubits)
    assert sorted(sub.noise_qubits) == [0, 1, 2]
    assert set(sub.noise_instructions) >= {"measure", "sx", "cx"}
    assert device_noise_model_for("manila", qubits) is sub
