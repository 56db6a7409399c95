"""What EnableX holds against what the log holds: the findings of one reconciliation pass. Pure.

Inputs: the Server API's archive entries (``_id, trans_date, conf_num, app_id, room_id, recording: [{url}],
transcoded: [{url}], chatdata, metadata``) and CDR rows (``trans_date, conf_num, room{room_id, connect_dt,
disconnect_dt, duration}, app_id, cdr_id``, one row per participant connection), the webhook types the log
holds per session key ``{app_id}/{conf_num}``, a ``now`` and a grace period.

- ``webhook_missing``: EnableX holds a CDR (type ``roomdrop``), a recording, a composite (``transcoded``) or
  a chat file (``chatdata``) of a session whose webhook of that type is not in the log.
- ``session_unknown`` (missing type ``roomdrop``, source ``cdr``): a CDR conference with no event at all in
  the log; it replaces the ``webhook_missing`` roomdrop of that session.

An item younger than the grace period (its time + grace > now) is skipped: its webhook may be in flight.
A conference with a participant still connected (a CDR row without ``disconnect_dt``) has not ended, so no
roomdrop is expected yet. An item whose time cannot be read is reported (it can never become "old enough"
otherwise), with the latest time that could be read. Findings have deterministic ids and a stable order.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping, Set
from typing import Any

from streams.events import Rejection, parse_trans_date

WEBHOOK_MISSING = "webhook_missing"
SESSION_UNKNOWN = "session_unknown"
ARCHIVE_TYPES = ("recording", "transcoded", "chatdata")  # the archive's file lists, named as their webhooks
MISSING_TYPES = ("roomdrop", *ARCHIVE_TYPES)


def finding_id(app_id: str, conf_num: str, missing_type: str) -> str:
    """First 32 hex chars of SHA-256 of ``{app_id}/{conf_num}|{missing_type}``: the same finding, the same id."""
    return hashlib.sha256(f"{app_id}/{conf_num}|{missing_type}".encode()).hexdigest()[:32]


def session_key(app_id: str, conf_num: str) -> str:
    """The log's message key, ``{app_id}/{conf_num}``."""
    return f"{app_id}/{conf_num}"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One ``ReconcileFinding`` record (schemas/avro/ReconcileFinding.avsc)."""

    kind: str
    app_id: str
    conf_num: str
    room_id: str | None
    missing_type: str
    source: str
    trans_date: int | None
    urls: tuple[str, ...]
    archive_id: str | None
    found_at: int

    @property
    def finding_id(self) -> str:
        return finding_id(self.app_id, self.conf_num, self.missing_type)

    @property
    def key(self) -> str:
        return session_key(self.app_id, self.conf_num)

    def record(self) -> dict[str, Any]:
        """The Avro record."""
        return {"finding_id": self.finding_id, "kind": self.kind, "app_id": self.app_id, "conf_num": self.conf_num,
                "room_id": self.room_id, "missing_type": self.missing_type, "source": self.source,
                "trans_date": self.trans_date, "urls": list(self.urls), "archive_id": self.archive_id,
                "found_at": self.found_at}


# -- reading the API's entries ------------------------------------------------------------------------

def _text(value: Any) -> str | None:
    if value is None or value == "" or isinstance(value, bool) or isinstance(value, (dict, list)):
        return None
    return str(value)


def _time(value: Any) -> int | None:
    try:
        return parse_trans_date(value)
    except Rejection:
        return None


def urls_of(value: Any) -> list[str]:
    """The URLs of a file list: ``[{url}]``, ``[url]``, a single URL string or ``{url}``; others are ignored."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        url = item.get("url") if isinstance(item, Mapping) else item
        if isinstance(url, str) and url.strip() and url.strip() not in out:
            out.append(url.strip())
    return out


def _session_of(entry: Mapping[str, Any], default_app_id: str | None) -> tuple[str, str] | None:
    app_id = _text(entry.get("app_id")) or default_app_id
    conf_num = _text(entry.get("conf_num"))
    if not app_id or not conf_num:
        return None
    return app_id, conf_num


@dataclasses.dataclass
class _Held:
    """What EnableX holds of one type for one session, merged over its entries."""

    room_id: str | None = None
    trans_date: int | None = None
    unreadable_time: bool = False
    running: bool = False  # CDR: a participant still connected
    urls: list[str] = dataclasses.field(default_factory=list)
    ids: list[str] = dataclasses.field(default_factory=list)

    def add_time(self, ms: int | None) -> None:
        if ms is None:
            self.unreadable_time = True
        elif self.trans_date is None or ms > self.trans_date:
            self.trans_date = ms


