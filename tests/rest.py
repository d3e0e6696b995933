"""Raw HTTP against an emulator, and the emulator as a subprocess on a fixed port and data dir."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import requests
from circuits import bell
from qiskit import QuantumCircuit
from qiskit.transpiler import generate_preset_pass_manager

from aioruntime import protocol as p
from emulator.backends import device_target
from emulator.testing import EmulatorProcess

__all__ = ["Api", "Server", "free_port", "isa_bell"]


def isa_bell(source: str = "manila") -> QuantumCircuit:
    return generate_preset_pass_manager(optimization_level=1, target=device_target(source)).run(
        bell()
    )


class Api:
    """Raw HTTP against a server URL, with a real IAM token for ``key``."""

    def __init__(self, base_url: str, key: str, instance: str = p.DEFAULT_INSTANCE) -> None:
        self.base_url = base_url
        token = requests.post(
            base_url + p.IAM_TOKEN, timeout=10, data={"grant_type": p.IAM_GRANT_TYPE, "apikey": key}
        ).json()
        self.headers = {
            "Authorization": f"Bearer {token['access_token']}",
            p.HEADER_SERVICE_CRN: instance,
        }

    def __call__(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return requests.request(
            method, self.base_url + "/api/v1" + path, headers=headers, timeout=90, **kw
        )

    def submit_raw(self, shots: int = 50, **extra: Any) -> requests.Response:
        """``POST /jobs`` of a Bell job on ibm_manila (``extra`` goes into the body)."""
        body = {
            "program_id": "sampler",
            "backend": "ibm_manila",
            "params": {"pubs": [[isa_bell(), np.empty((0,)), shots]], "version": 2},
            **extra,
        }
        return self(
            "POST", p.JOBS, data=p.dumps(body), headers={"Content-Type": "application/json"}
        )

    def submit(self, shots: int = 50, **extra: Any) -> str:
        resp = self.submit_raw(shots, **extra)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["id"])

    def submit_body(self, body: dict[str, Any]) -> str:
        resp = self(
            "POST", p.JOBS, data=p.dumps(body), headers={"Content-Type": "application/json"}
        )
        assert resp.status_code == 200, resp.text
        return str(resp.json()["id"])

    def wait(self, job_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for _ in range(10):  # each long-poll is bounded server-side
            body = self("GET", p.EXT_JOB_WAIT.format(job_id=job_id), params={"timeout": 30}).json()
            if body["state"]["status"] in ("Completed", "Failed", "Cancelled"):
                break
        return body


class Server(EmulatorProcess):
    """The emulator subprocess on a fixed port and data directory, as the restart tests need."""

    def __init__(self, data_dir: Path, port: int, *extra: str) -> None:
        super().__init__(
            "--data-dir",
            str(data_dir),
            "--backends",
            "ibm_manila",
            "--api-key",
            "k1",
            "--lanes",
            "2",
            *extra,
            port=port,
        )

    def kill(self, sig: int) -> int:
        return self.stop(sig)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
