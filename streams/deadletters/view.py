"""What ``deadletters list`` and ``show`` print (pure)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any

from streams.deadletters.select import app_id_of, origin

REASON_WIDTH = 70
# C0 and C1 controls and DEL: a body is whatever was posted, and an escape sequence printed raw would act on
# the operator's terminal
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def printable(text: str, keep_newlines: bool = False) -> str:
    """``text`` with each control character shown as its escape (``\\x1b``, ``\\n``), safe for a terminal."""
    pattern = _CONTROL_BUT_NEWLINE if keep_newlines else _CONTROL
    return pattern.sub(lambda m: repr(m.group())[1:-1], text)


def iso(ms: int | None) -> str:
    if ms is None:
        return ""
    try:
        when = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    except (OverflowError, OSError, ValueError):  # a consumer's letter dated by a record's odd timestamp
        return str(ms)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def redriven_text(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return ""
    return f"{entry.get('outcome', 'redriven')} {iso(entry.get('redriven_at'))}"


def list_line(letter: Mapping[str, Any], entry: Mapping[str, Any] | None) -> str:
    reason = printable(str(letter.get("reason", "")))
    if len(reason) > REASON_WIDTH:
        reason = reason[:REASON_WIDTH - 1] + "…"
    cells = [iso(letter.get("received_at")), printable(str(letter["id"])), origin(letter),
             printable(app_id_of(letter) or "-"), reason]
    redriven = redriven_text(entry)
    return "  ".join(cells) + (f"  [{redriven}]" if redriven else "")


def as_json(letter: Mapping[str, Any], entry: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON-safe dict: ``raw`` as text when it is UTF-8, else ``raw_base64``."""
    raw = letter.get("raw") or b""
    out: dict[str, Any] = {"id": letter["id"], "received_at": iso(letter.get("received_at")),
                           "origin": origin(letter), "app_id": app_id_of(letter), "reason": letter.get("reason"),
                           "source": letter.get("source"), "headers": dict(letter.get("headers") or {}),
                           "at": letter.get("_at"), "redrive": dict(entry) if entry else None}
    try:
        out["raw"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        out["raw_base64"] = base64.b64encode(raw).decode("ascii")
    return out


def show_text(letter: Mapping[str, Any], entry: Mapping[str, Any] | None) -> str:
    raw = letter.get("raw") or b""
    try:
        text = raw.decode("utf-8")
        try:
            body = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            body = text
    except UnicodeDecodeError:
        body = f"(not UTF-8, {len(raw)} bytes) {raw[:2000]!r}"
    lines = [f"id:          {printable(str(letter['id']))}",
             f"received_at: {iso(letter.get('received_at'))}",
             f"origin:      {origin(letter)}",
             f"source:      {printable(str(letter.get('source') or ''))}",
             f"reason:      {printable(str(letter.get('reason', '')))}",
             f"stored at:   {letter.get('_at') or ''}"]
    if entry:
        lines.append(f"redrive:     {redriven_text(entry)}, event {entry.get('event_id')}"
                     + (f" at {entry['appended_to']}" if entry.get("appended_to") else ""))
    headers = letter.get("headers") or {}
    if headers:
        lines.append("headers:")
        lines += [f"  {printable(k)}: {printable(v)}" for k, v in sorted(headers.items())]
    lines += ["body:", printable(body, keep_newlines=True)]
    return "\n".join(lines)
