"""The rules of a session's state and its SLA, as pure functions (no I/O, no clock: time is an argument).

State
    A ``SessionState`` record (schemas/avro/SessionState.avsc) as a dict. Its *base facts* (stage times,
    file counts, event ids, room, last receive time, the stall) come from the SET of the session's events
    by order-free operations: the earliest ``trans_date`` (``received_at`` when absent) per stage, the
    newest ``received_at``, the smallest room id, counts over distinct event ids. So :func:`merge` gives the
    same state for any order and any duplication of a session's events. Everything else (latencies from
    the session end, ``sla_deadline``, ``sla_state``, ``version``) is :func:`derive`-d from the base facts.

Tables
    The processor keeps one faust table per stage (``TABLES``): ``session_end`` (the ``roomdrop``, and
    event types without a stage), ``recording``, ``transcoded`` (also where the stall is recorded),
    ``delivered`` (``file-transfer``) and ``chat`` (``chatdata``). Each holds the base facts of that stage's
    events only; event ids never overlap across tables (an id is a hash of a payload, which has one type),
    so :func:`combine` (a disjoint union, then :func:`derive`) of the five parts equals :func:`merge` of
    all the events: a property test holds the two together. :func:`on_event` and :func:`on_command` are
    what the owning agent does with a webhook and with a watch command: the table writes, the state before
    and after, and the alerts of the transition.

SLA (design.md, "SLA semantics")
    A composite is expected once a ``recording`` (or a ``transcoded``) was seen. The deadline is the
    session end (``roomdrop`` trans_date), else the first recording's trans_date, plus the SLA.
    ``sla_state`` is judged by event time: ``not_applicable`` (nothing expected), ``pending`` (expected, no
    stall recorded), ``breached`` (stalled, no composite yet), ``met`` (composite at or before the
    deadline), ``recovered`` (composite after the deadline).

The stall
    Whether a session is stalled depends on "now", so it is not something an event carries: :func:`judge`
    says a stall is due (a composite is expected, none has come, none recorded, ``now > deadline``) and an
    explicit ``stall`` command (:func:`apply_stall`, or :func:`on_command` with ``"stall"``) records it.
    ``stalled_at`` is set to the deadline itself, an event time, so a live run and a replay of the same log
    write the same state and the same alert (its ``detected_at`` aside: when it was raised). Two places decide a stall, both with the log's own notion of
    "now": a webhook of the session received at or after its deadline (:func:`step`: nothing came before
    it, or the composite would be merged already) and the SLA watch (watch.py: the log's time while the
    consumer is behind, the wall clock once it has caught up). Both are held back to the ingest
    instances' watermarks on the partition (processor/watermarks.py: "every webhook this instance received
    before T is in the log"; none is written while an instance spools), so a composite waiting in an
    ingest spool is never judged missing; a replay reads the same watermarks at the same offsets.

Alerts (:func:`alerts_for`) come from transitions, each at most once per session, with ``detected_at`` the
"now" that raised them (the receive time of the webhook that proved it, or the watch's "now": the wall clock
live, the log's time in a replay) and ``deadline`` the deadline that was breached (``stalled_at``):
    - the stall recorded -> ``transcode_stalled``;
    - a ``transcoded`` merged into a stalled session -> ``transcode_recovered`` with
      ``overdue_s = max(0, transcoded_at - sla_deadline) / 1000``: never negative. A composite whose
      ``trans_date`` is at or before the deadline makes the session ``met`` whenever it is delivered; it
      records no stall when it arrives after the deadline (:func:`stall_due_before`), and if a page went out
      before it arrived, the recovery closes it as a late delivery (``overdue_s`` 0, the delivery delay
      ``detected_at - deadline``). A ``roomdrop`` merged after the stall re-judges the session against the
      new deadline (``sla_state``, ``overdue_s``); the page that went out stays recorded.
    The ``alert_id`` is a hash of the session key and the kind: whoever raises it, however often.

Retention (:func:`expired`)
    Every session except a ``pending`` one (still waiting for its SLA verdict) leaves the tables once its
    last activity (the newest receive time, or the stall) is older than the retention. A breached session
    leaves too, so that state stays bounded when composites never come; a composite arriving after that
    starts a fresh state and raises no ``transcode_recovered``.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

State = dict[str, Any]
Event = dict[str, Any]
Base = dict[str, Any]
Alert = dict[str, Any]

STAGE_OF_TYPE = {"roomdrop": "ended_at", "recording": "recording_at", "transcoded": "transcoded_at",
                 "file-transfer": "delivered_at", "chatdata": "chat_at"}
FILES_OF_KIND = {"recording": "recording_files", "transcoded": "transcoded_files",
                 "transferred": "delivered_files", "chatdata": "chat_files"}
STALLED, RECOVERED = "transcode_stalled", "transcode_recovered"
SLA_STATES = ("not_applicable", "pending", "met", "breached", "recovered")

# One faust table per stage; the stall lives with the composite's facts.
TABLES = ("session_end", "recording", "transcoded", "delivered", "chat", "reconciled")
TABLE_OF_TYPE = {"roomdrop": "session_end", "recording": "recording", "transcoded": "transcoded",
                 "file-transfer": "delivered", "chatdata": "chat"}
STALL_TABLE = "transcoded"
# What reconciliation found (ReconcileFinding records, as events: :func:`finding_event`): kept apart from the
# webhooks' parts, so a webhook of the same type, whenever it comes, takes the finding's place (:func:`overlay`).
RECONCILED_TABLE = "reconciled"
RECONCILABLE = {"roomdrop": "ended_at", "recording": "recording_at", "transcoded": "transcoded_at",
                "chatdata": "chat_at"}
COUNT_OF_STAGE = {"recording_at": "recording_files", "transcoded_at": "transcoded_files", "chat_at": "chat_files"}
KIND_OF_FOUND = {"recording": "recording", "transcoded": "transcoded", "chatdata": "chatdata"}
WEBHOOK_MISSING = "webhook_missing"

STAGES = ("ended_at", "recording_at", "transcoded_at", "delivered_at", "chat_at")
COUNTS = ("recording_files", "transcoded_files", "delivered_files", "chat_files")
BASE_FIELDS = ("app_id", "conf_num", "room_id", "event_ids", *STAGES, *COUNTS, "stalled_at", "last_event_at")

# Commands of the SLA watch, applied by the owning agent.
STALL, EXPIRE = "stall", "expire"

LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1  # Avro's long: every time in a SessionState


def session_key(app_id: str, conf_num: str) -> str:
    return f"{app_id}/{conf_num}"


def alert_id(key: str, kind: str) -> str:
    """Deterministic: one id per session and kind, whoever raises it and however often."""
    return hashlib.sha256(f"{key}|{kind}".encode()).hexdigest()[:32]


def table_of(event_type: str) -> str:
    """The table that holds an event type's facts (types without a stage go with the session end)."""
    return TABLE_OF_TYPE.get(event_type, "session_end")


