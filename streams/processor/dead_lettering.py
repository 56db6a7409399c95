"""What becomes of an event whose judgement raised (the rules, or the encoding of its alerts: a record no
version of the rules foresaw, a value the schemas cannot hold): it is not applied, it goes to the
dead-letter topic (reason ``processor_failed: ...``, source ``topic/partition/offset``, an id derived from
those), and the agent acks it once a later event has been handled, so one bad record neither stops its
partition nor holds its commits back. A worker that sees too many of them stops instead (rejects.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from faust.types import TP

from streams import dead_letters
from streams.avro import Codec
from streams.processor.effects import StaleEvent
from streams.processor.metrics import ProcessorMetrics
from streams.processor.output import Output
from streams.processor.rejects import REASON, RejectLimit

log = logging.getLogger("streams.processor")


class Rejected(Exception):
    """The event was dead-lettered (``reject``): not applied, and acked only once a later event is handled."""


class DeadLettering:
    """Dead-letters the events whose judgement failed, onto ``topic``, counting them against ``limit``."""

    def __init__(self, output: Output, codec: Codec, topic: str, clock: Callable[[], float],
                 metrics: ProcessorMetrics, live: Callable[[], bool], limit: RejectLimit | None = None) -> None:
        self.output, self.codec, self.topic, self.clock, self.metrics = output, codec, topic, clock, metrics
        self.live = live
        self.limit = limit or RejectLimit()

    def passed(self) -> None:
        """An event was judged without failing."""
        self.limit.passed()

    async def reject(self, tp: TP, offset: int, key: bytes | None, raw: bytes, exc: Exception, then: str,
                     identity: str = "") -> None:
        """An event whose judgement raised: to the dead-letter topic (sent at once, so the commit that passes
        it waits for it, output.py) and not applied; raises :class:`Rejected` (or
        :class:`~streams.processor.rejects.TooManyRejects`). ``raw``: the body EnableX sent (a command's own
        JSON); ``then``: what becomes of it."""
        if not self.live():  # judged against tables that were no longer this worker's: not the event's fault
            raise StaleEvent(f"{tp.topic}[{tp.partition}] offset {offset}: a rebalance or a table restore began "
                             f"before its failure was dead-lettered")
        reason = f"{REASON}: {type(exc).__name__}: {exc}"[:1000].encode("utf-8", "replace").decode()
        letter = dead_letters.for_record("processor", tp.topic, tp.partition, offset, int(self.clock() * 1000), raw,
                                         key, (), reason, identity=identity)
        await self.output.send(self.topic, None, self.codec.encode("DeadLetter", letter))
        log.error("%s[%d] offset %d (key %r) could not be processed and was not applied: %s. It is on %s as %s. %s",
                  tp.topic, tp.partition, offset, key, reason, self.topic, letter["id"], then, exc_info=exc)
        self.metrics.rejected[tp.topic] += 1
        self.limit.failed()  # raises when too many have failed recently
        raise Rejected(letter["id"])
