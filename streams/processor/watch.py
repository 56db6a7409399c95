"""The SLA watch: which sessions of this worker's partitions are due a stall or an expiry, and at what "now".

"Now" for a partition is the log's own time (the newest ``received_at`` consumed from it) while the
consumer is behind (its next offset is below the partition's high-water mark), and the wall clock once it
has caught up (or, when the high-water mark is unknown, once the partition has been quiet for ``QUIET_S``). A replay
at full speed therefore judges sessions where the live run did, and a quiet live log still fires on time.
The watch only decides; the owning agent re-judges each command and applies it (app.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from aiokafka.partitioner import murmur2

from streams.processor import rules

QUIET_S = 3.0


def partition_of(key: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the key bytes), as the producers of the log use it."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class PartitionClock:
    """Per partition: the newest receive time consumed and when (by the injectable wall clock) it was."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._log_ms: dict[int, int] = {}
        self._seen_at: dict[int, float] = {}
        self._next_offset: dict[int, int] = {}

    def saw(self, partition: int, received_at_ms: int, offset: int = -1) -> None:
        self._log_ms[partition] = max(self._log_ms.get(partition, 0), received_at_ms)
        self._seen_at[partition] = self.clock()
        self._next_offset[partition] = max(self._next_offset.get(partition, 0), offset + 1)

    def now_ms(self, partition: int, highwater: int | None = None) -> int:
        wall = self.clock()
        seen = self._seen_at.get(partition)
        if seen is None:
            return int(wall * 1000)
        if highwater is not None and highwater >= 0:
            behind = self._next_offset.get(partition, 0) < highwater
            return self._log_ms[partition] if behind else int(wall * 1000)
        return int(wall * 1000) if wall - seen >= QUIET_S else self._log_ms[partition]


def sweep(table: Mapping[str, dict] | Iterable, assigned: set[int], partitions: int, clock: PartitionClock,
          sla_seconds: float, retention_s: float,
          highwater: Callable[[int], int | None] = lambda _p: None) -> Iterator[tuple[str, str, int]]:
    """``(session key, "stall" | "expire", now_ms)`` for every session of an assigned partition that is due."""
    for name, state in list(table.items()):
        if state is None:
            continue
        partition = partition_of(name, partitions)
        if partition not in assigned:
            continue
        now = clock.now_ms(partition, highwater(partition))
        if rules.stall_due(state, now):
            yield name, "stall", now
        elif rules.expired(state, now, retention_s):
            yield name, "expire", now
