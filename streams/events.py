"""Payload normalisation: the bytes EnableX posts in, a ``WebhookEvent`` or a :class:`Rejection` out. Pure.

Both documented shapes are accepted (``tests/data/seeds``, the source documents kept verbatim): file
lists as URL strings, as ``{"url": ...}`` objects or as a single URL string, under ``recording``,
``transcoded``, ``chatdata`` and ``files``; ``stage`` and ``file_size`` as strings or numbers;
``trans_date`` as Unix seconds or milliseconds (number or numeric string), as ``YYYY-MM-DD HH:MM:SS`` or
as ISO 8601, all UTC. Unknown fields stay in the raw body, an unknown ``type`` is kept with its type
string, except a type starting with ``_`` (reserved for the pipeline's own records on the log, its
watermarks: streams/watermark.py), which is rejected (``reserved_type``). A body that is not JSON (the seeds' typographic quotes included) is rejected, never repaired; so
is one that escapes a lone UTF-16 surrogate (valid JSON, but no text: it could not be stored).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from typing import Any

from streams.watermark import RESERVED_PREFIX

SESSION_TYPES = frozenset({"roomdrop", "recording", "transcoded", "file-transfer", "chatdata"})
FILE_KEYS = ("recording", "transcoded", "chatdata", "files")
# Unix seconds below this are seconds, at or above it milliseconds (1e11 s is the year 5138).
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
MS_THRESHOLD = 100_000_000_000


class Rejection(ValueError):
    """A body that cannot be an EnableX event; ``code`` is a stable reason code, ``detail`` says why."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}"


