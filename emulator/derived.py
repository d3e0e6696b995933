"""Facts derived once from an object the pipeline only reads, remembered while it lives.

A program sends the same circuit again and again, and the job decoder then returns the same
object (``aioruntime.protocol.CircuitMemo``), which nothing may change: so what pre-processing
derives from it (its duration on the device, its live qubits and compaction, the ISA check
and whether the ``rzz`` angle check applies, its shape and the Stim program the simulation
plan and the sampling share, its pickle for the next stage) holds for
every job of it. Without this they took over half of a trivial ``ibm_fez`` job's
pre-processing. An entry goes when its object is collected (``weakref.finalize``), before its
``id`` can name another object.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: The facts of each object still alive, by ``id`` and then by what.
FACTS: dict[int, dict[Any, Any]] = {}


def derived(obj: object, what: Any, compute: Callable[[], T]) -> T:
    """``compute()``, a fact about ``obj`` (named ``what``), remembered while ``obj`` lives.

    The fact is shared by every job of ``obj``: neither it nor ``obj`` may be changed. An
    exception from ``compute`` is raised and nothing is remembered.
    """
    facts = FACTS.get(id(obj))
    if facts is None:
        facts = FACTS[id(obj)] = {}
        weakref.finalize(obj, FACTS.pop, id(obj), None)
    elif what in facts:
        return facts[what]  # type: ignore[no-any-return]
    value = facts[what] = compute()
    return value