# -- base facts: order-free ------------------------------------------------------------------------

_EMPTY_BASE: Base = {"app_id": "", "conf_num": "", "room_id": None, "event_ids": [], **{s: None for s in STAGES},
                     **{c: 0 for c in COUNTS}, "stalled_at": None, "last_event_at": 0}


def empty_base(app_id: str, conf_num: str) -> Base:
    return {**_EMPTY_BASE, "app_id": app_id, "conf_num": conf_num, "event_ids": []}


def empty(app_id: str, conf_num: str) -> State:
    """A session with no event yet (all derived fields at their neutral values)."""
    return derive(empty_base(app_id, conf_num), 0.0)


def base_of(state: Mapping[str, Any]) -> Base:
    return {f: state[f] for f in BASE_FIELDS}


def _min(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def event_time(event: Event) -> int:
    """An event's own time: its ``trans_date``, or when ingest received it if EnableX gave none."""
    return event["trans_date"] if event.get("trans_date") is not None else event["received_at"]


def absorb(base: Base | None, event: Event) -> Base:
    """The base facts with ``event`` in. Commutative and idempotent: a set union in disguise."""
    new = dict(base) if base is not None else empty_base(event["app_id"], event.get("conf_num") or "")
    stage = STAGE_OF_TYPE.get(event["type"])
    if stage is not None:
        new[stage] = _min(new[stage], event_time(event))
    received = event["received_at"]
    if received > new["last_event_at"]:
        new["last_event_at"] = received
    room = event.get("room_id")
    if room is not None and (new["room_id"] is None or room < new["room_id"]):
        new["room_id"] = room
    event_id = event["event_id"]
    if event_id not in new["event_ids"]:
        ids = new["event_ids"] = list(new["event_ids"])
        bisect.insort(ids, event_id)
        for f in event.get("files") or ():
            column = FILES_OF_KIND.get(f["kind"])
            if column is not None:
                new[column] += 1
    return new


def join(a: Base | None, b: Base | None) -> Base | None:
    """The disjoint union of two parts of one session (their event ids must not overlap, as across tables)."""
    if a is None:
        return None if b is None else dict(b)
    if b is None:
        return dict(a)
    out = dict(a)
    for s in STAGES:
        out[s] = _min(a[s], b[s])
    for c in COUNTS:
        out[c] = a[c] + b[c]
    out["room_id"] = _min(a["room_id"], b["room_id"])
    out["event_ids"] = sorted({*a["event_ids"], *b["event_ids"]})
    out["stalled_at"] = _min(a["stalled_at"], b["stalled_at"])
    out["last_event_at"] = max(a["last_event_at"], b["last_event_at"])
    return out


# -- derived facts ---------------------------------------------------------------------------------

def derive(base: Mapping[str, Any], sla_seconds: float) -> State:
    """The full state from the base facts: latencies, deadline, sla_state, version. Pure.

    Raises ValueError for a deadline that does not fit Avro's long (a time near its end in the log, which
    ingest refuses but another producer could write): no SessionState could carry it."""
    ended, recording, transcoded = base["ended_at"], base["recording_at"], base["transcoded_at"]
    delivered, chat, stalled, event_ids = base["delivered_at"], base["chat_at"], base["stalled_at"], base["event_ids"]
    expects = recording is not None or transcoded is not None
    anchor = ended if ended is not None else recording
    deadline = anchor + int(round(sla_seconds * 1000)) if expects and anchor is not None else None
    if deadline is not None and not LONG_MIN <= deadline <= LONG_MAX:
        raise ValueError(f"sla_deadline {deadline} (the session's anchor {anchor} plus the SLA) is a value "
                         f"SessionState cannot hold (Avro long)")
    if not expects:
        state = "not_applicable"
    elif transcoded is not None:
        state = "recovered" if deadline is not None and transcoded > deadline else "met"
    else:
        state = "breached" if stalled is not None else "pending"
    ended_known = ended is not None
    return {  # in STATE_FIELDS order; written out rather than looped: the processor derives a state per event
        "app_id": base["app_id"], "conf_num": base["conf_num"], "room_id": base["room_id"],
        "version": len(event_ids) + (stalled is not None), "event_ids": event_ids,
        "ended_at": ended, "recording_at": recording, "transcoded_at": transcoded, "delivered_at": delivered,
        "chat_at": chat, "recording_files": base["recording_files"], "transcoded_files": base["transcoded_files"],
        "delivered_files": base["delivered_files"], "chat_files": base["chat_files"],
        "recording_latency_s": (recording - ended) / 1000.0 if ended_known and recording is not None else None,
        "transcode_latency_s": (transcoded - ended) / 1000.0 if ended_known and transcoded is not None else None,
        "delivery_latency_s": (delivered - ended) / 1000.0 if ended_known and delivered is not None else None,
        "chat_latency_s": (chat - ended) / 1000.0 if ended_known and chat is not None else None,
        "sla_deadline": deadline, "sla_state": state, "stalled_at": stalled, "last_event_at": base["last_event_at"],
        "reconciled": base.get("reconciled") or [],
    }


STATE_FIELDS = ("app_id", "conf_num", "room_id", "version", "event_ids", *STAGES, *COUNTS,
                "recording_latency_s", "transcode_latency_s", "delivery_latency_s", "chat_latency_s",
                "sla_deadline", "sla_state", "stalled_at", "last_event_at", "reconciled")


def merge(state: State | None, event: Event, sla_seconds: float) -> State:
    """The session's state with ``event`` merged in: the same for any order and duplication of events.

    The stall (``stalled_at``) is carried over untouched: only a stall command sets it."""
    return derive(absorb(base_of(state) if state is not None else None, event), sla_seconds)


def joined(parts: Iterable[Base | None]) -> Base | None:
    """The base facts of a session's parts together (None when it has none); may be one of the parts
    itself: never modify it."""
    total: Base | None = None
    for part in parts:
        if part is not None:
            total = part if total is None else join(total, part)
    return total


def combine(parts: Mapping[str, Base | None] | Iterable[Base | None], sla_seconds: float) -> State | None:
    """The session's state from its parts (one per table), or None when it has none."""
    total = session_base(parts) if isinstance(parts, Mapping) else joined(parts)
    return None if total is None else derive(total, sla_seconds)


# -- reconciliation: what EnableX's Server API holds that no webhook brought ---------------------------

def finding_event(finding: Mapping[str, Any]) -> Event:
    """A ReconcileFinding (schemas/avro/ReconcileFinding.avsc) as an event of its missing type: its id is the
    finding's (deterministic: the same finding twice is a repeat), received when it was found, at the time
    EnableX gives for it, with the archive's URLs as its files. It goes to :data:`RECONCILED_TABLE` only."""
    kind = KIND_OF_FOUND.get(finding["missing_type"])
    return {"event_id": finding["finding_id"], "received_at": finding["found_at"], "type": finding["missing_type"],
            "app_id": finding["app_id"], "room_id": finding.get("room_id"), "conf_num": finding["conf_num"],
            "trans_date": finding.get("trans_date"),
            "files": [{"kind": kind, "url": u, "stage": None, "size_bytes": None}
                      for u in (finding.get("urls") or ())] if kind is not None else []}


def overlay(real: Base | None, found: Base | None) -> Base | None:
    """The webhooks' facts with reconciliation's filling what no webhook brought. Pure and order-free: a
    stage known from a webhook keeps the webhook's time and file count whatever was found; a stage known
    only from a finding takes the finding's, and its event type is listed in ``reconciled``. The finding ids
    stay among the event ids (the version grows with each finding, and again when a webhook replaces one)."""
    if found is None:
        return real
    out = dict(real) if real is not None else empty_base(found["app_id"], found["conf_num"])
    taken = []
    for type_, stage in RECONCILABLE.items():
        if out[stage] is None and found[stage] is not None:
            out[stage] = found[stage]
            count = COUNT_OF_STAGE.get(stage)
            if count is not None:
                out[count] = out[count] + found[count]
            taken.append(type_)
    out["event_ids"] = sorted({*out["event_ids"], *found["event_ids"]})
    out["room_id"] = _min(out["room_id"], found["room_id"])
    out["last_event_at"] = max(out["last_event_at"], found["last_event_at"])
    out["reconciled"] = taken
    return out


def session_base(parts: Mapping[str, Base | None]) -> Base | None:
    """The base facts of a session from its parts by table: the webhooks' parts joined, then what
    reconciliation found overlaid (:func:`overlay`)."""
    found = parts.get(RECONCILED_TABLE)
    real = joined(p for t, p in parts.items() if t != RECONCILED_TABLE)
    return real if found is None else overlay(real, found)


# -- the SLA verdict ---------------------------------------------------------------------------------

def stall_due(state: Mapping[str, Any], now_ms: int) -> bool:
    """A composite is expected, has not come, no stall was recorded yet and the deadline has passed (a
    composite at the deadline itself is in time, so the stall is due from the next millisecond on)."""
    return (state["transcoded_at"] is None and state["stalled_at"] is None and state["sla_deadline"] is not None
            and now_ms > state["sla_deadline"])


def judge(state: Mapping[str, Any] | None, now_ms: int) -> list[str]:
    """What the SLA watch decides for a session at ``now_ms``: ``["stall"]`` or nothing.

    A decision is only a request: the owning agent re-judges it against the state it holds when the
    command arrives (:func:`sweep_step`, :func:`on_command`), so a stale or repeated one changes nothing."""
    return [STALL] if state is not None and stall_due(state, now_ms) else []


def apply_stall(state: State, sla_seconds: float) -> State:
    """Record the stall, at the deadline (an event time: the same for a live run and a replay)."""
    if state["stalled_at"] is not None or state["sla_deadline"] is None:
        return state
    return derive({**state, "stalled_at": state["sla_deadline"]}, sla_seconds)


def alerts_for(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, now_ms: int) -> list[Alert]:
    """The SlaAlerts a transition raises at ``now_ms`` (when it is raised: its ``detected_at``): a stall once,
    a composite after a stall once.

    A recovery's ``overdue_s`` is the composite's time past the session's deadline as it stands now (a
    ``roomdrop`` merged after the stall re-judges it against the new one), never negative: a composite at
    or before the deadline that arrives after the page closes it as a late delivery, ``overdue_s`` 0, its
    delivery delay ``detected_at - deadline``."""
    if after is None:
        return []
    key = session_key(after["app_id"], after["conf_num"])
    # the deadline that was breached: the stall records it (a roomdrop merged later may move sla_deadline)
    common = {"app_id": after["app_id"], "conf_num": after["conf_num"], "room_id": after["room_id"],
              "deadline": after["stalled_at"]}
    out: list[Alert] = []
    was_stalled = before is not None and before["stalled_at"] is not None
    if after["stalled_at"] is not None and not was_stalled:
        out.append({"alert_id": alert_id(key, STALLED), "kind": STALLED, "detected_at": now_ms,
                    "overdue_s": None, **common, "cause": None})
    was_recovered = was_stalled and before is not None and before["transcoded_at"] is not None
    if after["stalled_at"] is not None and after["transcoded_at"] is not None and not was_recovered:
        deadline = after["sla_deadline"] if after["sla_deadline"] is not None else after["stalled_at"]
        overdue = max(0, after["transcoded_at"] - deadline) / 1000.0
        cause = WEBHOOK_MISSING if "transcoded" in (after.get("reconciled") or ()) else None
        out.append({"alert_id": alert_id(key, RECOVERED), "kind": RECOVERED, "detected_at": now_ms,
                    "overdue_s": overdue, **common, "cause": cause})
    return out


def judged_at(event: Event, bound_ms: int | None = None) -> int:
    """When a webhook proves time has come: its receive time, held back to the partition's watermark bound
    (watermarks.py: another ingest instance may still hold records received earlier)."""
    received: int = event["received_at"]
    return received if bound_ms is None else min(received, bound_ms)


def stall_due_before(before: Mapping[str, Any] | None, event: Event, bound_ms: int | None = None) -> int | None:
    """The deadline a webhook proves breached before it is merged, or None.

    The log's own clock: a record received after the deadline proves the deadline passed without a
    composite before it (the live watch saw it pass: judging by the deadline known before the record is
    what makes a replay equal the live run), unless the record is itself that composite, on time (its
    ``trans_date`` at or before the deadline: the session is ``met``, however late it was delivered).
    ``bound_ms``: the watermarks' bound on the partition's "now" at this record (:func:`judged_at`)."""
    if before is None or not stall_due(before, judged_at(event, bound_ms)):
        return None
    deadline: int = before["sla_deadline"]
    if event["type"] == "transcoded" and event_time(event) <= deadline:
        return None
    return deadline


def step(state: State | None, event: Event, sla_seconds: float,
         bound_ms: int | None = None) -> tuple[State, list[Alert]]:
    """What the processor does with one webhook of the session: first judge the stall at the event's
    receive time (:func:`stall_due_before`, held back to the watermarks' ``bound_ms``), then merge. The new
    state and the alerts of the transition, raised at that time."""
    current, alerts, now = state, [], judged_at(event, bound_ms)
    deadline = stall_due_before(state, event, bound_ms)
    if state is not None and deadline is not None:
        current = derive({**base_of(state), "stalled_at": deadline}, sla_seconds)
        alerts = alerts_for(state, current, now)  # as the watch would have raised it just before this event
    merged = merge(current, event, sla_seconds)
    return merged, alerts + alerts_for(current, merged, now)


def sweep_step(state: State, now_ms: int, sla_seconds: float) -> tuple[State, list[Alert]]:
    """What the processor does with the watch's stall command: re-judge at ``now_ms``, apply if still due."""
    if not stall_due(state, now_ms):
        return state, []
    after = apply_stall(state, sla_seconds)
    return after, alerts_for(state, after, now_ms)


def last_activity(state: Mapping[str, Any]) -> int:
    return max(state["last_event_at"], state["stalled_at"] or 0)


def expired(state: Mapping[str, Any], now_ms: int, retention_s: float) -> bool:
    """The session leaves the tables: not waiting for its SLA verdict, last active longer ago than the
    retention."""
    return state["sla_state"] != "pending" and last_activity(state) + int(retention_s * 1000) <= now_ms


def finished(state: Mapping[str, Any]) -> bool:
    """Nothing more is expected of the session (its composite came, or none was ever expected)."""
    return state["sla_state"] in ("met", "recovered", "not_applicable")


# -- what the owning agent does with its tables -----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Transition:
    """One step of a session in the tables: the parts to write (None deletes), the state before and after
    (None when it has none / leaves the tables) and the alerts raised."""

    writes: dict[str, Base | None]
    before: State | None
    after: State | None
    alerts: list[Alert]

    @property
    def changed(self) -> bool:
        return self.after != self.before


def on_event(parts: Mapping[str, Base | None], event: Event, sla_seconds: float, *,
             table: str | None = None, now_ms: int | None = None) -> Transition:
    """A webhook of the session (or, with ``table=RECONCILED_TABLE``, a finding: :func:`on_finding`):
    :func:`step`, on the session's parts; ``now_ms`` is the watermarks' bound on the partition's "now" at
    this record (None: the log has none), which holds the stall a late record proves back (:func:`judged_at`).

    The parts are combined once, into the state before. The state after is that state with the event
    absorbed: event ids never overlap across tables, so absorbing into the whole equals absorbing into
    the event's own part and combining again (the property tests hold the two together). With findings in
    the session the parts are combined again instead (:func:`overlay` is not a union)."""
    base = session_base(parts)
    before = None if base is None else derive(base, sla_seconds)
    writes: dict[str, Base | None] = {}
    stalled, alerts, now = before, [], judged_at(event, now_ms)
    deadline = stall_due_before(before, event, now_ms)
    if before is not None and deadline is not None:
        writes[STALL_TABLE] = _stalled_part(parts.get(STALL_TABLE), before, deadline)
        base = {**base, "stalled_at": deadline}  # type: ignore[dict-item]
        stalled = derive(base, sla_seconds)
        alerts = alerts_for(before, stalled, now)
    table = table or table_of(event["type"])
    current = writes.get(table, parts.get(table))
    merged = absorb(current, event)
    if merged == current:  # a repeat: nothing new (a stall recorded just now is written all the same)
        return Transition(writes, before, stalled, alerts)
    writes[table] = merged
    if table != RECONCILED_TABLE and parts.get(RECONCILED_TABLE) is None:
        after = derive(merged if base is None else absorb(base, event), sla_seconds)
    else:
        after = derive(session_base({**parts, **writes}), sla_seconds)  # type: ignore[arg-type]
    return Transition(writes, before, after, alerts + alerts_for(stalled, after, now))


def on_finding(parts: Mapping[str, Base | None], finding: Mapping[str, Any], sla_seconds: float) -> Transition:
    """A ReconcileFinding of the session, judged like a webhook of its missing type (:func:`finding_event`)
    and kept in :data:`RECONCILED_TABLE`: an archived composite on time makes the session ``met`` however
    late it was found; one found after a page closes it with a ``transcode_recovered`` whose cause is
    ``webhook_missing``; a session known only from the archive or the CDR is watched from then on."""
    return on_event(parts, finding_event(finding), sla_seconds, table=RECONCILED_TABLE)


def on_command(parts: Mapping[str, Base | None], op: str, now_ms: int, sla_seconds: float,
               retention_s: float) -> Transition:
    """A command of the SLA watch, re-judged against the parts held now (stale or repeated: no change)."""
    before = combine(parts, sla_seconds)
    if before is None:
        return Transition({}, None, None, [])
    if op == STALL and stall_due(before, now_ms):
        writes = {STALL_TABLE: _stalled_part(parts.get(STALL_TABLE), before, before["sla_deadline"])}
        after = combine({**parts, **writes}, sla_seconds)
        return Transition(writes, before, after, alerts_for(before, after, now_ms))
    if op == EXPIRE and expired(before, now_ms, retention_s):
        return Transition({t: None for t, p in parts.items() if p is not None}, before, None, [])
    return Transition({}, before, before, [])


def _stalled_part(part: Base | None, state: State, deadline: int) -> Base:
    out = dict(part) if part is not None else empty_base(state["app_id"], state["conf_num"])
    out["stalled_at"] = deadline
    return out
