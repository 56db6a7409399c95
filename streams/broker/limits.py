"""How large one record of the webhook log or the dead-letter topic may be, end to end.

A webhook's record holds its raw body and the parsed fields again (a ``recording`` with one long URL
carries that URL twice), so a body under ``ENX_MAX_BODY_BYTES`` can make a record of twice its size. The
budget holds at every hop: provisioning gives the webhook log and the dead-letter topic
``max.message.bytes = MAX_MESSAGE_BYTES`` (and checks existing topics have at least that), ingest's producer
sends requests of up to ``MAX_MESSAGE_BYTES``, and ingest answers ``413`` for a body whose record would not
fit, before anything is acknowledged. Consumers need no setting: a broker returns a batch larger than the
fetch size on its own (KIP-74). A dead letter holds the raw body whole (and a few headers), so
``ENX_MAX_BODY_BYTES`` may be at most :data:`MAX_BODY_BYTES`: every rejected body fits the dead-letter topic.
"""

from __future__ import annotations

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# Bound on what a single-record batch adds to key and value: the batch header (61 bytes), the record's
# varints and attributes; generous, so the estimate is never below what the broker counts.
RECORD_OVERHEAD_BYTES = 1024
# Room a dead letter needs besides its raw body: id, reason, the kept headers, the source.
LETTER_ROOM_BYTES = 64 * 1024
MAX_BODY_BYTES = MAX_MESSAGE_BYTES - LETTER_ROOM_BYTES - RECORD_OVERHEAD_BYTES


def record_bytes(key: bytes | None, value: bytes) -> int:
    """An upper bound of the size the broker counts for a batch holding only this record."""
    return len(key or b"") + len(value) + RECORD_OVERHEAD_BYTES


def fits(key: bytes | None, value: bytes) -> bool:
    """Whether this record, alone in its batch, is within the topic's ``max.message.bytes``."""
    return record_bytes(key, value) <= MAX_MESSAGE_BYTES


def body_limit_problem(max_body_bytes: int) -> str | None:
    """Why ``ENX_MAX_BODY_BYTES`` cannot be used (None when it can)."""
    if max_body_bytes > MAX_BODY_BYTES:
        return (f"ENX_MAX_BODY_BYTES={max_body_bytes} is over {MAX_BODY_BYTES}: a rejected body that large would "
                f"not fit the dead-letter topic (max.message.bytes {MAX_MESSAGE_BYTES}); set it to at most "
                f"{MAX_BODY_BYTES}")
    return None