def canonical_json(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_id_of(payload: dict) -> str:
    """Derived from the canonical payload: a repeated delivery gets the same id."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:32]


def session_key(event: dict) -> str:
    """The message key: ``{app_id}/{conf_num}``."""
    return f"{event['app_id']}/{event.get('conf_num') or ''}"


def parse_trans_date(value: Any) -> int | None:
    """Unix milliseconds UTC from seconds, milliseconds, a datetime string or ISO 8601; None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise Rejection("bad_trans_date", f"trans_date must be a time, got {value!r}")
    if isinstance(value, (int, float)):
        return _from_number(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            return _from_number(int(text) if text.isdigit() and len(text) <= 20 else number)  # digits: exact
        try:
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise Rejection("bad_trans_date", f"trans_date {value!r} is neither a Unix time nor a datetime") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        try:
            # integer arithmetic: timestamp() * 1000 is a float, one millisecond early for some instants
            return (parsed - EPOCH) // dt.timedelta(milliseconds=1)
        except (OverflowError, OSError, ValueError):
            raise Rejection("bad_trans_date", f"trans_date {value!r} is out of range") from None
    raise Rejection("bad_trans_date", f"trans_date must be a number or a string, got {type(value).__name__}")


def _from_number(number: int | float) -> int:
    """Milliseconds from Unix seconds or milliseconds (told apart by size); an int is kept exact."""
    if (isinstance(number, float) and not math.isfinite(number)) or number < 0 or number >= 10**16:
        shown = number if isinstance(number, float) or number < 10**20 else f"an integer of {len(str(number))} digits"
        raise Rejection("bad_trans_date", f"trans_date {shown} is not a plausible Unix time")
    return int(number) if number >= MS_THRESHOLD else int(round(number * 1000))


def _text(payload: dict, name: str, required: bool) -> str | None:
    value = payload.get(name)
    if value is None or value == "":
        if required:
            raise Rejection("missing_field", f"the body has no {name!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Rejection("wrong_type", f"{name!r} must be a string, got {type(value).__name__}")
    return str(value)  # a numeric conf_num or room_id is kept as its decimal text


def _size(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise Rejection("wrong_type", f"'file_size' must be a number of bytes, got {value!r}")
    try:
        size = int(str(value).strip()) if not isinstance(value, float) else int(value)
    except (ValueError, OverflowError):  # not a number; or a float beyond any integer (1e400 reads as inf)
        raise Rejection("wrong_type", f"'file_size' must be a number of bytes, got {value!r}") from None
    if size < 0 or size >= 2**63:
        raise Rejection("wrong_type", f"'file_size' {value!r} is out of range")
    return size


def _urls(key: str, value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    urls = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("url")
        if not isinstance(item, str) or not item:
            raise Rejection("wrong_type", f"{key!r} must hold URL strings or {{\"url\": ...}} objects")
        urls.append(item)
    return urls


def _kind(event_type: str, key: str) -> str:
    if key == "files":
        return "transferred"
    if event_type == "transcoded":
        return "transcoded"  # the notification document puts the composite URL under "recording"
    return key


def _files(payload: dict, event_type: str) -> list[dict]:
    stage = payload.get("stage")
    if stage is not None and (isinstance(stage, bool) or not isinstance(stage, (str, int))):
        raise Rejection("wrong_type", "'stage' must be a string")
    size = _size(payload.get("file_size"))
    files = []
    for key in FILE_KEYS:
        if key not in payload or payload[key] is None:
            continue
        for url in _urls(key, payload[key]):
            files.append({"kind": _kind(event_type, key), "url": url,
                          "stage": None if stage is None or stage == "" else str(stage), "size_bytes": size})
    return files


def _destination(value: Any) -> dict | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {"name": value, "host": None, "account": None}
    if not isinstance(value, dict):
        raise Rejection("wrong_type", "'destination' must be an object")
    fields = {}
    for name in ("name", "host", "account"):
        item = value.get(name)
        if item is not None and not isinstance(item, str):
            raise Rejection("wrong_type", f"'destination.{name}' must be a string")
        fields[name] = item or None
    return {"name": fields["name"] or "", "host": fields["host"], "account": fields["account"]}


def _no_constant(name: str) -> None:
    # Python's json reads NaN, Infinity and -Infinity, which JSON (RFC 8259) does not have
    raise Rejection("not_json", f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)  # built once: json.loads(..., **kwargs) builds one a call


def parse_body(body: bytes) -> dict:
    """The JSON object in ``body``, or a Rejection (not UTF-8, not JSON, not an object)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejection("not_utf8", f"the body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        payload = _DECODER.decode(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        hint = " (typographic quotes are not JSON quotes)" if any(q in text for q in "“”‘’") else ""
        raise Rejection("not_json", f"{getattr(exc, 'msg', 'too deeply nested')}{hint}") from None
    except Rejection:
        raise
    except ValueError as exc:  # Python's own limit on the digits of an integer
        raise Rejection("not_json", f"a number in the body is too long to read ({exc})") from None
    if not isinstance(payload, dict):
        raise Rejection("not_object", f"the body is JSON but a {type(payload).__name__}, not an object")
    try:
        canonical_json(payload).encode("utf-8")
    except UnicodeEncodeError as exc:
        # JSON lets "\ud800" through, but a lone surrogate is no character: it cannot be stored as text
        raise Rejection("bad_unicode", f"the body escapes a lone UTF-16 surrogate ({exc.object[exc.start]!r}), "
                                       f"which is not a Unicode character") from None
    return payload


def check_app_id(app_id: str, allowed: frozenset[str] | None = None) -> None:
    """An app_id with '/' would make ``{app_id}/{conf_num}`` ambiguous; one outside ``allowed`` is not ours."""
    if "/" in app_id:
        raise Rejection("bad_app_id", "'app_id' must not contain '/' (the session key is {app_id}/{conf_num})")
    if allowed is not None and app_id not in allowed:
        raise Rejection("app_id_not_allowed", f"app_id {app_id!r} is not in ENX_ALLOWED_APP_IDS")


def normalise(body: bytes, received_at_ms: int, source: str | None = None,
              allowed_app_ids: frozenset[str] | None = None) -> dict:
    """A ``WebhookEvent`` record (schemas/avro/WebhookEvent.avsc) for ``body``, or raise :class:`Rejection`.

    ``allowed_app_ids`` (None: all) rejects other projects' posts with the code ``app_id_not_allowed``."""
    payload = parse_body(body)
    event_type = _text(payload, "type", required=True)
    if event_type.startswith(RESERVED_PREFIX):
        raise Rejection("reserved_type", f"type {event_type!r}: types starting with {RESERVED_PREFIX!r} are the "
                                         f"pipeline's own records on the log (its watermarks), never a webhook")
    app_id = _text(payload, "app_id", required=True)
    check_app_id(app_id, allowed_app_ids)
    conf_num = _text(payload, "conf_num", required=event_type in SESSION_TYPES)
    return {
        "event_id": event_id_of(payload),
        "received_at": int(received_at_ms),
        "type": event_type,
        "app_id": app_id,
        "room_id": _text(payload, "room_id", required=False),
        "conf_num": conf_num,
        "trans_date": parse_trans_date(payload.get("trans_date")),
        "files": _files(payload, event_type),
        "destination": _destination(payload.get("destination")),
        "raw": body.decode("utf-8"),
        "source": source,
    }
