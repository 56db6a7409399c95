"""How the processor's records reach Kafka: in batches, straight into faust's own aiokafka producer, in an
order that makes a crash at any moment lose nothing.

Every event the agent processes changes a table part (a changelog record) and the session's snapshot,
sometimes raises an alert; an event it cannot handle publishes a dead letter instead. Through faust's
per-message path (``Topic.send``, ``Table.__setitem__``: a FutureMessage, the ProducerBuffer's task,
sensors, callbacks) each record cost about 70 µs of the event loop, and through aiokafka's own ``send``
still about 15 (a future per record, the partitioner, the accumulator), more than the rules themselves
(bench/README.md). :class:`Output` holds them and appends them, at the flush, to aiokafka record batches
of its own (``create_batch``/``send_batch``: one future per batch), a microsecond or two each.

The order is what at-least-once needs. Re-processing an event whose table change already reached the
changelog is a no-op (merging is idempotent), so it would not publish the event's snapshot and alerts
again: those must be in Kafka before the table change is. So alerts (in order), snapshots (the latest per
topic, partition and key: the sessions topic is compacted, so a consumer that keeps up sees every
change that lasted a commit interval, and a replay publishes each session once per interval instead of
once per event, as Kafka Streams' record cache does) and table changes (the latest value per table and
key) are all held until faust flushes its producer, which it does before every commit and on every
revocation (``Consumer._commit_offsets`` and ``App._on_partitions_revoked`` -> ``Producer.flush``). The
flush then (1) sends the held alerts and snapshots and waits until everything sent so far is
acknowledged (``acks=all``), (2) sends the held changes, (3) waits for those too. faust computes the
offsets it commits before it flushes, so every committed offset's changes are in the changelog, and a
worker killed anywhere in between leaves its successor either the change (and then also its snapshot and
alerts) or an uncommitted event to process again. Flushes run one at a time, so a commit's flush cannot
pass a revocation's that is still sending. Dead letters are sent at once (:meth:`Output.send`): the
commit that passes their event waits for them like for the rest.

A snapshot is encoded at the flush (``encode`` of :meth:`Output.publish_latest`), once per key however
often the session changed in between. The rules refuse, per event, the one value they can compute that a
snapshot cannot hold (rules.derive), so the encoding does not fail; if it ever does, it is a bug and
fails the output like a refused record.

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

from streams import internals

log = logging.getLogger("streams.processor")


class OutputError(RuntimeError):
    """A record of the processor could not be written to Kafka: offsets must not be committed past it."""


Record = tuple[str, int, bytes | None, bytes | None]  # topic, partition, key, value (None: a tombstone)


class Output:
    """Holds the processor's records and sends them in the flush's order (see the module doc).

    ``flush`` is the producer's own flush (returns once everything sent so far is acknowledged or failed);
    ``producer()`` the aiokafka producer to send with. :meth:`install` wires one to faust's producer."""

    def __init__(self, flush: Callable[[], Awaitable[None]], producer: Callable[[], Any]) -> None:
        self.failed: BaseException | None = None
        self._unconfirmed: list[asyncio.Future[Any]] = []  # sent, not yet seen resolved (``_confirm``)
        self._published: list[Record] = []  # alerts, in order
        self._latest: dict[tuple[str, int, bytes], tuple[Callable[[Any], bytes | None] | None, Any]] = {}
        self._held: dict[tuple[str, int, bytes], bytes | None] = {}  # (changelog, partition, key) -> value
        self._flush = flush
        self._producer = producer
        self._one_at_a_time = asyncio.Lock()  # a commit's flush must not pass a revocation's still sending
        # called by a flush once its held changes are acknowledged: (held records, the offset of the last
        # record of each (topic, partition) among them, where the producer told it)
        self.durable: Callable[[dict[tuple[str, int, bytes], bytes | None], dict[tuple[str, int], int]], None] | None \
            = None

    @classmethod
    def install(cls, app: faust.App) -> Output:
        """An Output on the aiokafka producer faust runs, whose every flush (before each commit and on each
        revocation) becomes :meth:`flush`."""
        output = cls(*internals.flush_and_client(app.producer))
        internals.replace_flush(app.producer, output.flush)
        return output

    def publish(self, topic: str, partition: int, key: bytes, value: bytes) -> None:
        """An alert, sent by the next flush before the held table changes, in the order published."""
        self._published.append((topic, partition, key, value))

    def publish_latest(self, topic: str, partition: int, key: bytes, value: Any,
                       encode: Callable[[Any], bytes | None] | None = None) -> None:
        """A snapshot, sent by the next flush before the held table changes: only the latest ``value`` per
        topic, partition and key, ``encode``-d then (``value=None`` without ``encode`` is a tombstone)."""
        self._latest[(topic, partition, key)] = (encode, value)

    def hold(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        """A table change for the changelog, sent by the next flush after the published records
        (``value=None`` deletes the key); the latest per table and key."""
        self._held[(topic, partition, key)] = value

    async def flush(self) -> None:
        """The published records sent, then everything sent so far acknowledged, then the held changes sent
        and acknowledged; one at a time.

        Should it stop half-way (cancelled, e.g. by a worker stopping, or a failed wait), what it had not yet
        queued waits for the next flush, newer values winning; what it had queued is on its way and is not
        sent again: an alert queued twice would page twice (a failure of it shows at a later flush)."""
        async with self._one_at_a_time:
            # what is published or held from now on waits for the next flush
            published, latest, held = self._published, self._latest, self._held
            self._published, self._latest, self._held = [], {}, {}
            queued: set[int] = set()  # indexes of the records of step (1), then (2), handed to the producer
            changes: list[Record] = []
            try:
                self.check()
                await self._send_all([*published, *self._rendered(latest)], queued)
                await self._flush()  # (1) the alerts and snapshots of the held changes are in Kafka
                self._confirm()
                self.check()
                published, latest = [], {}
                queued = set()
                changes = [(topic, partition, key, value) for (topic, partition, key), value in held.items()]
                taken, held = held, {}
                last = await self._send_all(changes, queued)  # (2)
                changes = []
                await self._flush()  # (3)
                self._confirm()
                self.check()
            except BaseException:
                # not queued: the next flush sends them, newer values win
                keys = list(latest)
                self._published = [*(r for i, r in enumerate(published) if i not in queued), *self._published]
                self._latest = {**{k: latest[k] for i, k in enumerate(keys, len(published)) if i not in queued},
                                **self._latest}
                held.update(((topic, partition, key), value)
                            for i, (topic, partition, key, value) in enumerate(changes) if i not in queued)
                self._held = {**held, **self._held}
                raise
            if self.durable is not None and taken:
                # (4) the held changes are in the changelog: the local store may have them now (state.py)
                self.durable(taken, last_offsets(last))

    def check(self) -> None:
        """Raise if a record is known to have failed: called by every flush and before every send."""
        if self.failed is not None:
            raise OutputError(f"a processor record could not be written to Kafka ({self.failed!r}); no offset "
                              f"is committed past it: restart the worker to re-process from the last commit")

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        """Queue one record at once (``partition=None``: the key's default partition); a dead letter."""
        self.check()
        self._unconfirmed.append(await self._producer().send(topic, value=value, key=key, partition=partition))

    def _rendered(self, latest: dict[tuple[str, int, bytes], tuple[Callable[[Any], bytes | None] | None, Any]],
                  ) -> list[Record]:
        out: list[Record] = []
        for (topic, partition, key), (encode, value) in latest.items():
            try:
                out.append((topic, partition, key, value if encode is None else encode(value)))
            except Exception as exc:  # noqa: BLE001 - a bug (the rules refuse what a snapshot cannot hold)
                self._fail(exc, f"{topic}[{partition}] key {key!r} could not be encoded")
                self.check()
        return out

    async def _send_all(self, records: list[Record], queued: set[int],
                        ) -> dict[tuple[str, int], tuple[asyncio.Future[Any], int]]:
        """Append ``records`` to record batches of their topic and partition and queue each batch; ``queued``
        gets the index of every record whose batch the producer has taken (it then delivers it or fails it),
        also when this stops half-way. Returns the last batch of each (topic, partition) with how many records
        it holds."""
        producer = self._producer()
        batches: dict[tuple[str, int], tuple[Any, list[int]]] = {}
        for i, (topic, partition, key, value) in enumerate(records):
            entry = batches.get((topic, partition))
            if entry is None:
                entry = batches[(topic, partition)] = (producer.create_batch(), [])
            batch, members = entry
            if batch.append(timestamp=None, key=key, value=value) is None:  # full: queue it, start another
                self._unconfirmed.append(await producer.send_batch(batch, topic, partition=partition))
                queued.update(members)
                batch, members = batches[(topic, partition)] = producer.create_batch(), []
                batch.append(timestamp=None, key=key, value=value)  # an empty batch takes any record
            members.append(i)
        last = {}
        for (topic, partition), (batch, members) in batches.items():
            batch.close()  # complete: the sender takes it at once instead of lingering for more records
            sent = await producer.send_batch(batch, topic, partition=partition)
            self._unconfirmed.append(sent)
            queued.update(members)
            last[(topic, partition)] = (sent, len(members))
        return last

    def _fail(self, exc: BaseException, what: str = "a processor record could not be written to Kafka") -> None:
        if self.failed is None:
            self.failed = exc
            log.error("%s: %r; the worker commits nothing from now on", what, exc)

    def _confirm(self) -> None:
        """Look at the batches resolved so far (all sent before a flush are, once it returns): the first that
        failed stops every later send and commit. Read here rather than by a callback on each future, which
        cost a turn of the event loop each."""
        unresolved = []
        for sent in self._unconfirmed:
            if not sent.done():
                unresolved.append(sent)
                continue
            exc = asyncio.CancelledError() if sent.cancelled() else sent.exception()
            if exc is not None:
                self._fail(exc)
        self._unconfirmed = unresolved


def last_offsets(last: dict[tuple[str, int], tuple[asyncio.Future[Any], int]]) -> dict[tuple[str, int], int]:
    """The offset of the last record of each (topic, partition), from its last batch's acknowledgement (the
    batch's base offset) and its size; none where the producer did not say."""
    out = {}
    for tp, (sent, count) in last.items():
        if sent.done() and not sent.cancelled() and sent.exception() is None:
            offset = getattr(sent.result(), "offset", None)
            if isinstance(offset, int) and offset >= 0:
                out[tp] = offset + count - 1
    return out
