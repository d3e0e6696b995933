"""Shared fixtures: the real emulator over loopback, in a background thread.

``emulator`` is shared by a whole test module (worker processes take seconds to start);
``make_emulator`` builds a fresh one with its own config (for a manual clock, a small lane count,
keys and instances) and stops it after the test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from emulator.config import ClockSpec, Config
from emulator.testing import EmulatorThread

# Property-based tests draw the same examples on every run ("ci", the default), so a failure in
# CI reproduces locally; HYPOTHESIS_PROFILE=explore draws fresh ones (and keeps a database).
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def emulator_config(**overrides: Any) -> Config:
    values: dict[str, Any] = {"port": 0, "data_dir": Path(":memory:"), "record_requests": True}
    if isinstance(overrides.get("clock"), str):
        overrides["clock"] = ClockSpec.parse(overrides["clock"])
    values.update(overrides)
    return Config(**values)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(emulator_config()) as emu:
        yield emu


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., EmulatorThread]]:
    started: list[EmulatorThread] = []

    def make(**overrides: Any) -> EmulatorThread:
        emu = EmulatorThread(emulator_config(**overrides))
        emu.start()
        started.append(emu)
        return emu

    yield make
    for emu in reversed(started):
        emu.stop()


@pytest.fixture(scope="module")
def official(emulator: EmulatorThread) -> Any:
    """The unmodified official QiskitRuntimeService, pointed at the module's emulator."""
    return emulator.official_service()
