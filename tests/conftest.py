"""Shared fixtures: the real emulator over loopback, in a background thread.

``emulator`` is shared by a whole test module (worker processes take seconds to start);
``make_emulator`` builds a fresh one with its own config (for a manual clock, a small lane count,
keys and instances) and stops it after the test.

For the aioruntime client tests: ``service`` (an open ``AsyncRuntimeService`` on the module's
``emulator``, on the module's event loop: modules using it mark their tests
``pytest.mark.asyncio(loop_scope="module")``) and ``manila`` (its ``ibm_manila`` backend). A
module that needs another emulator (a manual clock, fewer backends) overrides ``emulator``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
from hypothesis import settings
from ray_helpers import ray_cluster  # noqa: F401 (a session fixture: Ray starts only if used)

from emulator.config import ClockSpec, Config
from emulator.testing import EmulatorThread

if TYPE_CHECKING:
    from aioruntime import AsyncBackend, AsyncRuntimeService

# Worker processes (forked from a zygote that may be shared by the whole session) import the
# functions some tests send them (``plane_funcs``) from this directory.
_TESTS = str(Path(__file__).parent)
if _TESTS not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_TESTS, os.environ.get("PYTHONPATH")]))

# Property-based tests draw the same examples on every run ("ci", the default), so a failure in
# CI reproduces locally; HYPOTHESIS_PROFILE=explore draws fresh ones (and keeps a database).
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def emulator_config(**overrides: Any) -> Config:
    values: dict[str, Any] = {"port": 0, "data_dir": Path(":memory:"), "record_requests": True}
    if overrides.get("workers") == "ray":
        # One lane actor, not five: each actor imports qiskit and Aer, seconds of CPU apiece,
        # while the test's other xdist process runs beside it (two actors: 58 s for the three
        # official-client tests on Ray, one: 47 s). Lane calls on two actors at once are the
        # plane contract's test (test_worker_planes.py, on Ray too).
        values["cpu_slots"] = 1
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


@pytest.fixture
def workers(request: pytest.FixtureRequest) -> str:
    """The worker plane a test's emulator uses: ``process`` unless the test parametrizes it
    (``@pytest.mark.parametrize("workers", ["process", "ray"], indirect=True)``); ``ray``
    joins the session's Ray cluster."""
    kind: str = getattr(request, "param", "process")
    if kind == "ray":
        request.getfixturevalue("ray_cluster")
    return kind


@pytest.fixture(scope="module")
def official(emulator: EmulatorThread) -> Any:
    """The unmodified official QiskitRuntimeService, pointed at the module's emulator."""
    return emulator.official_service()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(emulator: EmulatorThread) -> AsyncIterator[AsyncRuntimeService]:
    """An open aioruntime service on the module's emulator."""
    from client_helpers import service_for

    async with service_for(emulator) as svc:
        yield svc


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def manila(service: AsyncRuntimeService) -> AsyncBackend:
    return await service.backend("ibm_manila")


#: Fixtures that start a real emulator: a test that uses one (directly or through another
#: fixture) is end-to-end.
_EMULATOR_FIXTURES = frozenset({"emulator", "make_emulator"})


@functools.cache
def _starts_emulators(path: str) -> bool:
    source = Path(path).read_text()
    return "EmulatorThread(" in source or "EmulatorProcess(" in source or "Server(" in source


def _uses_ray(item: pytest.Item, fixtures: set[str]) -> bool:
    """Whether the test joins the session's Ray cluster: by the fixture, or as the ``ray``
    case of a plane or workers parameter (whose fixture joins it)."""
    if "ray_cluster" in fixtures:
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "ray" in callspec.params.values()


#: The file whose every test is scheduled with the Ray tests (its few others are quick units).
_RAY_FILE = "tests/test_ray_emulator.py"


def _ray_scope(nodeid: str) -> bool:
    """Whether the xdist scheduler, which sees only node ids, puts the test with the Ray
    tests: the ``ray`` case of a parametrized test, or any test of ``_RAY_FILE`` (its few
    others come along). The collection hook checks that every test that uses Ray is here."""
    return nodeid.startswith(_RAY_FILE + "::") or nodeid.endswith("[ray]")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark end-to-end tests (a real emulator over loopback) ``e2e`` and the tests on a Ray
    cluster ``ray``; ``make test-fast`` runs the others, the unit layer, in well under a minute
    (the Ray plane's contract tests alone took 38 s of it: a cluster and actors that import
    qiskit). The tests on Ray come first, then the files largest first (see
    :func:`pytest_xdist_make_scheduler`)."""
    on_ray: list[pytest.Item] = []
    by_file: dict[str, list[pytest.Item]] = {}
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _EMULATOR_FIXTURES or _starts_emulators(str(item.path)):
            item.add_marker(pytest.mark.e2e)
        uses_ray = _uses_ray(item, fixtures)
        if uses_ray:
            item.add_marker(pytest.mark.ray)
        if uses_ray and not _ray_scope(item.nodeid):
            raise pytest.UsageError(
                f"{item.nodeid} uses Ray: put it in {_RAY_FILE} or parametrize it with a "
                "'ray' case, so that the xdist scheduler runs it with the other Ray tests"
            )
        if _ray_scope(item.nodeid):
            on_ray.append(item)
        else:
            by_file.setdefault(item.nodeid.split("::")[0], []).append(item)
    largest_first = sorted(by_file.values(), key=len, reverse=True)  # stable: file order on ties
    items[:] = on_ray + [item for group in largest_first for item in group]


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: absent with -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` (``make test``), with one change: the tests on Ray are one unit,
    sent first, so one xdist worker starts a Ray cluster and runs them all while the other
    takes whole files, largest first (as xdist orders them). Two workers each started a
    cluster: some 10 s of CPU apiece (a raylet and two Python agents per node), and about 5%
    of a core each while they lived. (``--dist loadgroup`` with ``xdist_group`` marks would
    say this, but pytest-xdist 3.8 renames the node ids through an attribute pytest 9 no
    longer reads: the marks group nothing.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class RayFirst(LoadFileScheduling):  # type: ignore[misc]  # xdist ships no type hints
        def _split_scope(self, nodeid: str) -> str:
            return "ray" if _ray_scope(nodeid) else super()._split_scope(nodeid)

    config.option.loadscopereorder = False  # the collection's order: Ray first (see above)
    return RayFirst(config, log)
