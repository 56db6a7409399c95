"""The rules of a session's state and its SLA, as pure functions (no I/O, no clock: time is an argument).

State is a ``SessionState`` record (schemas/avro/SessionState.avsc). Everything in it is derived from the
SET of the session's events with order-free operations (min of stage times, max of receive times, sums
over distinct event ids), so merging a session's events in any order, with any duplication, gives the
same state. The only fact that depends on "now" is the stall: :func:`judge` says when one is due and
:func:`apply_stall` records it (at the deadline, an event time, so live operation and a replay agree).

SLA (design.md, "SLA semantics"): a composite is expected once a ``recording`` (or a ``transcoded``) was
seen; the deadline is the session end (``roomdrop`` trans_date), else the first recording's trans_date,
plus the SLA. ``sla_state``: ``not_applicable`` (nothing expected), ``pending`` (expected, not yet due),
``breached`` (stalled, no composite yet), ``met`` (composite by the deadline), ``recovered`` (composite
after the deadline). Alerts come from transitions: the stall gives ``transcode_stalled``, a composite
after a stall gives ``transcode_recovered`` with its overdue time; each at most once per session.
"""

from __future__ import annotations

import hashlib
from typing import Any

State = dict[str, Any]
Event = dict[str, Any]

STAGE_OF_TYPE = {"roomdrop": "ended_at", "recording": "recording_at", "transcoded": "transcoded_at",
                 "file-transfer": "delivered_at", "chatdata": "chat_at"}
FILES_OF_KIND = {"recording": "recording_files", "transcoded": "transcoded_files",
                 "transferred": "delivered_files", "chatdata": "chat_files"}
LATENCY_OF_STAGE = {"recording_at": "recording_latency_s", "transcoded_at": "transcode_latency_s",
                    "delivered_at": "delivery_latency_s", "chat_at": "chat_latency_s"}
STALLED, RECOVERED = "transcode_stalled", "transcode_recovered"


def session_key(app_id: str, conf_num: str) -> str:
    return f"{app_id}/{conf_num}"


def alert_id(key: str, kind: str) -> str:
    """Deterministic: one id per session and kind, whoever raises it and however often."""
    return hashlib.sha256(f"{key}|{kind}".encode()).hexdigest()[:32]


def empty(app_id: str, conf_num: str) -> State:
    return {"app_id": app_id, "conf_num": conf_num, "room_id": None, "version": 0, "event_ids": [],
            "ended_at": None, "recording_at": None, "transcoded_at": None, "delivered_at": None, "chat_at": None,
            "recording_files": 0, "transcoded_files": 0, "delivered_files": 0, "chat_files": 0,
            "recording_latency_s": None, "transcode_latency_s": None, "delivery_latency_s": None,
            "chat_latency_s": None, "sla_deadline": None, "sla_state": "not_applicable", "stalled_at": None,
            "last_event_at": 0}


