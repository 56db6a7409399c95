"""Ingest's watermarks: about every second while it delivers directly, a record on every partition of the
webhook log saying "every webhook this instance received before T is in the log" (the format:
streams/watermark.py). The processor's SLA watch takes its "now" from them (streams/processor/watermarks.py),
so it never runs ahead of what ingest has durably written.

T is the wall clock, held back to the receive time of the oldest webhook still being made durable (sent
and not yet acknowledged, or being spooled): none received before T can still be on its way. None is
written while ingest is not delivering directly (Kafka away, or anything waiting in the spool): the spool's
records are in no partition yet, so no T may pass them; the first watermark after an outage follows the
spool's last record. On a clean shutdown with an empty spool, a last watermark says ``leaving``: this
instance will vouch for nothing more, so the watch stops waiting for it.

The instance id is kept in the spool directory (``instance-id``): a restarted ingest that drains a spool is
the same instance, and its watermarks continue where they stopped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from streams import watermark
from streams.avro import default_codec
from streams.ingest.producer import DurableProducer

log = logging.getLogger("streams.ingest")
INTERVAL_S = 1.0
ID_FILE = "instance-id"


def instance_id(spool_dir: Path) -> str:
    """This ingest instance's id: read from the spool directory, or made and fsynced there on first start."""
    path = Path(spool_dir) / ID_FILE
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    made = f"ingest-{uuid.uuid4().hex[:16]}"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(made + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return made


class InFlight:
    """The receive times of the webhooks being made durable right now (a multiset)."""

    def __init__(self) -> None:
        self._times: Counter[int] = Counter()

    def open(self, received_at_ms: int) -> int:
        self._times[received_at_ms] += 1
        return received_at_ms

    def close(self, received_at_ms: int) -> None:
        self._times[received_at_ms] -= 1
        if self._times[received_at_ms] <= 0:
            del self._times[received_at_ms]

    def oldest(self) -> int | None:
        return min(self._times) if self._times else None


def safe_at(now_ms: int, oldest_in_flight: int | None, last: int | None) -> int:
    """The T a watermark may say now: the wall clock, but not past a webhook still on its way (the oldest
    one's receive time), and never back behind the last one written (a clock stepped back)."""
    at = now_ms if oldest_in_flight is None else min(now_ms, oldest_in_flight)
    return at if last is None else max(at, last)


class WatermarkWriter:
    def __init__(self, producer: DurableProducer, topic: str, instance: str, in_flight: InFlight,
                 clock: Callable[[], float] = time.time, interval_s: float = INTERVAL_S,
                 on_written: Callable[[int], None] | None = None) -> None:
        self.producer = producer
        self.topic = topic
        self.instance = instance
        self.in_flight = in_flight
        self.clock = clock
        self.interval_s = interval_s
        self.on_written = on_written
        self.last: int | None = None
        self._codec = default_codec()

    async def write(self, leaving: bool = False) -> bool:
        """One watermark on every partition, if ingest delivers directly now; True once all are acknowledged."""
        if not self.producer.direct():
            return False  # spooling (or about to): T may not pass what waits in the spool
        # decided with no await since the check: every webhook received before ``at`` is acknowledged, or in
        # the spool (then not direct), or still in flight (then ``at`` is at most its receive time)
        at = safe_at(int(self.clock() * 1000), self.in_flight.oldest(), self.last)
        ok = await self.producer.send_to_every_partition(
            self.topic, lambda p: self._codec.encode("WebhookEvent", watermark.record(self.instance, p, at, leaving)))
        if ok:
            self.last = at
            if self.on_written is not None:
                self.on_written(at)
        return ok

    async def run(self) -> None:
        """Write a watermark every ``interval_s`` until cancelled."""
        while True:
            try:
                await self.write()
            except Exception:  # noqa: BLE001 - a watermark is best effort: the next one carries on
                log.exception("writing a watermark failed; the next one tries again")
            await asyncio.sleep(self.interval_s)

    async def leave(self) -> None:
        """On a clean shutdown: a last watermark saying ``leaving``, only if nothing waits in the spool (else
        the instance still owes the log its spool, and the watch keeps waiting for it: README, SLA semantics)."""
        if await self.write(leaving=True):
            log.info("ingest instance %s left: its last watermark is written", self.instance)
        else:
            log.info("ingest instance %s stops without a leaving watermark (records wait in its spool, or Kafka "
                     "is away); the SLA watch waits for it up to its lease", self.instance)
