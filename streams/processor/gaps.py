"""Holes in what the agent receives from the webhook log, and reading the missing records back.

The webhook log is never compacted and written without transactions, so its offsets are contiguous: per
partition the agent must receive every offset from where the group's committed offset put it (going back,
a re-delivery, is harmless: merging is idempotent). faust's fetch path around a rebalance is where that
could break (its read-offset bookkeeping drops records it believes already read; upstream issue #221 is
of that family), and the worker-kill fault test saw sessions miss an event after a rebalance. So the agent
checks the invariant (:class:`Continuity`) and, on a hole, reads the missing records with
:class:`LogReader` and processes them before the record that revealed it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord


class Continuity:
    """Per partition, the next offset the agent should receive. Pure bookkeeping."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}

    def knows(self, partition: int) -> bool:
        """Whether a record of ``partition`` was received since its assignment (``missing`` then needs no
        ``start``)."""
        return partition in self._next

    def missing(self, partition: int, offset: int, start: int | None = None) -> range:
        """The offsets skipped before ``offset`` (empty when none); ``offset`` is then taken as received.

        A record below the highest one received is a re-delivery of something already processed (holes
        are filled as they are found), so only going forward can skip. ``start``: where the group's
        committed offset put this worker, judged against the first record of a partition after an
        assignment (None: unknown, that first record is taken as the start)."""
        expected = self._next.get(partition, start)
        if expected is not None and offset < expected:
            return range(0)
        self._next[partition] = offset + 1
        return range(0) if expected is None else range(expected, offset)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: where the next owner starts is the group's committed offset, not ours."""
        for partition in partitions:
            self._next.pop(partition, None)


class LogReader:
    """Reads given offsets of one topic with a consumer of its own (no group, nothing committed)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def read(self, partition: int, offsets: range, timeout_s: float = 30.0) -> list[ConsumerRecord]:
        """The records at ``offsets`` of ``partition``, in order; raises TimeoutError if they cannot be read."""
        if not offsets:
            return []
        async with self._lock:
            if self._consumer is None:
                self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                                  group_id=None)
                await self._consumer.start()
            consumer = self._consumer
            tp = TopicPartition(self.topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, offsets.start)
            out: list[ConsumerRecord] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while not out or out[-1].offset < offsets.stop - 1:
                if loop.time() > deadline:
                    raise TimeoutError(f"{self.topic}[{partition}] offsets {offsets.start}..{offsets.stop - 1} "
                                       f"not readable within {timeout_s} s")
                batch = await consumer.getmany(tp, timeout_ms=500)
                out += [r for r in batch.get(tp, []) if r.offset in offsets]
            return out

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