def _min(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def merge(state: State | None, event: Event, sla_seconds: float) -> State:
    """The session's state with ``event`` merged in (a duplicate changes nothing but order-free minima)."""
    new = dict(state) if state is not None else empty(event["app_id"], event.get("conf_num") or "")
    when = event["trans_date"] if event.get("trans_date") is not None else event["received_at"]
    stage = STAGE_OF_TYPE.get(event["type"])
    if stage is not None:
        new[stage] = _min(new[stage], when)
    new["last_event_at"] = max(new["last_event_at"], event["received_at"])
    rooms = [r for r in (new["room_id"], event.get("room_id")) if r is not None]
    new["room_id"] = min(rooms) if rooms else None
    if event["event_id"] not in new["event_ids"]:
        new["event_ids"] = sorted([*new["event_ids"], event["event_id"]])
        for f in event.get("files") or ():
            column = FILES_OF_KIND.get(f["kind"])
            if column is not None:
                new[column] += 1
    return derive(new, sla_seconds)


def derive(state: State, sla_seconds: float) -> State:
    """Recompute what follows from the base facts: latencies, deadline, sla_state, version. Pure."""
    new = dict(state)
    ended = new["ended_at"]
    for stage, latency in LATENCY_OF_STAGE.items():
        new[latency] = (new[stage] - ended) / 1000.0 if ended is not None and new[stage] is not None else None
    expected = new["recording_at"] is not None or new["transcoded_at"] is not None
    base = ended if ended is not None else new["recording_at"]
    new["sla_deadline"] = base + int(sla_seconds * 1000) if expected and base is not None else None
    new["sla_state"] = sla_state(new)
    new["version"] = len(new["event_ids"]) + (1 if new["stalled_at"] is not None else 0)
    return new


def sla_state(state: State) -> str:
    expected = state["recording_at"] is not None or state["transcoded_at"] is not None
    if not expected:
        return "not_applicable"
    deadline, transcoded = state["sla_deadline"], state["transcoded_at"]
    if transcoded is not None:
        return "recovered" if deadline is not None and transcoded > deadline else "met"
    return "breached" if state["stalled_at"] is not None else "pending"


def stall_due(state: State, now_ms: int) -> bool:
    """A composite is expected, has not come, the deadline has passed and no stall was recorded yet."""
    return (state["transcoded_at"] is None and state["stalled_at"] is None and state["sla_deadline"] is not None
            and now_ms >= state["sla_deadline"])


def apply_stall(state: State, sla_seconds: float) -> State:
    """Record the stall, at the deadline (an event time: the same for a live run and a replay)."""
    if state["stalled_at"] is not None or state["sla_deadline"] is None:
        return state
    return derive({**state, "stalled_at": state["sla_deadline"]}, sla_seconds)


def alerts_for(before: State | None, after: State) -> list[dict[str, Any]]:
    """The SlaAlerts a transition raises: a stall once, a composite after a stall once."""
    key = session_key(after["app_id"], after["conf_num"])
    common = {"app_id": after["app_id"], "conf_num": after["conf_num"], "room_id": after["room_id"],
              "deadline": after["sla_deadline"]}
    out = []
    was_stalled = before is not None and before["stalled_at"] is not None
    if after["stalled_at"] is not None and not was_stalled:
        out.append({"alert_id": alert_id(key, STALLED), "kind": STALLED, "detected_at": after["stalled_at"],
                    "overdue_s": None, **common})
    was_recovered = was_stalled and before is not None and before["transcoded_at"] is not None
    if after["stalled_at"] is not None and after["transcoded_at"] is not None and not was_recovered:
        overdue = (after["transcoded_at"] - after["sla_deadline"]) / 1000.0
        out.append({"alert_id": alert_id(key, RECOVERED), "kind": RECOVERED, "detected_at": after["transcoded_at"],
                    "overdue_s": overdue, **common})
    return out


def step(state: State | None, event: Event, sla_seconds: float) -> tuple[State, list[dict[str, Any]]]:
    """What the processor does with one webhook: first judge the stall at the event's receive time (the
    log's own clock: a record received after the deadline proves the deadline passed without a composite
    before it), then merge. Returns the new state and the alerts of the transition."""
    current = state
    if current is not None and stall_due(current, event["received_at"]):
        current = apply_stall(current, sla_seconds)
    merged = merge(current, event, sla_seconds)
    return merged, alerts_for(state, merged)


def sweep_step(state: State, now_ms: int, sla_seconds: float) -> tuple[State, list[dict[str, Any]]]:
    """What the processor does with a sweep's stall command: re-judge at ``now_ms`` and apply if still due."""
    if not stall_due(state, now_ms):
        return state, []
    after = apply_stall(state, sla_seconds)
    return after, alerts_for(state, after)


def finished(state: State) -> bool:
    return state["sla_state"] in ("met", "recovered", "not_applicable")


def expired(state: State, now_ms: int, retention_s: float) -> bool:
    """A finished session whose last event is older than the retention leaves the tables."""
    return finished(state) and state["last_event_at"] + int(retention_s * 1000) <= now_ms
