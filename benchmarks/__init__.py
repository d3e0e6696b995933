"""Benchmarks of aioruntime against the emulator: what concurrent submission buys in wall time,
next to the theoretical bound (``timing-and-scheduling.md`` §5).

Run ``python -m benchmarks`` (``--quick``, ``--demo``, ``--workloads``, ``--clock``, ``--out``);
see ``benchmarks/README.md`` for the workloads and how to read the table.
"""
