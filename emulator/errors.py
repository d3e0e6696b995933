"""The emulator's one refusal: a request it will not honour, answered as IBM's error body.

Raised anywhere below the handlers (the scheduler, the session book, request parsing) and turned
into ``{"errors": [...]}`` with ``status`` by the one error middleware in :mod:`emulator.app`.
A job that fails *while being processed* is not a refusal: that is
:class:`emulator.validation.JobInputError`, which ends the job ``Failed``.
"""

from __future__ import annotations

__all__ = ["Refused"]


class Refused(Exception):
    """The request is refused: answer ``status`` with IBM error ``code`` and ``message``."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
