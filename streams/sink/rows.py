"""Decoded Avro records -> ClickHouse rows (pure functions, no I/O).

Each table's columns are listed once in :data:`COLUMNS`; a row is a dict with exactly those keys, and
:func:`as_lists` orders rows for an insert. Avro carries times as Unix milliseconds; ClickHouse gets
timezone-aware UTC datetimes.

A row must never make an insert fail for good (that would stop the sink at that record), so values the
column types cannot hold are made safe here: a time outside ``DateTime64``'s range becomes NULL (or the
nearest bound for a NOT NULL column), a negative size NULL, a count is clamped into ``UInt32``. The raw
body keeps what was actually sent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from streams import watermark

Row = dict[str, Any]

COLUMNS: dict[str, tuple[str, ...]] = {
    "webhook_events": ("event_id", "received_at", "type", "app_id", "room_id", "conf_num", "trans_date",
                       "file_count", "total_bytes", "destination", "raw"),
    "session_files": ("event_id", "received_at", "type", "app_id", "conf_num", "kind", "url", "stage",
                      "size_bytes", "destination", "trans_date", "source"),
    "sessions": ("app_id", "conf_num", "room_id", "version", "ended_at", "recording_at", "transcoded_at",
                 "delivered_at", "chat_at", "recording_files", "transcoded_files", "delivered_files",
                 "chat_files", "recording_latency_s", "transcode_latency_s", "delivery_latency_s",
                 "chat_latency_s", "sla_deadline", "sla_state", "stalled_at", "last_event_at", "reconciled"),
    "sla_alerts": ("alert_id", "kind", "app_id", "conf_num", "room_id", "deadline", "detected_at", "overdue_s",
                   "cause"),
    "dead_letters": ("id", "received_at", "reason", "reason_code", "raw", "source", "headers"),
    "reconcile_findings": ("finding_id", "kind", "app_id", "conf_num", "room_id", "missing_type", "source",
                           "trans_date", "urls", "archive_id", "found_at"),
}

# Which Avro record each contract topic carries (by the short name Settings.topic() takes).
RECORD_OF_TOPIC: dict[str, str] = {
    "webhooks": "WebhookEvent",
    "deadletter": "DeadLetter",
    "sessions": "SessionState",
    "alerts": "SlaAlert",
    "reconcile": "ReconcileFinding",
}

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# DateTime64(3)'s range is [1900-01-01, 2299-12-31 23:59:59.999].
MIN_MS = int((dt.datetime(1900, 1, 1, tzinfo=dt.timezone.utc) - EPOCH).total_seconds() * 1000)
MAX_MS = int((dt.datetime(2300, 1, 1, tzinfo=dt.timezone.utc) - EPOCH).total_seconds() * 1000) - 1
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1


class UnprojectableRecord(ValueError):
    """A decoded record that cannot become rows (wrong record type for its topic, a missing field)."""


# -- values ---------------------------------------------------------------------------------------------

def datetime_or_none(ms: int | None) -> dt.datetime | None:
    """Unix milliseconds -> aware UTC datetime (exact to the millisecond); None when absent or out of range."""
    if ms is None or not (MIN_MS <= ms <= MAX_MS):
        return None
    return EPOCH + dt.timedelta(milliseconds=int(ms))


def datetime_required(ms: int | None) -> dt.datetime:
    """Like :func:`datetime_or_none` for a NOT NULL column: clamped into range, the epoch when absent."""
    return EPOCH + dt.timedelta(milliseconds=min(MAX_MS, max(MIN_MS, int(ms or 0))))


def size_or_none(size: int | None) -> int | None:
    return size if size is not None and 0 <= size <= UINT64_MAX else None


def count32(value: int | None) -> int:
    return min(UINT32_MAX, max(0, int(value or 0)))


def reason_code(reason: str) -> str:
    """The part of a dead letter's reason before the first ':' (``not_json: ...`` -> ``not_json``)."""
    code = reason.split(":", 1)[0].strip()
    return code or "unknown"


def _destination_name(destination: Mapping[str, Any] | None) -> str:
    return str(destination.get("name") or "") if destination else ""


