"""What a judged transition does: its alerts and snapshot published, its parts written to the tables, the
session's next due time in the SLA watch's index; all in one step of the event loop.

Every change is published as a versioned ``SessionState`` snapshot on the compacted sessions topic (a
tombstone when the session leaves the tables after its retention), the latest per session at each commit
(output.py), and every alert of the transition on the alerts topic, with its deterministic ``alert_id``;
both on the event's partition (the same keys and partition count as the log: the default partitioner's
choice). The table changes are held for the same flush, sent after them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from streams.avro import Codec
from streams.processor import rules
from streams.processor.metrics import ProcessorMetrics
from streams.processor.output import Output
from streams.processor.state import SessionTables
from streams.processor.watch import DueIndex, next_due

log = logging.getLogger("streams.processor")


class StaleEvent(Exception):
    """The event being handled stopped being this worker's to apply (a rebalance or a restore began)."""


class Effects:
    """Applies transitions: ``live()`` says whether the event being handled is still this worker's."""

    def __init__(self, output: Output, tables: SessionTables, index: DueIndex, codec: Codec,
                 metrics: ProcessorMetrics, sessions_topic: str, alerts_topic: str, retention_s: int,
                 live: Callable[[], bool]) -> None:
        self.output, self.tables, self.index, self.codec, self.metrics = output, tables, index, codec, metrics
        self.sessions_topic, self.alerts_topic = sessions_topic, alerts_topic
        self.retention_s = retention_s
        self.live = live

    def encode_state(self, state: dict) -> bytes:
        return self.codec.encode("SessionState", state)

    def rendered(self, change: rules.Transition) -> list[bytes]:
        """The alerts of ``change``, encoded: a value the schema cannot hold raises here, before anything is
        applied. (Its snapshot is encoded at the flush, once per session however often it changed; the rules
        refuse the one value they could compute that it cannot hold, rules.derive.)"""
        return [self.codec.encode("SlaAlert", a) for a in change.alerts] if change.alerts else []

    def apply(self, name: str, key: bytes, partition: int, change: rules.Transition, alerts: list[bytes]) -> None:
        """``change`` (with its ``rendered`` alerts) published, written and indexed. It was judged just now,
        with no await since (the callers compute it just before the call): against restored tables if this is
        still live. Not so after an await, e.g. a hole's records read back. Nothing here awaits: the change is
        published and written in one step of the event loop, which no rebalance or restore can enter."""
        if not self.live():
            raise StaleEvent(f"{name}: a rebalance or a table restore began before its event was judged")
        self.publish(key, partition, change, alerts)
        hold = self.output.hold
        for topic, part, k, value in self.tables.write(name, partition, change):
            hold(topic, part, k, value)
        self.index.set(name, partition, next_due(change.after, self.retention_s))

    def publish(self, key: bytes, partition: int, change: rules.Transition, alerts: list[bytes]) -> None:
        """The alerts and the snapshot of ``change``, on the event's partition, sent by the next flush."""
        output = self.output
        for alert in alerts:
            output.publish(self.alerts_topic, partition, key, alert)
        if change.changed:
            after = change.after
            output.publish_latest(self.sessions_topic, partition, key, after, None if after is None else self.encode_state)
        for alert in change.alerts:
            self.metrics.alerts[alert["kind"]] += 1
            log.info("alert %s for %s (deadline %s)", alert["kind"], key.decode(), alert["deadline"])
