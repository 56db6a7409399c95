"""Batching rules of the ClickHouse sink, with an injected clock."""

from __future__ import annotations

import pytest

from streams.sink.batcher import Batcher
from streams.sink.consumer import backoff_delays


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rows(n: int, table: str = "webhook_events") -> dict:
    return {table: [{"i": i} for i in range(n)]}


def test_empty_batcher_is_never_due():
    b = Batcher(max_rows=10, max_age_s=1.0, clock=Clock())
    assert not b.due() and b.time_left() is None and b.take() is None


def test_due_by_age_of_the_first_record():
    clock = Clock()
    b = Batcher(max_rows=1000, max_age_s=1.0, clock=clock)
    b.add(("t", 0), 5, rows(1))
    clock.now += 0.6
    b.add(("t", 0), 6, rows(1))
    assert not b.due() and b.time_left() == pytest.approx(0.4)
    clock.now += 0.4
    assert b.due() and b.time_left() == 0.0


def test_due_by_row_count():
    b = Batcher(max_rows=5, max_age_s=60, clock=Clock())
    b.add(("t", 0), 0, rows(3))
    assert not b.due()
    b.add(("t", 0), 1, {"webhook_events": [{}], "session_files": [{}]})
    assert b.due() and b.time_left() == 0.0


def test_highest_offset_per_partition_and_commit_offsets():
    b = Batcher(clock=Clock())
    b.add(("a", 0), 7, rows(1))
    b.add(("a", 1), 3, rows(1))
    b.add(("a", 0), 9, rows(1))
    b.add(("a", 0), 8, rows(1))  # a smaller offset never lowers the mark
    b.add(("b", 0), 0, {})  # a tombstone: no row, the offset still moves on
    batch = b.take()
    assert batch.offsets == {("a", 0): 9, ("a", 1): 3, ("b", 0): 0}
    assert batch.commit_offsets() == {("a", 0): 10, ("a", 1): 4, ("b", 0): 1}
    assert batch.records == 5 and batch.row_count == 4


def test_take_starts_a_new_batch():
    clock = Clock()
    b = Batcher(max_rows=10, max_age_s=1.0, clock=clock)
    b.add(("t", 0), 1, rows(2, "sessions"))
    first = b.take()
    assert first.rows == {"sessions": [{"i": 0}, {"i": 1}]} and first.started_at == 100.0
    assert b.take() is None and not b.due()
    clock.now = 200.0
    b.add(("t", 0), 2, rows(1))
    assert b.current.started_at == 200.0 and b.current.offsets == {("t", 0): 2}


def test_a_batch_of_only_tombstones_is_still_due_so_its_offsets_get_committed():
    clock = Clock()
    b = Batcher(max_rows=10, max_age_s=1.0, clock=clock)
    b.add(("s", 0), 4, {})
    clock.now += 1.0
    assert b.due()
    batch = b.take()
    assert batch.rows == {} and batch.pending_tables() == [] and batch.commit_offsets() == {("s", 0): 5}


def test_pending_tables_skip_those_already_inserted():
    b = Batcher(clock=Clock())
    b.add(("t", 0), 0, {"webhook_events": [{}], "session_files": [{}], "dead_letters": [{}]})
    batch = b.take()
    assert batch.pending_tables() == ["dead_letters", "session_files", "webhook_events"]
    batch.done.add("session_files")
    assert batch.pending_tables() == ["dead_letters", "webhook_events"]


def test_invalid_limits_are_refused():
    with pytest.raises(ValueError):
        Batcher(max_rows=0)
    with pytest.raises(ValueError):
        Batcher(max_age_s=0)


def test_backoff_doubles_up_to_its_cap():
    delays = backoff_delays(0.2, 1.0)
    assert [next(delays) for _ in range(6)] == [0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
