"""The store's promises: durable before visible, one ordered writer, one state transition."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aioruntime.protocol import JobState
from emulator.store import JobFinal, JobRecord, SessionRecord, StorageError, Store


def job(job_id: str, seq: int = 1, instance: str = "i") -> JobRecord:
    return JobRecord(
        id=job_id,
        seq=seq,
        instance=instance,
        backend="b",
        program_id="sampler",
        created="2026-01-01T00:00:00+00:00",
        tags=["t"],
    )


async def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    async with Store(path) as store:
        await store.add_job(job("j1", store.next_seq()), '{"pubs": []}')
        await store.transition("j1", JobState.RUNNING)
        await store.transition("j1", JobState.COMPLETED, result_json="RESULT", bill=2.5)
        await store.save_session(SessionRecord(id="s1", instance="i", backend="b"))
    async with Store(path) as store:
        again = store.job("j1")
        assert again is not None and again.state == "Completed" and again.tags == ["t"]
        assert await store.result("j1") == "RESULT"
        assert await store.params("j1") == '{"pubs": []}'
        assert store.session("s1") is not None
        assert store.usage("i") == 2.5
        assert store.next_seq() == 2
        assert (await store.wait_final("j1")) is again
        assert store.count("b", "Completed") == 1


async def test_a_final_state_is_never_left() -> None:
    async with Store(":memory:") as store:
        await store.add_job(job("j"), "{}")
        await store.transition("j", JobState.CANCELLED, reason="by the user")
        for state in (JobState.RUNNING, JobState.COMPLETED, JobState.QUEUED):
            with pytest.raises(JobFinal, match="already Cancelled"):
                await store.transition("j", state)
        await store.add_job(job("k", 2), "{}")
        with pytest.raises(ValueError, match="Queued -> Completed"):
            await store.transition("k", JobState.COMPLETED)
        with pytest.raises(ValueError, match="only through transition"):
            await store.update_job("k", state=JobState.RUNNING)
        assert store.job("j").state == "Cancelled"  # type: ignore[union-attr]


async def test_concurrent_changes_of_one_job_run_one_at_a_time() -> None:
    """A cancel and a completion racing: exactly one wins, the other is refused."""
    async with Store(":memory:") as store:
        await store.add_job(job("j"), "{}")
        await store.transition("j", JobState.RUNNING)
        outcomes = await asyncio.gather(
            store.transition("j", JobState.COMPLETED, result_json="R", bill=1.0),
            store.transition("j", JobState.CANCELLED, bill=1.0),
            return_exceptions=True,
        )
        assert outcomes[0] is store.job("j") and isinstance(outcomes[1], JobFinal)
        assert store.job("j").state == "Completed"  # type: ignore[union-attr]
        assert store.usage("i") == 1.0  # billed once


async def test_bills_are_atomic_updates() -> None:
    """Ten concurrent bills of one instance all count (no read-modify-write across awaits)."""
    async with Store(":memory:") as store:
        for n in range(10):
            await store.add_job(job(f"j{n}", n + 1), "{}")
        await asyncio.gather(
            *(store.transition(f"j{n}", JobState.CANCELLED, bill=1.0) for n in range(10))
        )
        await store.save_session(SessionRecord(id="s", instance="i", backend="b"), bill=0.5)
        assert store.usage("i") == 10.5
        assert await store._read("SELECT seconds FROM usage WHERE instance = ?", ("i",)) == 10.5


async def test_a_cancelled_caller_does_not_interrupt_the_change() -> None:
    async with Store(":memory:") as store:
        await store.add_job(job("j"), "{}")
        caller = asyncio.ensure_future(store.transition("j", JobState.RUNNING))
        await asyncio.sleep(0)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await store.update_job("j", tags=["after"])  # queued behind the change: it is done
        assert store.job("j").state == "Running"  # type: ignore[union-attr]


async def test_a_full_disk_changes_nothing_and_recovers(tmp_path: Path) -> None:
    async with Store(tmp_path / "s.sqlite3") as store:
        await store.add_job(job("j"), "{}")
        await store.transition("j", JobState.RUNNING)
        pages = await store._read("PRAGMA page_count", ())
        await store.set_max_pages(pages)
        big = "x" * 200_000
        with pytest.raises(StorageError) as refused:
            await store.transition("j", JobState.COMPLETED, result_json=big, bill=3.0)
        assert refused.value.status == 507 and "nothing was changed" in refused.value.message
        rec = store.job("j")
        assert rec is not None and rec.state == "Running" and not rec.terminal
        assert store.usage("i") == 0.0 and not store.writable
        with pytest.raises(StorageError):
            await store.add_job(job("k", 2), big)
        assert store.job("k") is None
        await store.set_max_pages(1_000_000)  # space returns
        async with asyncio.timeout(30):
            await store.wait_writable()
        await store.transition("j", JobState.COMPLETED, result_json=big, bill=3.0)
        assert store.job("j").state == "Completed" and store.usage("i") == 3.0  # type: ignore[union-attr]
        assert await store.result("j") == big


async def test_the_results_committed_last_are_answered_from_memory(tmp_path: Path) -> None:
    """A result just committed is answered without reading it back (its waiters ask at once);
    the texts kept are bounded, the oldest go first, and the rest are read from disk."""
    async with Store(tmp_path / "s.sqlite3") as store:
        recent = store.recent_results
        recent.max_chars = 10

        async def complete(job_id: str, text: str) -> None:
            await store.add_job(job(job_id, store.next_seq()), "{}")
            await store.transition(job_id, JobState.RUNNING)
            await store.transition(job_id, JobState.COMPLETED, result_json=text)

        await complete("j0", "R0")
        await complete("j1", "R1" * 3)
        await complete("big", "x" * 11)  # larger than the bound: never kept
        hits = recent.hits
        assert await store.result("j0") == "R0" and await store.result("j1") == "R1R1R1"
        assert recent.hits == hits + 2
        assert await store.result("big") == "x" * 11
        assert recent.hits == hits + 2  # read from disk
        await complete("j2", "R2" * 2)  # 2 + 6 + 4 > 10: j0 goes
        assert await store.result("j0") == "R0"
        assert recent.hits == hits + 2
        assert await store.result("j2") == "R2R2" and recent.hits == hits + 3
        await store.delete_job("j2")
        assert await store.result("j2") is None


async def test_a_memory_store_writes_on_the_loop_in_order(tmp_path: Path) -> None:
    """A ``:memory:`` store has no disk to wait for: it starts no thread, and every write is
    committed, in the order asked for, before its caller goes on. A file store writes on its
    writer thread."""
    import threading

    def store_threads() -> set[str]:
        return {t.name for t in threading.enumerate() if t.name.startswith("emulator-store")}

    before = store_threads()
    async with Store(":memory:") as store:
        assert store_threads() == before
        await store.add_job(job("j"), "{}")
        await asyncio.gather(*(store.update_job("j", tags=[f"t{n}"]) for n in range(20)))
        assert store.job("j").tags == ["t19"]  # type: ignore[union-attr]
        meta = await store._read("SELECT meta FROM jobs WHERE id = ?", ("j",))
        assert '"tags":["t19"]' in meta
        change = store.transition("j", JobState.RUNNING)
        assert store.job("j").state == "Queued"  # type: ignore[union-attr]
        await change
        assert store.job("j").state == "Running"  # type: ignore[union-attr]
        # A failed write (the admin's full disk) fails alone and changes nothing, as on a file.
        store.simulated_full = True
        with pytest.raises(StorageError):
            await store.transition("j", JobState.COMPLETED, result_json="R", bill=2.0)
        assert store.job("j").state == "Running" and store.usage("i") == 0.0  # type: ignore[union-attr]
        assert not store.writable
        store.simulated_full = False
        async with asyncio.timeout(30):
            await store.wait_writable()
        await store.transition("j", JobState.COMPLETED, result_json="R", bill=2.0)
        assert await store.result("j") == "R" and store.usage("i") == 2.0
    async with Store(tmp_path / "s.sqlite3") as store:
        assert "emulator-store" in store_threads() - before
