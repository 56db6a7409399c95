"""Which dead letters a command is about: origin, filters (pure; the clock is passed in)."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Ingest's letter ids are uuid4().hex; the processor's and the sink's are "<by>-<sha256 prefix>".
_INGEST_ID = re.compile(r"[0-9a-f]{32}")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
ORIGINS = ("ingest", "processor", "sink")


class FilterError(ValueError):
    """A filter value that cannot be read; the message says what is accepted."""


def origin(letter: Mapping[str, Any]) -> str:
    """``ingest`` (a body ingest rejected), else the consumer that wrote it (``processor``, ``sink``, ...)."""
    letter_id = str(letter.get("id", ""))
    if _INGEST_ID.fullmatch(letter_id):
        return "ingest"
    return letter_id.split("-", 1)[0] if "-" in letter_id else "unknown"


def reason_code(reason: str) -> str:
    """The part of ``reason`` before the first ':' (as the ``dead_letters.reason_code`` column)."""
    return reason.split(":", 1)[0].strip()


def app_id_of(letter: Mapping[str, Any]) -> str | None:
    """The ``app_id`` the letter's body names, if the body is a JSON object with a string ``app_id``."""
    raw = letter.get("raw") or b""
    try:
        payload = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    app_id = payload.get("app_id") if isinstance(payload, dict) else None
    return app_id if isinstance(app_id, str) else None


def parse_since(value: str, now_ms: int) -> int:
    """``--since``: a duration back from now (``30m``, ``6h``, ``7d``, ``2w``) or an ISO date or datetime
    (UTC unless it says otherwise) -> Unix milliseconds."""
    text = value.strip()
    m = _DURATION.fullmatch(text)
    if m:
        return now_ms - int(float(m.group(1)) * _UNIT_S[m.group(2)] * 1000)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(f"--since {value!r}: give a duration (30m, 6h, 7d, 2w) or an ISO date or datetime "
                          f"(2026-12-01, 2026-12-01T08:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


@dataclass(frozen=True)
class Filter:
    """What ``--reason``, ``--since`` and ``--app-id`` select (None: anything)."""

    reason: str | None = None      # the reason starts with it: a code (app_id_not_allowed) or more
    since_ms: int | None = None    # received at or after
    app_id: str | None = None      # the body's app_id
    origin: str | None = None      # ingest, processor, sink

    def matches(self, letter: Mapping[str, Any]) -> bool:
        if self.origin is not None and origin(letter) != self.origin:
            return False
        if self.since_ms is not None and int(letter.get("received_at", 0)) < self.since_ms:
            return False
        if self.reason is not None and not str(letter.get("reason", "")).startswith(self.reason):
            return False
        if self.app_id is not None and app_id_of(letter) != self.app_id:
            return False
        return True


def make_filter(reason: str | None, since: str | None, app_id: str | None, now_ms: int,
                origin: str | None = None) -> Filter:
    """The filter of the command-line options (raises :class:`FilterError` for an unreadable ``--since`` or
    an unknown ``--origin``)."""
    if origin is not None and origin not in ORIGINS:
        raise FilterError(f"--origin {origin!r}: give one of {', '.join(ORIGINS)}")
    return Filter(reason=reason or None, since_ms=parse_since(since, now_ms) if since else None,
                  app_id=app_id or None, origin=origin)
