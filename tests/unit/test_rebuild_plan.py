"""streams/rebuild.py: how many workers a rebuild starts, and which (pure parts; the replay itself is
tests/integration/test_rebuild.py on the real broker and ClickHouse)."""

from __future__ import annotations

import pytest

from streams import config
from streams.rebuild import default_processors, worker_plan


@pytest.mark.parametrize("cpus,partitions,expected", [(2, 8, 2), (8, 2, 2), (1, 8, 1), (None, 8, 1), (4, 4, 4)])
def test_one_processor_per_cpu_at_most_one_per_partition(monkeypatch: pytest.MonkeyPatch, cpus: int | None,
                                                         partitions: int, expected: int) -> None:
    monkeypatch.setattr("streams.rebuild.os.cpu_count", lambda: cpus)
    assert default_processors(config.Settings(partitions=partitions)) == expected


def test_the_plan_is_one_sink_and_the_processors() -> None:
    assert worker_plan(1) == [("sink", "sink"), ("processor", "processor")]
    assert worker_plan(3) == [("sink", "sink"), ("processor-1", "processor"), ("processor-2", "processor"),
                              ("processor-3", "processor")]
