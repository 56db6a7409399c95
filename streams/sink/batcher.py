"""Batching of rows for ClickHouse, with the offsets each batch carries (pure apart from the clock).

Records are added with their partition and offset; a batch is due when it holds ``max_rows`` rows or its
first record is ``max_age_s`` old (about one insert per second under a steady flow). A batch knows the
highest offset it holds per partition, so offsets are committed (``offset + 1``) only once the insert
carrying them has succeeded. A record that yields no row (a tombstone) still moves its partition's
offset forward. The clock is injectable, so the age rule is tested without waiting.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

TopicPartitionKey = tuple[str, int]  # (topic, partition)


@dataclasses.dataclass
class Batch:
    """Rows by table, and the highest offset per partition of the records they came from."""

    rows: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    offsets: dict[TopicPartitionKey, int] = dataclasses.field(default_factory=dict)
    records: int = 0
    row_count: int = 0
    started_at: float | None = None
    # Tables already inserted: a retry after a partial failure inserts only the rest.
    done: set[str] = dataclasses.field(default_factory=set)

    def add(self, tp: TopicPartitionKey, offset: int, rows: Mapping[str, list[dict[str, Any]]], now: float) -> None:
        if self.started_at is None:
            self.started_at = now
        for table, table_rows in rows.items():
            if table_rows:
                self.rows.setdefault(table, []).extend(table_rows)
                self.row_count += len(table_rows)
        if offset > self.offsets.get(tp, -1):
            self.offsets[tp] = offset
        self.records += 1

    def pending_tables(self) -> list[str]:
        """Tables still to insert, in a fixed order."""
        return [t for t in sorted(self.rows) if t not in self.done]

    def commit_offsets(self) -> dict[TopicPartitionKey, int]:
        """What to commit once every table is inserted: the next offset to read, per partition."""
        return {tp: offset + 1 for tp, offset in self.offsets.items()}

    def __bool__(self) -> bool:
        return self.records > 0


class Batcher:
    """Accumulates records into a :class:`Batch` until it is due; ``take()`` hands it over and starts anew."""

    def __init__(self, max_rows: int = 10_000, max_age_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_rows <= 0 or max_age_s <= 0:
            raise ValueError("max_rows and max_age_s must be positive")
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.clock = clock
        self._batch = Batch()

    @property
    def current(self) -> Batch:
        return self._batch

    def add(self, tp: TopicPartitionKey, offset: int, rows: Mapping[str, list[dict[str, Any]]]) -> None:
        self._batch.add(tp, offset, rows, self.clock())

    def due(self) -> bool:
        batch = self._batch
        if not batch:
            return False
        return batch.row_count >= self.max_rows or self.clock() - (batch.started_at or 0.0) >= self.max_age_s

    def time_left(self) -> float | None:
        """Seconds until the current batch is due by age (0 when due), None when it is empty."""
        batch = self._batch
        if not batch:
            return None
        if batch.row_count >= self.max_rows:
            return 0.0
        return max(0.0, self.max_age_s - (self.clock() - (batch.started_at or 0.0)))

    def take(self) -> Batch | None:
        """The current batch (None when empty); the batcher starts a new one."""
        batch, self._batch = self._batch, Batch()
        return batch or None
