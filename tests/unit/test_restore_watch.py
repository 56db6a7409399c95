"""The restore watch's bookkeeping (streams/processor/restore_watch.py): which changelog partitions a table restore
has stopped reading. The remedy itself, on a real worker with the defect provoked, is
tests/faults/test_faust_remedies.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.types import TP

from streams.processor.restore_watch import RestoreProgress, RestoreWatch


def test_a_partition_whose_offset_stands_still_with_records_left_is_stalled_after_the_grace_period() -> None:
    progress: RestoreProgress[str] = RestoreProgress(stall_s=10)
    assert progress.stalled({"a": 5, "b": 7}, {"a": 10, "b": 3}, now=0) == []  # first seen: grace period
    assert progress.stalled({"a": 5, "b": 9}, {"a": 10, "b": 1}, now=9.9) == []
    assert progress.stalled({"a": 5, "b": 10}, {"a": 10, "b": 1}, now=10) == ["a"]  # b moved at 9.9 and at 10
    assert progress.stalled({"a": 5, "b": 10}, {"a": 10, "b": 1}, now=15) == []  # a: a new grace period
    assert progress.stalled({"a": 5, "b": 10}, {"a": 10, "b": 1}, now=20) == ["a", "b"]


def test_a_partition_that_moves_or_is_done_is_never_stalled() -> None:
    progress: RestoreProgress[str] = RestoreProgress(stall_s=10)
    for t in range(0, 60, 5):
        assert progress.stalled({"moving": t, "done": 40}, {"moving": 100 - t, "done": 0}, now=t) == []


def test_a_reset_gives_every_partition_its_grace_period_again() -> None:
    progress: RestoreProgress[str] = RestoreProgress(stall_s=10)
    progress.stalled({"a": 1}, {"a": 5}, now=0)
    progress.reset()
    assert progress.stalled({"a": 1}, {"a": 5}, now=11) == []
    assert progress.stalled({"a": 1}, {"a": 5}, now=21) == ["a"]


class Consumer:
    def __init__(self) -> None:
        self.flow_active = True
        self.calls: list[tuple] = []

    def resume_partitions(self, tps: set) -> None:
        self.calls.append(("resume", frozenset(tps)))

    async def seek(self, tp: object, offset: int) -> None:
        self.calls.append(("seek", tp, offset))


def app_restoring(offsets: dict, remaining: dict) -> SimpleNamespace:
    recovery = SimpleNamespace(in_recovery=True, active_offsets=offsets, active_remaining=lambda: remaining)
    return SimpleNamespace(tables=SimpleNamespace(recovery=recovery), consumer=Consumer(), consumer_generation_id=3)


def test_a_stalled_changelog_partition_is_resumed_and_sought_to_what_was_restored() -> None:
    tp = TP("x-recording-changelog", 0)
    other = TP("x-chat-changelog", 1)
    app = app_restoring({tp: 19, other: -1}, {tp: 20, other: 4})
    now = [0.0]
    watch = RestoreWatch(app, lambda: "state", stall_s=10, clock=lambda: now[0])
    for t in (0, 2, 4, 12, 13):  # the first look only takes the generation in
        now[0] = t
        asyncio.run(watch.check())
    assert app.consumer.calls == [("resume", frozenset({tp})), ("seek", tp, 19),
                                  ("resume", frozenset({other})), ("seek", other, 0)]
    assert watch.sought == 2


def test_nothing_is_sought_while_no_restore_runs_or_a_rebalance_stops_the_flow() -> None:
    tp = TP("x-recording-changelog", 0)
    app = app_restoring({tp: 19}, {tp: 20})
    now = [0.0]
    watch = RestoreWatch(app, lambda: "state", stall_s=10, clock=lambda: now[0])
    for t in range(0, 100, 2):
        now[0] = t
        app.consumer.flow_active = t % 8 != 0  # a rebalance every 8 s: each restarts the grace period
        app.tables.recovery.in_recovery = t < 50
        asyncio.run(watch.check())
    assert app.consumer.calls == []