# -- records -> rows ------------------------------------------------------------------------------------

def webhook_event_rows(event: Mapping[str, Any]) -> tuple[Row, list[Row]]:
    """A decoded ``WebhookEvent`` -> its ``webhook_events`` row and one ``session_files`` row per file URL."""
    try:
        files = list(event.get("files") or [])
        received_at = datetime_required(event["received_at"])
        trans_date = datetime_or_none(event.get("trans_date"))
        destination = _destination_name(event.get("destination"))
        conf_num = event.get("conf_num") or ""
        base = {"event_id": event["event_id"], "type": event["type"], "app_id": event["app_id"]}
        raw = event.get("raw") or ""
    except (KeyError, TypeError, AttributeError) as exc:
        raise UnprojectableRecord(f"WebhookEvent without a usable {exc}") from exc
    sizes = [size_or_none(f.get("size_bytes")) for f in files]
    event_row: Row = {
        **base,
        "received_at": received_at,
        "room_id": event.get("room_id"),
        "conf_num": conf_num,
        "trans_date": trans_date,
        "file_count": count32(len(files)),
        "total_bytes": min(UINT64_MAX, sum(s for s in sizes if s is not None)),
        "destination": destination,
        "raw": raw,
    }
    file_rows = [{
        **base,
        "received_at": received_at,
        "conf_num": conf_num,
        "kind": str(f.get("kind") or ""),
        "url": str(f.get("url") or ""),
        "stage": f.get("stage"),
        "size_bytes": size,
        "destination": destination,
        "trans_date": trans_date,
        "source": "webhook",
    } for f, size in zip(files, sizes)]
    return event_row, file_rows


