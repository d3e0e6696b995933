"""Background-task bookkeeping shared by the token refresh, the job waiters and the service."""

from __future__ import annotations

import asyncio
from typing import Any


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a background task's exception as retrieved (it is re-raised to any awaiter)."""
    if not task.cancelled():
        task.exception()
