"""How the agent handles one record of each of its topics: a webhook of the log (or an ingest instance's
watermark on it), a finding of the reconciler, a command of the SLA watch. Each is judged by the pure rules
against the session's parts and applied (effects.py) in one step of the event loop; one whose judgement
raises is dead-lettered (dead_lettering.py). A run of log records faust never delivered is read back
first (gaps.py)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import faust
import orjson
from faust.types import TP, Message

from streams import internals, watermark
from streams.avro import Codec
from streams.processor import rules
from streams.processor.dead_lettering import DeadLettering, Rejected
from streams.processor.effects import Effects
from streams.processor.gaps import Continuity, LogReader
from streams.processor.metrics import ProcessorMetrics
from streams.processor.state import SessionTables
from streams.processor.watch import DueIndex, PartitionClock

log = logging.getLogger("streams.processor")


class RecordHandler:
    """Handles the agent's records; ``heard`` gets, per log partition, when it last delivered a record (the
    SLA watch's ``check_progress`` reads it); ``committed(partition)`` is the group's committed offset of the
    log's partition (None: unknown)."""

    def __init__(self, *, app: faust.App, codec: Codec, tables: SessionTables, effects: Effects,
                 letters: DeadLettering, clocks: PartitionClock, index: DueIndex, continuity: Continuity,
                 reader: LogReader, metrics: ProcessorMetrics, log_topic: str, reconcile_topic: str, sla_s: int,
                 retention_s: int, heard: dict[int, float], committed: Callable[[int], int | None]) -> None:
        self.app, self.codec, self.tables, self.effects, self.letters = app, codec, tables, effects, letters
        self.clocks, self.index, self.continuity, self.reader, self.metrics = clocks, index, continuity, reader, metrics
        self.log_topic, self.reconcile_topic = log_topic, reconcile_topic
        self.sla_s, self.retention_s = sla_s, retention_s
        self.heard, self.committed = heard, committed

    async def handle(self, message: Message) -> None:
        """One record of the agent's topics: a webhook of the log, a finding of the reconciler, or a command of
        the SLA watch."""
        tp, key = message.tp, message.key
        if tp.topic == self.reconcile_topic:
            await self.on_finding(tp, message.offset, key, message.value)
            return
        if tp.topic == self.log_topic:
            partition = tp.partition
            self.heard[partition] = time.monotonic()
            continuity = self.continuity
            holes = continuity.missing(partition, message.offset,
                                       None if continuity.knows(partition) else self.committed(partition))
            if holes:
                await self.fill(tp, holes)
            await self.on_webhook(partition, message.offset, key, message.value)
            return
        await self.on_command(message)

    async def on_webhook(self, partition: int, offset: int, key: bytes | None, value: bytes) -> None:
        clocks = self.clocks
        try:
            record = self.codec.decode(value, "WebhookEvent")
        except Exception as exc:  # noqa: BLE001 - a record we cannot read must not stop the log
            log.warning("skipping an undecodable record at %s[%d] offset %d: %s", self.log_topic, partition, offset,
                        exc)
            clocks.saw(partition, None, offset)
            return
        clocks.saw(partition, record["received_at"], offset)
        if watermark.is_mark(record):
            self.mark_of(partition, offset, record)
            return
        if not key or record.get("conf_num") is None:
            return  # not a session event: kept in the log and ClickHouse, no session state
        try:
            name = key.decode()
            change = rules.on_event(self.tables.parts_of(name, partition), record, self.sla_s, now_ms=clocks.bound(partition))
            alerts = self.effects.rendered(change)
        except Exception as exc:  # noqa: BLE001 - pure (the record, its session's state): fails in any worker
            await self.letters.reject(
                TP(self.log_topic, partition), offset, key, (record.get("raw") or "").encode("utf-8", "replace"), exc,
                "It stays in the log: once the cause is fixed, `enx-streams rebuild` processes it again")
        self.letters.passed()
        self.effects.apply(name, key, partition, change, alerts)

    def mark_of(self, partition: int, offset: int, record: dict) -> None:
        """An ingest instance's watermark: the partition's clock, never a session event (watermarks.py)."""
        try:
            self.clocks.marked(partition, watermark.parse(record))  # type: ignore[arg-type]
        except ValueError as exc:
            log.warning("%s[%d] offset %d: %s; it does not move the SLA watch", self.log_topic, partition, offset, exc)

    async def fill(self, tp: TP, holes: range) -> None:
        """Process the records faust never delivered (gaps.py), then let its commit pass them."""
        log.warning("%s[%d] offsets %d..%d never reached the agent (dropped by faust around a rebalance): "
                    "reading them back", tp.topic, tp.partition, holes.start, holes.stop - 1)
        try:
            records = await self.reader.read(tp.partition, holes)
        except Exception as exc:  # noqa: BLE001 - the commit stays behind the hole: a restart re-reads it
            log.error("%s[%d] offsets %d..%d could not be read back (%r); they are processed again when this "
                      "worker restarts", tp.topic, tp.partition, holes.start, holes.stop - 1, exc)
            return
        for r in records:
            try:
                await self.on_webhook(tp.partition, r.offset, r.key, r.value)
                self.metrics.handled[tp.topic] += 1
            except Rejected:
                pass  # dead-lettered; acked with the hole below (a hole's records are not held back)
        internals.mark_acked(self.app.consumer, tp, holes)

    async def on_finding(self, tp: TP, offset: int, key: bytes | None, value: bytes) -> None:
        """A finding of the reconciler (what EnableX's Server API holds that no webhook brought), judged like a
        webhook of its missing type and kept apart from the webhooks' parts (rules.on_finding)."""
        try:
            finding = self.codec.decode(value, "ReconcileFinding")
        except Exception as exc:  # noqa: BLE001 - as for the log: a record we cannot read must not stop it
            log.warning("skipping an undecodable record at %s[%d] offset %d: %s", tp.topic, tp.partition, offset, exc)
            return
        if not key:
            return
        try:
            name = key.decode()
            change = rules.on_finding(self.tables.parts_of(name, tp.partition), finding, self.sla_s)
            alerts = self.effects.rendered(change)
        except Exception as exc:  # noqa: BLE001 - pure, as for a webhook
            await self.letters.reject(tp, offset, key, orjson.dumps(finding), exc,
                                      "It stays on the reconcile topic: once the cause is fixed, `enx-streams "
                                      "rebuild` processes it again")
        self.letters.passed()
        self.effects.apply(name, key, tp.partition, change, alerts)

    async def on_command(self, message: Message) -> None:
        """A command of the SLA watch (watch.py): ``{"op": "stall" | "expire", "now": <Unix ms>}``."""
        tp, key = message.tp, message.key
        if not key:
            return
        try:
            command = json.loads(message.value)
            op, now = command["op"], int(command["now"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("skipping a malformed command for %r: %s", key, exc)
            return
        try:
            name = key.decode()
            change = rules.on_command(self.tables.parts_of(name, tp.partition), op, now, self.sla_s, self.retention_s)
            alerts = self.effects.rendered(change)
        except Exception as exc:  # noqa: BLE001 - as for a webhook
            # the watch would send it again every RESEND_S, and it would fail the same way until the session's
            # next event: out of the index until then (or the next rebalance's reindex)
            self.index.set(key.decode("utf-8", "replace"), tp.partition, None)
            # the command topic is recreated by a rebuild: its offsets repeat, the record's time tells them apart
            await self.letters.reject(tp, message.offset, key, message.value, exc,
                                      "The SLA watch sends it again after the next rebalance, or after the "
                                      "session's next event", identity=str(message.timestamp))
        self.letters.passed()
        if change.after is None and change.before is not None:
            log.info("session %s left the tables after its retention", name)
        self.effects.apply(name, key, tp.partition, change, alerts)
