"""The live dashboard: ``GET /`` (see :mod:`emulator.dashboard.web`), fed by
:class:`~emulator.dashboard.model.DashboardModel` from the scheduler's events."""
