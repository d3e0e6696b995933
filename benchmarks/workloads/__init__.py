"""The four workloads. Each module has a frozen ``Params`` dataclass, ``jobs(params)`` (how many
jobs it will send, for the progress bar) and ``run(bench, params) -> WorkloadResult``."""
