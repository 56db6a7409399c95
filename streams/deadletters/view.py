"""What ``deadletters list`` and ``show`` print (pure)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from streams.deadletters.select import app_id_of, origin

REASON_WIDTH = 70


def iso(ms: int | None) -> str:
    if ms is None:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def redriven_text(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return ""
    return f"{entry.get('outcome', 'redriven')} {iso(entry.get('redriven_at'))}"


def list_line(letter: Mapping[str, Any], entry: Mapping[str, Any] | None) -> str:
    reason = str(letter.get("reason", "")).replace("\n", " ")
    if len(reason) > REASON_WIDTH:
        reason = reason[:REASON_WIDTH - 1] + "…"
    cells = [iso(letter.get("received_at")), str(letter["id"]), origin(letter), app_id_of(letter) or "-", reason]
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
    lines = [f"id:          {letter['id']}",
             f"received_at: {iso(letter.get('received_at'))}",
             f"origin:      {origin(letter)}",
             f"source:      {letter.get('source') or ''}",
             f"reason:      {letter.get('reason')}",
             f"stored at:   {letter.get('_at') or ''}"]
    if entry:
        lines.append(f"redrive:     {redriven_text(entry)}, event {entry.get('event_id')}"
                     + (f" at {entry['appended_to']}" if entry.get("appended_to") else ""))
    headers = letter.get("headers") or {}
    if headers:
        lines.append("headers:")
        lines += [f"  {k}: {v}" for k, v in sorted(headers.items())]
    lines += ["body:", body]
    return "\n".join(lines)
