"""What a workload will cost and how long it will take, before any QPU time is spent.

::

    from aioruntime.estimate import JobSpec, estimate_workload

    specs = [JobSpec("executor_estimator", [(isa, observables)], {"default_shots": 1000})] * 10
    estimate = await estimate_workload(backend, specs, idle_s=5)
    print(estimate.table())
    estimate.mode("batch").billed_s      # QPU seconds billed as a batch ("jobs", "session")

Every distinct job of the workload is submitted once as a dry run (``_measure.py``): it goes to
the backend's mock twin, is validated and pre-processed for real and reports its modelled QPU
time; nothing runs on the QPU and nothing is billed. The figures then go through the billing
and timing model of ``_model.py``: the usage billed as single jobs, as a batch and as a
dedicated session (with the idle time between jobs a user expects), and the expected wall time
of each mode. ``python -m aioruntime.estimate`` prints it as a table (``_cli.py``).
"""

from __future__ import annotations

from ._measure import JobSpec, Primitive, WorkloadEstimate, estimate_workload
from ._model import JobEstimate, ModeEstimate, batch_wall, modes, session_bill

__all__ = [
    "JobEstimate",
    "JobSpec",
    "ModeEstimate",
    "Primitive",
    "WorkloadEstimate",
    "batch_wall",
    "estimate_workload",
    "modes",
    "session_bill",
]
