"""Who gets a free lane: the owner session first, then fair share between instances."""

from __future__ import annotations

from emulator.admission import Admission, FairShare, Waiting


class Now:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def queue(*jobs: tuple[str, str, str | None]) -> tuple[Admission, FairShare, Now]:
    now = Now()
    fair = FairShare(now, half_life_s=100.0)
    admission = Admission(fair)
    for seq, (job_id, instance, session) in enumerate(jobs, start=1):
        admission.push(Waiting(job_id, seq, instance, session))
    return admission, fair, now


def drain(admission: Admission, owner: str | None = None, exclusive: bool = False) -> list[str]:
    out = []
    while (w := admission.take(owner, exclusive=exclusive)) is not None:
        out.append(w.job_id)
    return out


def test_fifo_within_an_instance_and_least_recent_usage_first() -> None:
    admission, fair, _ = queue(("a1", "A", None), ("a2", "A", None), ("b1", "B", None))
    fair.charge("A", 10.0)  # A used the QPU recently: B goes first
    assert drain(admission) == ["b1", "a1", "a2"]
    assert len(admission) == 0


def test_usage_decays_with_its_half_life() -> None:
    now = Now()
    fair = FairShare(now, half_life_s=100.0)
    fair.charge("A", 8.0)
    now.t = 200.0
    assert abs(fair.recent("A") - 2.0) < 1e-9
    fair.charge("A", 1.0)
    assert abs(fair.recent("A") - 3.0) < 1e-9


def test_a_dedicated_owner_is_the_only_one_admitted() -> None:
    admission, _, _ = queue(("x1", "X", None), ("s1", "A", "S"), ("x2", "X", None))
    assert drain(admission, owner="S", exclusive=True) == ["s1"]
    assert len(admission) == 2  # outsiders stay queued while it holds the QPU
    assert drain(admission) == ["x1", "x2"]


def test_a_batch_owner_goes_first_then_the_others() -> None:
    admission, _, _ = queue(("x1", "X", None), ("b1", "A", "B"), ("b2", "A", "B"))
    assert drain(admission, owner="B") == ["b1", "b2", "x1"]


def test_removed_jobs_are_skipped_and_positions_follow_the_rules() -> None:
    admission, fair, _ = queue(("a1", "A", None), ("a2", "A", None), ("b1", "B", None))
    entries = {w.job_id: w for w in admission}
    fair.charge("A", 1.0)
    assert [admission.position(entries[j]) for j in ("b1", "a1", "a2")] == [1, 2, 3]
    admission.remove(entries["a1"])
    admission.remove(entries["a1"])  # twice is harmless
    assert len(admission) == 2
    assert drain(admission) == ["b1", "a2"]
