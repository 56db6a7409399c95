"""The SLA watch's timer on every worker: every ``SWEEP_INTERVAL_S`` it decides stalls and expiries for the
sessions of its own active partitions (watch.py ``sweep``) and sends them as commands through the command
topic, which reach the owning agent (same partition count, same keys), which re-judges and applies them.

After a rebalance it first reads back the ingest instances' latest watermarks of the partitions taken over
and rebuilds its due index from the restored tables. It also puts back on the consumer a partition that
delivers nothing while records wait (``check_progress``: a remedy for faust-streaming 0.15.3, which can
leave a partition taken over in a rebalance unfetched for good; the worker-kill fault test found it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import faust
from faust.types import TP

from streams import internals, watermark
from streams.avro import Codec
from streams.processor import rules
from streams.processor.gaps import LogReader
from streams.processor.handlers import RecordHandler
from streams.processor.metrics import ProcessorMetrics
from streams.processor.reach import BrokerProbe
from streams.processor.rebalance import Rebalances
from streams.processor.state import SessionTables
from streams.processor.watch import DueIndex, PartitionClock, Resend, next_due, sweep

log = logging.getLogger("streams.processor")

SWEEP_INTERVAL_S = 2.0
STALL_WARN_S = 10.0  # a partition with records waiting that delivered nothing for this long is put back on
REINDEX_CHUNK = 1000  # sessions indexed between two yields to the event loop after a rebalance
# Records read back before a partition's committed offset after a rebalance, for the ingest instances' latest
# watermarks (about one per instance and second): what a worker taking the partition over knew nothing of.
MARKS_TAIL = 5000


def consumer_state(app: faust.App) -> str:
    """What faust's consumer says about its flow, for a warning (private attributes, read defensively)."""
    consumer = app.consumer

    def named(value: Any) -> Any:
        return sorted(f"{tp.topic.rsplit('.', 1)[-1]}:{tp.partition}" for tp in value) if isinstance(value, set) \
            else value

    sets = {"flow_active": getattr(consumer, "flow_active", "?"), **internals.flow_sets(consumer)}
    parts = [f"{name}={named(value)}" for name, value in sets.items()]
    parts.append(f"flow_control={'active' if app.flow_control.is_active() else 'suspended'}")
    try:
        paused = internals.aiokafka_paused(consumer)
        parts.append(f"aiokafka_paused={'?' if paused is None else named(paused)}")
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        parts.append(f"aiokafka=<{exc!r}>")
    return ", ".join(parts)


