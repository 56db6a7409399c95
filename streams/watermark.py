"""Ingest's watermark records on the webhook log: "every webhook this ingest instance received before T is
in the log" (README, "SLA semantics"). Pure: the record's format, shared by its writer (ingest) and its
readers (the processor's SLA watch; the sink, which skips it).

A watermark is a ``WebhookEvent`` (the log's one schema, unchanged: every reader of the log, old versions
included, decodes it) of the reserved type ``_watermark`` (ingest refuses a posted body whose type starts
with ``_``, so no webhook can forge one), with no key, written by ingest to each partition of the log:

- ``received_at``: T, Unix ms: every webhook this instance received before T is in the log, on its
  partition before this record;
- ``source``: the ingest instance's id (kept in its spool directory, so a restart that drains a spool
  continues the same instance);
- ``raw``: ``{"type": "_watermark", "instance": ..., "watermark": T, "leaving": false}``; ``leaving`` true
  on the last one of a clean shutdown with an empty spool: the instance will write nothing more.

Why not a schema of its own, or a header: the log is kept forever and read by every version. A new record
schema (or a new field in ``WebhookEvent``, which changes its fingerprint) is unreadable to a reader from
before it (unknown fingerprint: dead-lettered by an old sink, skipped with a warning by an old processor, per
record, every second, per partition). A ``WebhookEvent`` of an unknown type is what the contract has always
told readers to keep: an old processor ignores it (no session), an old sink stores it as an event of type
``_watermark`` (harmless, filterable); today's readers skip it by its type.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

TYPE = "_watermark"
RESERVED_PREFIX = "_"  # types of the pipeline's own records on the log; never accepted from a POST


@dataclasses.dataclass(frozen=True)
class Mark:
    """One watermark read from the log: ``instance`` vouches for every webhook received before ``at_ms``."""

    instance: str
    at_ms: int
    leaving: bool = False


def is_mark(record: Mapping[str, Any]) -> bool:
    """Whether a decoded ``WebhookEvent`` is a watermark (not a webhook: no row, no session)."""
    return record.get("type") == TYPE


def record(instance: str, partition: int, at_ms: int, leaving: bool = False) -> dict[str, Any]:
    """The ``WebhookEvent`` of a watermark for ``partition`` (its id says which, so no two collide)."""
    if not instance:
        raise ValueError("a watermark needs the id of the ingest instance that writes it")
    raw = json.dumps({"type": TYPE, "instance": instance, "watermark": at_ms, "leaving": leaving},
                     separators=(",", ":"))
    event_id = hashlib.sha256(f"{TYPE}|{instance}|{partition}|{at_ms}|{leaving}".encode()).hexdigest()[:32]
    return {"event_id": event_id, "received_at": int(at_ms), "type": TYPE, "app_id": "", "room_id": None,
            "conf_num": None, "trans_date": None, "files": [], "destination": None, "raw": raw,
            "source": instance}


def parse(record: Mapping[str, Any]) -> Mark | None:
    """The watermark a decoded ``WebhookEvent`` carries, or None if it is not one.

    Raises ValueError for a ``_watermark`` record that names no instance (another producer's): it vouches
    for nothing, and the caller keeps it out of the clock."""
    if not is_mark(record):
        return None
    try:
        body = json.loads(record.get("raw") or "{}")
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    instance = body.get("instance") or record.get("source")
    if not isinstance(instance, str) or not instance:
        raise ValueError("a _watermark record without the id of its ingest instance")
    return Mark(instance=instance, at_ms=int(record["received_at"]), leaving=body.get("leaving") is True)
