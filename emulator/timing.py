"""The QPU time model (``shared/spec/timing-and-scheduling.md`` section 2).

What a real device would bill for a job, in model seconds::

    quantum_s = subjobs x overhead_s + Σ executions x (rep_delay + init_s + duration(circuit))

``duration`` is the ISA circuit's scheduled length on the device
(``QuantumCircuit.estimate_duration(target)``); an *execution* is one shot of one executed circuit
(shots x parameter sets, and x measurement groups for the Estimator). This module is pure: no
clock, no I/O. The clock that turns model seconds into waiting lives in ``emulator/clock.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.transpiler import Target

__all__ = ["TimingParams", "circuit_duration_s", "quantum_seconds", "subjob_count"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TimingParams:
    """Constants of the time model."""

    overhead_s: float = 2.0
    """Per sub-job: loading the payload into the control electronics (IBM's guide: about 2 s)."""
    init_s: float = 9.5e-5
    """Per execution, on top of ``rep_delay`` and the circuit itself (qubit reset, readout
    latency, classical bookkeeping). Typical ISA circuits last 2-5 µs on Heron and 6-20 µs on
    Eagle/Falcon, so 95 µs puts them at 348-365 µs per execution with the default 250 µs
    ``rep_delay``, around IBM's published 350 µs (checked in ``tests/test_timing.py``)."""
    max_circuits_per_subjob: int = 300
    """Sub-job size for devices whose configuration has no ``max_experiments``; when the
    configuration has one, the classical stage uses that instead."""


def subjob_count(num_circuits: int, max_per_subjob: int) -> int:
    """Sub-jobs a job of ``num_circuits`` executed circuits is split into (at least 1)."""
    return max(1, math.ceil(num_circuits / max(1, max_per_subjob)))


def circuit_duration_s(circuit: QuantumCircuit, target: Target) -> float:
    """Duration in seconds of one execution of an ISA ``circuit`` on ``target``.

    ``circuit.estimate_duration(target, unit="s")`` (the longest path through the circuit, with
    the target's instruction durations). Parameters need no binding: on IBM devices the
    parametrised gates (``rz``) are virtual and their duration does not depend on the angle.
    Where qiskit cannot estimate (control flow, an instruction without a duration), an ASAP
    schedule is computed here instead: unknown durations count as zero and a control-flow block
    counts as its longest branch (a ``for`` loop as its body x iterations).
    """
    try:
        return float(circuit.estimate_duration(target, unit="s"))
    except Exception:  # qiskit raises QiskitError or ValueError: fall back
        return _asap_duration_s(circuit, target, list(range(circuit.num_qubits)))


def _asap_duration_s(circuit: QuantumCircuit, target: Target, physical: list[int]) -> float:
    """As-soon-as-possible length of ``circuit`` whose qubit ``i`` is ``physical[i]``."""
    qindex = {q: physical[i] for i, q in enumerate(circuit.qubits)}
    cindex = {c: i for i, c in enumerate(circuit.clbits)}
    qtime = dict.fromkeys(qindex.values(), 0.0)
    ctime = [0.0] * len(cindex)
    dt = target.dt or 0.0
    for inst in circuit.data:
        op = inst.operation
        qubits = [qindex[q] for q in inst.qubits]
        clbits = [cindex[c] for c in inst.clbits]
        start = max([qtime[q] for q in qubits] + [ctime[c] for c in clbits] + [0.0])
        if op.name == "barrier":
            length = 0.0
        elif op.name == "delay":
            length = float(op.duration) * dt if op.unit == "dt" else _seconds(op.duration, op.unit)
        elif getattr(op, "blocks", None):  # control flow
            lengths = [_asap_duration_s(block, target, qubits) for block in op.blocks]
            length = max(lengths, default=0.0)
            if op.name == "for_loop":
                length *= max(1, len(op.params[0]))
        else:
            props = target[op.name].get(tuple(qubits)) if op.name in target else None
            length = float(props.duration) if props is not None and props.duration else 0.0
        end = start + length
        for q in qubits:
            qtime[q] = end
        for c in clbits:
            ctime[c] = end
    return max(list(qtime.values()) + ctime + [0.0])


_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12}


def _seconds(value: float, unit: str) -> float:
    return float(value) * _UNIT.get(unit, 0.0)


def quantum_seconds(
    durations_and_shots: Sequence[tuple[float, int]],
    *,
    rep_delay_s: float,
    params: TimingParams,
    subjobs: int,
) -> float:
    """Model QPU seconds of a job.

    Args:
        durations_and_shots: one item per executed circuit (or per group of executed circuits of
            equal duration): ``(duration of one execution in s, number of executions)``, where
            the number of executions is shots x parameter sets.
        rep_delay_s: the job's repetition delay, seconds.
        params: the model constants.
        subjobs: how many sub-jobs the job is split into (each pays ``overhead_s``).
    """
    per_shot = rep_delay_s + params.init_s
    total = subjobs * params.overhead_s
    for duration, executions in durations_and_shots:
        total += executions * (per_shot + duration)
    return total
