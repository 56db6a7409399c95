"""streams/rebuild.py: how many workers a rebuild starts, and which (pure parts; the replay itself is
tests/integration/test_rebuild.py on the real broker and ClickHouse)."""

from __future__ import annotations

import pytest

from streams import config
from streams.rebuild import Progress, StandingStill, default_processors, worker_plan


@pytest.mark.parametrize("cpus,partitions,expected", [(2, 8, 2), (8, 2, 2), (1, 8, 1), (None, 8, 1), (4, 4, 4)])
def test_one_processor_per_cpu_at_most_one_per_partition(monkeypatch: pytest.MonkeyPatch, cpus: int | None,
                                                         partitions: int, expected: int) -> None:
    monkeypatch.setattr("streams.rebuild.os.cpu_count", lambda: cpus)
    assert default_processors(config.Settings(partitions=partitions)) == expected


def test_the_plan_is_one_sink_and_the_processors() -> None:
    assert worker_plan(1) == [("sink", "sink"), ("processor", "processor")]
    assert worker_plan(3) == [("sink", "sink"), ("processor-1", "processor"), ("processor-2", "processor"),
                              ("processor-3", "processor")]


def test_a_replay_standing_still_is_told_once_per_stop() -> None:
    still = StandingStill(after_s=120)
    at = Progress(processed=10, total=100, sunk=5, to_sink=20)
    assert not still(at, 0) and not still(at, 119)
    assert still(at, 120)  # stood still for 120 s
    assert not still(at, 500)  # told once
    moved = Progress(processed=11, total=100, sunk=5, to_sink=20)
    assert not still(moved, 501) and not still(moved, 620)
    assert still(moved, 621)  # moved, then stood still again: told again


def test_a_finished_replay_is_never_standing_still() -> None:
    still = StandingStill(after_s=1)
    done = Progress(processed=100, total=100, sunk=20, to_sink=20)
    assert not any(still(done, t) for t in range(10))
