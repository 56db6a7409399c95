"""``DeadLetter`` records for Kafka records a consumer could not use (pure).

Ingest dead-letters the HTTP bodies it rejects (streams/ingest). Downstream, a consumer that cannot use a
record of a topic it reads keeps going and says so with a dead letter naming the record's coordinates:
the sink for a record it cannot decode or project, the processor for an event whose handling fails. The
record itself stays where it is (the webhook log is kept forever), so a fixed version re-processes it
(``enx-streams rebuild``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

LONG_MAX = 2**63 - 1  # Avro's long


def for_record(by: str, topic: str, partition: int, offset: int, timestamp_ms: int, raw: bytes | None,
               key: bytes | None, headers: Iterable[tuple[str, bytes]], reason: str,
               identity: str = "") -> dict[str, Any]:
    """A ``DeadLetter`` (Avro-shaped) for the record at ``topic/partition/offset`` that consumer ``by``
    (``sink``, ``processor``) could not use.

    The id is deterministic from the consumer and the record's coordinates (and ``identity``, for a topic
    whose offsets can repeat because it is recreated), so a redelivery or a replay of the log gives the
    same id, which collapses under FINAL, while the sink's and the processor's letters for one record stay
    two. ``received_at`` is ``timestamp_ms``: the record's Kafka time (the sink), when it failed (the
    processor: a replay that fails again dates the letter anew). ``raw`` is what the letter keeps of the
    record: its value exactly as read (the sink, which could not decode it), the body EnableX sent (the
    processor). The record's headers and key are kept as headers.
    """
    source = f"{topic}/{partition}/{offset}"
    identified = f"{source}|{identity}" if identity else source
    kept = {str(k): (v or b"").decode("utf-8", "replace") for k, v in headers}
    if key is not None:
        kept["kafka_key"] = key.decode("utf-8", "replace")
    return {
        "id": f"{by}-" + hashlib.sha256(identified.encode()).hexdigest()[:32],
        "received_at": min(max(0, int(timestamp_ms)), LONG_MAX),
        "reason": reason,
        "raw": raw or b"",
        "headers": kept,
        "source": source,
    }
