"""``CpuPool``, the client's worker processes: results, exceptions and warnings come back to the
caller; what does not pickle runs in a thread; cancelling kills the worker; a worker that dies
fails only its call. No emulator: the functions are this module's."""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from aioruntime import InputValueError, WorkerDiedError
from aioruntime._cpu import CpuPool

pytestmark = pytest.mark.asyncio(loop_scope="module")


def pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def refuse(message: str) -> None:
    raise InputValueError(message)


def warn_then_return(value: str) -> str:
    warnings.warn(f"careful with {value}", UserWarning, stacklevel=1)
    return value


def announce_and_block(fifo: str) -> None:
    with open(fifo, "w") as out:
        out.write(str(os.getpid()))
    threading.Event().wait()


def read_pid(fifo: str) -> int:
    with open(fifo) as inp:
        return int(inp.read())


def die() -> None:
    os._exit(3)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool() -> AsyncIterator[CpuPool]:
    pool = CpuPool("process", 2)
    yield pool
    await pool.aclose()


async def test_calls_run_in_other_processes_in_parallel(pool: CpuPool) -> None:
    answers = await asyncio.gather(*(pool.run(pid_and_square, x) for x in range(6)))
    assert [square for _, square in answers] == [x * x for x in range(6)]
    pids = {pid for pid, _ in answers}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    stats = pool.statistics()
    assert stats.peak_running == 2 and stats.workers == len(pids) and stats.running == 0


async def test_exceptions_and_warnings_reach_the_caller(pool: CpuPool) -> None:
    with pytest.raises(InputValueError, match="no pubs"):
        await pool.run(refuse, "no pubs")
    with pytest.warns(UserWarning, match="careful with x"):
        assert await pool.run(warn_then_return, "x") == "x"


async def test_what_does_not_pickle_runs_in_a_thread(pool: CpuPool) -> None:
    before = pool.statistics().thread_fallbacks
    assert await pool.run(lambda: os.getpid()) == os.getpid()  # a lambda: not picklable
    assert pool.statistics().thread_fallbacks == before + 1


async def test_cancelling_a_call_kills_its_worker(pool: CpuPool, tmp_path: Path) -> None:
    fifo = str(tmp_path / "started")
    os.mkfifo(fifo)
    task = asyncio.ensure_future(pool.run(announce_and_block, fifo))
    pid = await asyncio.to_thread(read_pid, fifo)  # the call is running in worker `pid`
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped: the computation stopped
    assert pool.statistics().running == 0
    assert (await pool.run(pid_and_square, 3))[1] == 9  # and the pool carries on


async def test_a_worker_that_dies_fails_only_its_call(pool: CpuPool) -> None:
    with pytest.raises(WorkerDiedError, match="died while it ran die"):
        await pool.run(die)
    assert (await pool.run(pid_and_square, 4))[1] == 16


async def test_threads_run_the_same_calls() -> None:
    pool = CpuPool("thread", 2)
    assert await pool.run(pid_and_square, 5) == (os.getpid(), 25)
    with pytest.raises(InputValueError):
        await pool.run(refuse, "no")
    assert pool.statistics().workers == 0 and pool.statistics().calls == 2
    await pool.aclose()
