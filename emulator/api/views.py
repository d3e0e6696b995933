"""Store records → the JSON bodies of IBM's API (spec §2, §3.3). Pure functions."""

from __future__ import annotations

import json
from functools import cache
from importlib.metadata import version
from typing import Any

from aioruntime.protocol import JobState

from ..backends import Device
from ..sessions import SessionBook
from ..store import JobRecord, SessionRecord

__all__ = ["device_summary", "job_body", "job_json_text", "metrics_body", "session_body"]


def job_body(
    rec: JobRecord, *, estimate: float | None = None, calibration_id: str | None = None
) -> dict[str, Any]:
    state: dict[str, Any] = {"status": rec.state}
    if rec.reason:
        state["reason"] = rec.reason
    if rec.reason_code is not None:
        state["reason_code"] = rec.reason_code
    body: dict[str, Any] = {
        "id": rec.id,
        "backend": rec.backend,
        "state": state,
        "status": rec.state,
        "program": {"id": rec.program_id},
        "created": rec.created,
        "runtime": rec.runtime,
        "tags": rec.tags,
        "private": rec.private,
        "user_id": rec.instance.rsplit(":", 3)[-3] if rec.instance.count(":") >= 3 else "",
    }
    if rec.session_id:
        body["session_id"] = rec.session_id
    if rec.cost is not None:
        body["cost"] = rec.cost
    if (estimated := rec.quantum_seconds if estimate is None else estimate) is not None:
        body["estimated_running_time_seconds"] = estimated
    if rec.usage_seconds is not None:
        body["usage"] = {"seconds": rec.usage_seconds, "quantum_seconds": rec.usage_seconds}
    if calibration_id is not None:
        # IBM's job body names the calibration the job used (``JobResponse.calibration_id``).
        body["calibration_id"] = calibration_id
    return body


def job_json_text(
    rec: JobRecord,
    params_json: str | None = None,
    *,
    estimate: float | None = None,
    calibration_id: str | None = None,
) -> str:
    """The job as JSON text; ``params_json`` (stored as sent) is spliced in, not re-encoded."""
    text = json.dumps(job_body(rec, estimate=estimate, calibration_id=calibration_id))
    if params_json is None:
        return text
    return text[:-1] + ', "params": ' + params_json + "}"


@cache
def _qiskit_version() -> str:
    # The installed distribution's version: importing qiskit itself costs the server ~1 s.
    return f"qiskit-{version('qiskit')}"


def metrics_body(
    rec: JobRecord,
    *,
    stages: dict[str, str] | None = None,
    queue: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """IBM's metrics body; ``stages`` of a running job, ``queue`` = (position, estimated
    start) of a queued one, from the scheduler."""
    final = JobState(rec.state).is_terminal
    charged = rec.usage_seconds if rec.usage_seconds is not None else 0.0
    return {
        "timestamps": {"created": rec.created, "running": rec.running, "finished": rec.finished},
        "bss": {"seconds": charged},
        "usage": {
            "quantum_seconds": charged,
            "seconds": charged,
            "qpu_charge_time_seconds": charged,
            "status": "final" if final else "pending",
        },
        "qiskit_version": _qiskit_version(),
        "estimated_start_time": queue[1] if queue else None,
        "estimated_completion_time": None,
        "position_in_queue": queue[0] if queue else None,
        "position_in_provider": queue[0] if queue else None,
        # Not in IBM's body: where the emulator's time went (benchmarks draw timelines from it).
        "emulator": {
            "modelled_quantum_seconds": rec.quantum_seconds,
            "stages": stages if stages is not None else rec.stages,
            "emulator_lag_s": rec.emulator_lag_s,
        },
    }


def session_body(rec: SessionRecord, book: SessionBook) -> dict[str, Any]:
    return {
        "id": rec.id,
        "backend_name": rec.backend,
        "mode": rec.mode,
        "state": rec.state,
        "state_reason": rec.state_reason,
        "accepting_jobs": rec.accepting_jobs,
        "interactive_ttl": rec.interactive_ttl,
        "max_ttl": rec.max_ttl,
        "active_ttl": book.active_ttl(rec),
        "created_at": rec.created_at,
        "started_at": rec.started_at,
        "activated_at": rec.activated_at,
        "closed_at": rec.closed_at,
        "last_job_started": rec.last_job_started,
        "last_job_completed": rec.last_job_completed,
        "elapsed_time": book.elapsed(rec),
        "timestamps": rec.timestamps,
        "user_id": "",
    }


def device_summary(device: Device, queue_length: int) -> dict[str, Any]:
    conf = device.configuration
    return {
        "name": device.name,
        "class": "mock" if device.mock else "real",
        "status": {"name": "online", "reason": "available"},
        "queue_length": queue_length,
        "qubits": device.num_qubits,
        "physical_qubits": device.num_qubits,
        "processor_type": conf.get("processor_type"),
        "clops": {"type": "hpe", "value": conf.get("clops_h")},
        "wait_time_seconds": None,
    }