class SlaWatchLoop:
    """One sweep per call of :meth:`tick`; ``send(key, value)`` sends a command to the command topic."""

    def __init__(self, *, app: faust.App, codec: Codec, tables: SessionTables, rebalances: Rebalances,
                 handler: RecordHandler, clocks: PartitionClock, index: DueIndex, probe: BrokerProbe,
                 resend: Resend, reader: LogReader, metrics: ProcessorMetrics, send: Callable[..., Any],
                 log_topic: str, partitions: int, sla_s: int, retention_s: int, heard: dict[int, float]) -> None:
        self.app, self.codec, self.tables, self.rebalances, self.handler = app, codec, tables, rebalances, handler
        self.clocks, self.index, self.probe, self.resend, self.reader = clocks, index, probe, resend, reader
        self.metrics, self.send, self.log_topic, self.partitions = metrics, send, log_topic, partitions
        self.sla_s, self.retention_s, self.heard = sla_s, retention_s, heard

    async def tick(self) -> None:
        rebalances = self.rebalances
        if rebalances.settling():
            return  # a rebalance is not done yet (the tables restored, the partitions sought); the agent waits too
        assigned = rebalances.assigned()
        if not assigned:
            return
        started = time.monotonic()
        await self.check_progress(assigned)
        self.clocks.tick(await self.probe.answers())  # the lease of a silent ingest instance runs only while it answers
        if rebalances.reindex_needed and not await self.rebuild_index(assigned):
            return
        self.resend.prune()
        parts_of, sla_s = self.tables.parts_of, self.sla_s
        for name, op, now in sweep(self.index, lambda n: rules.combine(parts_of(n), sla_s), assigned, self.clocks,
                                   self.retention_s, rebalances.highwater, rebalances.committed):
            if self.resend.due(name, op):
                await self.send(key=name.encode(), value=json.dumps({"op": op, "now": now}).encode())
        self.metrics.sweep_seconds.observe(time.monotonic() - started)

    async def recall_marks(self, assigned: set[int]) -> None:
        """The ingest instances' latest watermarks of the partitions taken over (watermarks.py), read back from
        just before the group's committed offset: without them a worker caught up with a partition would judge
        by the wall clock while an ingest instance spools. Read by the watch before it judges anything."""
        clocks, log_topic = self.clocks, self.log_topic
        for p in sorted(assigned):
            end = self.rebalances.committed(p)
            if clocks.knows_marks(p) or not end:
                continue
            try:
                records = await self.reader.read(p, range(max(0, end - MARKS_TAIL), end), timeout_s=10.0)
            except Exception as exc:  # noqa: BLE001 - the partition is judged without them (its next watermark)
                log.warning("%s[%d]: the watermarks before offset %d could not be read back (%r); until the next "
                            "one the SLA watch judges the partition by its own clock", log_topic, p, end, exc)
                continue
            recalled = 0
            for r in records:
                try:
                    record = self.codec.decode(r.value)
                except Exception:  # noqa: BLE001 - the agent dead-letters nothing here: it has processed it
                    continue
                if watermark.is_mark(record):
                    self.handler.mark_of(p, r.offset, record)
                    recalled += 1
            if recalled:
                log.info("SLA watch: %d watermarks of %s[%d] read back before offset %d; bound %s", recalled,
                         log_topic, p, end, clocks.bound(p))

    async def rebuild_index(self, assigned: set[int]) -> bool:
        """Index every session of the assigned partitions from the tables, read from RocksDB in key order
        (state.PartStore.scan); False if a rebalance came."""
        rebalances = self.rebalances
        generation = rebalances.reindex_generation
        rebalances.reindex_needed = False
        store, index = self.tables.store, self.index
        if store.touched is None:
            store.touched = set()
        await self.recall_marks(assigned)
        started, scanned = time.monotonic(), 0
        for partition in sorted(assigned):
            for name, parts in store.scan(partition):
                index.set(name, partition, next_due(rules.combine(parts, self.sla_s), self.retention_s))
                scanned += 1
                if scanned % REINDEX_CHUNK == 0:
                    await asyncio.sleep(0)  # let the agent and the heartbeats run
                    if rebalances.reindex_generation != generation:
                        return False
        store.touched = None
        log.info("SLA watch: %d sessions indexed on partitions %s (%d read from the tables in %.1f s)", len(index),
                 sorted(assigned), scanned, time.monotonic() - started)
        return True

    async def check_progress(self, assigned: set[int]) -> None:
        """A partition with records waiting that has delivered nothing for STALL_WARN_S: say so with faust's
        consumer state, and put the consumer back on it (resume it and seek to where this worker stands:
        what it processed, else the group's committed offset, else the start). Re-reading is harmless:
        merging is idempotent. faust-streaming 0.15.3 can leave a partition taken over in a rebalance
        unfetched for good (the worker-kill fault test found it); this is the remedy."""
        now = time.monotonic()
        heard, log_topic, consumer = self.heard, self.log_topic, self.app.consumer
        for p in sorted(assigned):
            last = heard.setdefault(p, now)  # a partition just assigned gets its grace period
            if now - last < STALL_WARN_S:
                continue
            end, position = self.rebalances.highwater(p), self.clocks.position(p)
            position = position if position is not None else (self.rebalances.committed(p) or 0)
            if end is not None and end <= position:
                continue
            heard[p] = now
            waiting = "end unknown: never fetched" if end is None else f"{end - position} records"
            log.warning("%s[%d]: nothing received for %.0f s while %s wait; seeking it to %d (%s)", log_topic, p,
                        now - last, waiting, position, consumer_state(self.app))
            tp = TP(log_topic, p)
            consumer.resume_partitions({tp})
            try:
                await consumer.seek(tp, position)
            except Exception as exc:  # noqa: BLE001 - tried again after the next grace period
                log.warning("seeking %s[%d] failed: %r", log_topic, p, exc)