def _archive_holdings(archive: Iterable[Mapping[str, Any]], default_app_id: str | None
                      ) -> dict[tuple[str, str, str], _Held]:
    held: dict[tuple[str, str, str], _Held] = {}
    entries = [e for e in archive if isinstance(e, Mapping)]
    for entry in sorted(entries, key=lambda e: str(e.get("_id") or "")):  # URLs in the same order every pass
        session = _session_of(entry, default_app_id)
        if session is None:
            continue
        for kind in ARCHIVE_TYPES:
            urls = urls_of(entry.get(kind))
            if not urls:
                continue
            h = held.setdefault((*session, kind), _Held())
            h.room_id = h.room_id or _text(entry.get("room_id"))
            h.add_time(_time(entry.get("trans_date")))
            h.urls += [u for u in urls if u not in h.urls]
            if _text(entry.get("_id")):
                h.ids.append(str(entry["_id"]))
    return held


def _cdr_holdings(cdr: Iterable[Mapping[str, Any]], default_app_id: str | None) -> dict[tuple[str, str], _Held]:
    held: dict[tuple[str, str], _Held] = {}
    for row in cdr:
        if not isinstance(row, Mapping):
            continue
        session = _session_of(row, default_app_id)
        if session is None:
            continue
        room = row.get("room") if isinstance(row.get("room"), Mapping) else {}
        h = held.setdefault(session, _Held())
        h.room_id = h.room_id or _text(room.get("room_id")) or _text(row.get("room_id"))
        disconnect = room.get("disconnect_dt")
        if disconnect is None or disconnect == "":
            h.running = True
        else:
            h.add_time(_time(disconnect))
        if _text(row.get("cdr_id")):
            h.ids.append(str(row["cdr_id"]))
    return held


def sessions_of(archive: Iterable[Mapping[str, Any]], cdr: Iterable[Mapping[str, Any]],
                default_app_id: str | None = None) -> list[tuple[str, str]]:
    """Every (app_id, conf_num) the entries name, sorted: what to ask the log about."""
    keys = {k[:2] for k in _archive_holdings(archive, default_app_id)} | set(_cdr_holdings(cdr, default_app_id))
    return sorted(keys)


def _young(h: _Held, now_ms: int, grace_ms: int) -> bool:
    return h.trans_date is not None and not h.unreadable_time and h.trans_date + grace_ms > now_ms


def compare(archive: Iterable[Mapping[str, Any]], cdr: Iterable[Mapping[str, Any]],
            seen: Mapping[str, Set[str]], now_ms: int, grace_s: float, *,
            default_app_id: str | None = None, already: Set[str] = frozenset()) -> list[Finding]:
    """The findings: what EnableX holds that the log (``seen``: session key -> webhook types) lacks, older
    than ``grace_s``, and whose id is not in ``already``. Sorted by session, then missing type."""
    archive, cdr = list(archive), list(cdr)
    grace_ms = int(grace_s * 1000)
    findings: list[Finding] = []
    for (app_id, conf_num), h in _cdr_holdings(cdr, default_app_id).items():
        types = seen.get(session_key(app_id, conf_num)) or set()
        if "roomdrop" in types or h.running or _young(h, now_ms, grace_ms):
            continue
        kind = WEBHOOK_MISSING if types else SESSION_UNKNOWN
        findings.append(Finding(kind, app_id, conf_num, h.room_id, "roomdrop", "cdr",
                                h.trans_date, (), min(h.ids, default=None), now_ms))
    for (app_id, conf_num, kind), h in _archive_holdings(archive, default_app_id).items():
        types = seen.get(session_key(app_id, conf_num)) or set()
        if kind in types or _young(h, now_ms, grace_ms):
            continue
        findings.append(Finding(WEBHOOK_MISSING, app_id, conf_num, h.room_id, kind, "archive",
                                h.trans_date, tuple(h.urls),
                                min(h.ids, default=None), now_ms))
    findings = [f for f in findings if f.finding_id not in already]
    return sorted(findings, key=lambda f: (f.app_id, f.conf_num, MISSING_TYPES.index(f.missing_type)))
