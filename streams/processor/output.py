"""How the processor's records reach Kafka: straight into faust's own aiokafka producer, in an order that
makes a crash at any moment lose nothing.

Every event the agent processes changes one table part (a changelog record) and publishes a session
snapshot, sometimes an alert; an event it cannot handle publishes a dead letter instead. Through faust's per-message path (``Topic.send``, ``Table.__setitem__``: a
FutureMessage, the ProducerBuffer's task, sensors, callbacks) each record cost about 70 µs of the event
loop, more than the rest of the event's processing (bench/README.md). :class:`Output` appends them to the
aiokafka producer that faust runs, a few µs each.

The order is what at-least-once needs. Re-processing an event whose table change already reached the
changelog is a no-op (merging is idempotent), so it would not publish the event's snapshot and alerts
again: those must be in Kafka before the table change is. So snapshots, alerts and dead letters are sent at
once, and
table changes are held (the latest value per table and key) until faust flushes its producer, which it
does before every commit and on every revocation (``Consumer._commit_offsets`` and
``App._on_partitions_revoked`` -> ``Producer.flush``). The flush then (1) waits until everything sent so far
is acknowledged (``acks=all``), the snapshots and alerts of the held changes among it, (2) sends the held
changes, (3) waits for those too. faust computes the offsets it commits before it flushes, so every
committed offset's changes are in the changelog, and a worker killed anywhere in between leaves its
successor either the change (and then also its snapshot and alerts) or an uncommitted event to process
again. Flushes run one at a time, so a commit's flush cannot pass a revocation's that is still sending.
Holding the changes also writes a key changed many times within a commit interval once.

A record that fails after the producer's own retries makes every later flush, and so every later commit,
raise: nothing is committed past an effect that did not reach Kafka, and the worker's successor
re-processes from the last commit. Records are never dropped silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust

log = logging.getLogger("streams.processor")


class OutputError(RuntimeError):
    """A record of the processor could not be written to Kafka: offsets must not be committed past it."""


class Output:
    """Sends snapshots and alerts at once, table changes at the next flush (see the module doc).

    ``flush`` is the producer's own flush (returns once everything sent so far is acknowledged or failed);
    ``producer()`` the aiokafka producer to send with. :meth:`install` wires one to faust's producer."""

    def __init__(self, flush: Callable[[], Awaitable[None]], producer: Callable[[], Any]) -> None:
        self.failed: BaseException | None = None
        self._unconfirmed: list[asyncio.Future[Any]] = []  # sent, not yet seen resolved (``_confirm``)
        self._held: dict[tuple[str, int, bytes], bytes | None] = {}  # (changelog, partition, key) -> value
        self._flush = flush
        self._producer = producer
        self._one_at_a_time = asyncio.Lock()  # a commit's flush must not pass a revocation's still sending

    @classmethod
    def install(cls, app: faust.App) -> Output:
        """An Output on the aiokafka producer faust runs, whose every flush (before each commit and on each
        revocation) becomes :meth:`flush`."""
        producer = app.producer
        output = cls(producer.flush, producer._ensure_producer)
        producer.flush = output.flush  # type: ignore[method-assign]
        return output

    async def flush(self) -> None:
        """Everything sent so far acknowledged, then the held changes sent and acknowledged; one at a time."""
        async with self._one_at_a_time:
            held, self._held = self._held, {}  # changes made from now on wait for the next flush
            try:
                await self._flush()  # (1) the snapshots and alerts of the held changes are in Kafka
                self._confirm()
                self.check()
                for (topic, partition, key), value in held.items():
                    await self.send(topic, key, value, partition)  # (2)
                await self._flush()  # (3)
                self._confirm()
                self.check()
            except BaseException:
                # not sent, or not known to be: the next flush sends them (again), newer changes win
                self._held = {**held, **self._held}
                raise

    def hold(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        """A table change for the changelog, sent by the next flush (``value=None`` deletes the key)."""
        self._held[(topic, partition, key)] = value

    def check(self) -> None:
        """Raise if a record is known to have failed: called by the commit's flush and before every send."""
        if self.failed is not None:
            raise OutputError(f"a processor record could not be written to Kafka ({self.failed!r}); no offset "
                              f"is committed past it: restart the worker to re-process from the last commit")

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        """Queue one record (``value=None`` is a tombstone; ``partition=None``: the key's default partition)."""
        self.check()
        self._unconfirmed.append(await self._producer().send(topic, value=value, key=key, partition=partition))

    def _confirm(self) -> None:
        """Look at the records resolved so far (all sent before a flush are, once it returns): the first that
        failed stops every later send and commit. Read here rather than by a callback on each record's
        future, which cost a turn of the event loop per record."""
        unresolved = []
        for sent in self._unconfirmed:
            if not sent.done():
                unresolved.append(sent)
                continue
            exc = asyncio.CancelledError() if sent.cancelled() else sent.exception()
            if exc is not None and self.failed is None:
                self.failed = exc
                log.error("a processor record could not be written to Kafka: %r; the worker commits nothing from "
                          "now on", exc)
        self._unconfirmed = unresolved