def session_row(state: Mapping[str, Any]) -> Row:
    """A decoded ``SessionState`` -> its ``sessions`` row (the highest ``version`` wins under FINAL)."""
    try:
        return {
            "app_id": state["app_id"],
            "conf_num": state["conf_num"],
            "room_id": state.get("room_id"),
            "version": min(UINT64_MAX, max(0, int(state["version"]))),
            "ended_at": datetime_or_none(state.get("ended_at")),
            "recording_at": datetime_or_none(state.get("recording_at")),
            "transcoded_at": datetime_or_none(state.get("transcoded_at")),
            "delivered_at": datetime_or_none(state.get("delivered_at")),
            "chat_at": datetime_or_none(state.get("chat_at")),
            "recording_files": count32(state.get("recording_files")),
            "transcoded_files": count32(state.get("transcoded_files")),
            "delivered_files": count32(state.get("delivered_files")),
            "chat_files": count32(state.get("chat_files")),
            "recording_latency_s": state.get("recording_latency_s"),
            "transcode_latency_s": state.get("transcode_latency_s"),
            "delivery_latency_s": state.get("delivery_latency_s"),
            "chat_latency_s": state.get("chat_latency_s"),
            "sla_deadline": datetime_or_none(state.get("sla_deadline")),
            "sla_state": state["sla_state"],
            "stalled_at": datetime_or_none(state.get("stalled_at")),
            "last_event_at": datetime_required(state["last_event_at"]),
            "reconciled": [str(t) for t in state.get("reconciled") or ()],
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise UnprojectableRecord(f"SessionState without a usable {exc}") from exc


def alert_row(alert: Mapping[str, Any]) -> Row:
    """A decoded ``SlaAlert`` -> its ``sla_alerts`` row (``alert_id`` is deterministic: duplicates collapse)."""
    try:
        return {
            "alert_id": alert["alert_id"],
            "kind": alert["kind"],
            "app_id": alert["app_id"],
            "conf_num": alert["conf_num"],
            "room_id": alert.get("room_id"),
            "deadline": datetime_required(alert["deadline"]),
            "detected_at": datetime_required(alert["detected_at"]),
            "overdue_s": alert.get("overdue_s"),
            "cause": alert.get("cause"),
        }
    except (KeyError, TypeError) as exc:
        raise UnprojectableRecord(f"SlaAlert without a usable {exc}") from exc


def dead_letter_row(letter: Mapping[str, Any]) -> Row:
    """A decoded ``DeadLetter`` -> its ``dead_letters`` row (raw kept as bytes, exactly as received)."""
    try:
        raw = letter.get("raw") or b""
        reason = str(letter["reason"])
        return {
            "id": letter["id"],
            "received_at": datetime_required(letter["received_at"]),
            "reason": reason,
            "reason_code": reason_code(reason),
            "raw": raw.encode() if isinstance(raw, str) else bytes(raw),
            "source": letter.get("source"),
            "headers": {str(k): str(v) for k, v in (letter.get("headers") or {}).items()},
        }
    except (KeyError, TypeError) as exc:
        raise UnprojectableRecord(f"DeadLetter without a usable {exc}") from exc


def finding_rows(finding: Mapping[str, Any]) -> tuple[Row, list[Row]]:
    """A decoded ``ReconcileFinding`` -> its ``reconcile_findings`` row and one ``session_files`` row per URL,
    marked ``source='reconcile'`` (event_id the finding_id, kind the missing type, type the missing webhook's)."""
    try:
        found_at = datetime_required(finding["found_at"])
        trans_date = datetime_or_none(finding.get("trans_date"))
        urls = [str(u) for u in (finding.get("urls") or []) if u]
        row: Row = {
            "finding_id": finding["finding_id"],
            "kind": finding["kind"],
            "app_id": finding["app_id"],
            "conf_num": finding["conf_num"],
            "room_id": finding.get("room_id"),
            "missing_type": finding["missing_type"],
            "source": finding["source"],
            "trans_date": trans_date,
            "urls": urls,
            "archive_id": finding.get("archive_id"),
            "found_at": found_at,
        }
    except (KeyError, TypeError) as exc:
        raise UnprojectableRecord(f"ReconcileFinding without a usable {exc}") from exc
    kind = row["missing_type"]
    files = [] if kind not in ("recording", "transcoded", "chatdata") else [{
        "event_id": row["finding_id"], "received_at": found_at, "type": kind, "app_id": row["app_id"],
        "conf_num": row["conf_num"], "kind": kind, "url": url, "stage": None, "size_bytes": None,
        "destination": "", "trans_date": trans_date, "source": "reconcile",
    } for url in urls]
    return row, files


def project(topic_kind: str, record_name: str, record: Mapping[str, Any]) -> dict[str, list[Row]]:
    """The rows of one decoded record from a contract topic (``webhooks``, ``deadletter``, ``sessions``,
    ``alerts``, ``reconcile``), by table. Raises :class:`UnprojectableRecord` for a record of the wrong type."""
    expected = RECORD_OF_TOPIC.get(topic_kind)
    if expected is None:
        raise UnprojectableRecord(f"topic kind {topic_kind!r} is not one of {sorted(RECORD_OF_TOPIC)}")
    if record_name != expected:
        raise UnprojectableRecord(f"a {record_name} record on the {topic_kind} topic, which carries {expected}")
    if topic_kind == "webhooks":
        if watermark.is_mark(record):
            return {}  # ingest's watermark (streams/watermark.py): the log's clock, not a webhook
        event_row, file_rows = webhook_event_rows(record)
        return {"webhook_events": [event_row], "session_files": file_rows} if file_rows \
            else {"webhook_events": [event_row]}
    if topic_kind == "sessions":
        return {"sessions": [session_row(record)]}
    if topic_kind == "alerts":
        return {"sla_alerts": [alert_row(record)]}
    if topic_kind == "reconcile":
        finding, file_rows = finding_rows(record)
        return {"reconcile_findings": [finding], "session_files": file_rows} if file_rows \
            else {"reconcile_findings": [finding]}
    return {"dead_letters": [dead_letter_row(record)]}


def as_lists(table: str, rows: Iterable[Row]) -> list[list[Any]]:
    """Rows ordered as ``COLUMNS[table]``, ready for ``client.insert(..., column_names=COLUMNS[table])``."""
    columns = COLUMNS[table]
    return [[row[c] for c in columns] for row in rows]
