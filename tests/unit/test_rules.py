"""The processor's pure rules (streams.processor.rules) and the watch's decisions (streams.processor.watch).

An exhaustive table of SLA situations, then hypothesis properties over generated sessions: merging is
independent of order and duplication; the per-table parts combine to the merged state; the agent's
table transitions equal the whole-state rules; at most one alert of each kind; a replay judged at the
log's own time raises exactly what a live run judged at wall time raised; retention.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from streams.avro import default_codec
from streams.processor import rules
from streams.processor.watch import DueIndex, PartitionClock, Resend, decide, next_due, partition_of, sweep

SLA_S = 100.0
SLA_MS = 100_000
APP, CONF = "app", "conf"
KEY = f"{APP}/{CONF}"

_ids = iter(range(10**9))


def ev(type_: str, trans: int | None, received: int | None = None, files: tuple[str, ...] | None = None,
       room: str | None = "room", event_id: str | None = None) -> dict:
    if files is None:
        files = {"recording": ("recording",), "transcoded": ("transcoded",), "chatdata": ("chatdata",),
                 "file-transfer": ("transferred", "transferred")}.get(type_, ())
    return {"event_id": event_id or f"e{next(_ids)}", "type": type_, "app_id": APP, "conf_num": CONF,
            "room_id": room, "trans_date": trans, "received_at": trans if received is None else received,
            "files": [{"kind": k, "url": f"http://f/{i}", "stage": None, "size_bytes": None} for i, k in enumerate(files)],
            "destination": None, "raw": "{}", "source": None}


def fold(events: list[dict], sla_s: float = SLA_S) -> dict | None:
    state = None
    for e in events:
        state = rules.merge(state, e, sla_s)
    return state


def run(items: list, sla_s: float = SLA_S) -> tuple[dict | None, list[dict]]:
    """Events (dicts) and sweeps (ints: now_ms) through the whole-state rules, as the agent applies them."""
    state, alerts = None, []
    for item in items:
        if isinstance(item, int):
            if state is not None:
                state, raised = rules.sweep_step(state, item, sla_s)
                alerts += raised
        else:
            state, raised = rules.step(state, item, sla_s)
            alerts += raised
    return state, alerts


# -- the table ---------------------------------------------------------------------------------------

END, REC = 1_000_000, 1_060_000
CASES = [
    # events, sweeps at (ms), expected sla_state, deadline, alert kinds
    ("roomdrop only", [ev("roomdrop", END)], [END + 10**7], "not_applicable", None, []),
    ("chat and delivery only", [ev("chatdata", END), ev("file-transfer", END)], [END + 10**7],
     "not_applicable", None, []),
    ("recording, at the deadline", [ev("roomdrop", END), ev("recording", REC)], [END + SLA_MS],
     "pending", END + SLA_MS, []),
    ("recording, past the deadline", [ev("roomdrop", END), ev("recording", REC)], [END + SLA_MS + 1],
     "breached", END + SLA_MS, [rules.STALLED]),
    ("no roomdrop: first recording anchors", [ev("recording", REC + 5), ev("recording", REC)], [REC + SLA_MS + 1],
     "breached", REC + SLA_MS, [rules.STALLED]),
    ("composite on time", [ev("roomdrop", END), ev("recording", REC), ev("transcoded", END + SLA_MS)],
     [END + 10**7], "met", END + SLA_MS, []),
    ("composite late, received before any sweep", [ev("roomdrop", END), ev("recording", REC),
                                                   ev("transcoded", END + SLA_MS + 1, received=END + SLA_MS - 5)],
     [END + 10**7], "recovered", END + SLA_MS, []),
    ("composite received after the deadline", [ev("roomdrop", END), ev("recording", REC),
                                               ev("transcoded", END + SLA_MS + 5000)],
     [], "recovered", END + SLA_MS, [rules.STALLED, rules.RECOVERED]),
    ("stall, then the composite", [ev("roomdrop", END), ev("recording", REC), END + SLA_MS + 3,
                                   ev("transcoded", END + SLA_MS + 7000)],
     [END + 10**7], "recovered", END + SLA_MS, [rules.STALLED, rules.RECOVERED]),
    ("live-recorded: composite without recording", [ev("roomdrop", END), ev("transcoded", END + 10)],
     [END + 10**7], "met", END + SLA_MS, []),
    ("composite alone: expected, no anchor", [ev("transcoded", END)], [END + 10**7], "met", None, []),
    ("stall repeated", [ev("recording", REC), REC + SLA_MS + 1, REC + SLA_MS + 2], [REC + 10**7], "breached",
     REC + SLA_MS, [rules.STALLED]),
    # an on-time composite delivered after the deadline (EnableX late, or ingest spooling): met, no page
    ("on-time composite received after the deadline", [ev("roomdrop", END), ev("recording", REC),
                                                       ev("transcoded", END + SLA_MS, received=END + SLA_MS + 9000)],
     [END + 10**7], "met", END + SLA_MS, []),
    # the page went out before the on-time composite arrived: closed as a late delivery, overdue 0
    ("stall, then an on-time composite", [ev("roomdrop", END), ev("recording", REC), END + SLA_MS + 3,
                                          ev("transcoded", END + SLA_MS - 60_000, received=END + SLA_MS + 7000)],
     [END + 10**7], "met", END + SLA_MS, [rules.STALLED, rules.RECOVERED]),
    ("unknown type kept, no stage", [ev("roomdrop", END), ev("room-created", END - 5)], [END + 10**7],
     "not_applicable", None, []),
]


@pytest.mark.parametrize("name, items, sweeps, sla_state, deadline, kinds", CASES, ids=[c[0] for c in CASES])
def test_sla_table(name: str, items: list, sweeps: list[int], sla_state: str, deadline: int | None,
                   kinds: list[str]) -> None:
    state, alerts = run(items + sweeps)
    assert state["sla_state"] == sla_state
    assert state["sla_deadline"] == deadline
    assert [a["kind"] for a in alerts] == kinds
    for a in alerts:
        assert a["alert_id"] == rules.alert_id(KEY, a["kind"])
        assert a["deadline"] == deadline
        assert a["detected_at"] > deadline  # raised by a "now" past the deadline, never before it
        if a["kind"] == rules.STALLED:
            assert a["overdue_s"] is None
        else:
            assert a["overdue_s"] == max(0, state["transcoded_at"] - deadline) / 1000
    if rules.STALLED in kinds:
        assert state["stalled_at"] == deadline


def test_state_fields_and_latencies() -> None:
    state = fold([ev("roomdrop", END), ev("recording", END + 30_000), ev("transcoded", END + 90_000),
                  ev("file-transfer", END + 120_000), ev("chatdata", END + 5_000), ev("other", END)])
    assert (state["ended_at"], state["recording_at"], state["transcoded_at"], state["delivered_at"],
            state["chat_at"]) == (END, END + 30_000, END + 90_000, END + 120_000, END + 5_000)
    assert (state["recording_latency_s"], state["transcode_latency_s"], state["delivery_latency_s"],
            state["chat_latency_s"]) == (30.0, 90.0, 120.0, 5.0)
    assert (state["recording_files"], state["transcoded_files"], state["delivered_files"],
            state["chat_files"]) == (1, 1, 2, 1)
    assert state["version"] == 6 and state["event_ids"] == sorted(state["event_ids"])
    assert state["last_event_at"] == END + 120_000
    # the state is a SessionState: it travels through the Avro contract unchanged
    assert default_codec().decode(default_codec().encode("SessionState", state)) == state
    assert tuple(state) == rules.STATE_FIELDS  # derive writes the fields out one by one: none forgotten


def test_trans_date_missing_falls_back_to_received_at() -> None:
    state = fold([ev("recording", None, received=REC)])
    assert state["recording_at"] == REC and state["sla_deadline"] == REC + SLA_MS


def test_duplicate_changes_nothing() -> None:
    e = ev("recording", REC)
    once = fold([e])
    assert rules.merge(once, e, SLA_S) == once
    assert rules.step(once, e, SLA_S) == (once, [])


def test_version_grows_with_the_stall() -> None:
    state = fold([ev("recording", REC)])
    stalled, alerts = rules.sweep_step(state, REC + SLA_MS + 1, SLA_S)
    assert stalled["version"] == state["version"] + 1 and len(alerts) == 1
    assert rules.sweep_step(stalled, REC + SLA_MS + 10, SLA_S) == (stalled, [])


def test_judge() -> None:
    state = fold([ev("roomdrop", END), ev("recording", REC)])
    assert rules.judge(state, END + SLA_MS) == []
    assert rules.judge(state, END + SLA_MS + 1) == [rules.STALL]
    assert rules.judge(rules.apply_stall(state, SLA_S), END + 10**9) == []
    assert rules.judge(None, END) == []
    assert rules.judge(fold([ev("roomdrop", END)]), END + 10**9) == []


def test_expired() -> None:
    day = 86400
    met = fold([ev("roomdrop", END), ev("recording", REC), ev("transcoded", REC + 10)])
    assert not rules.expired(met, met["last_event_at"] + day * 1000 - 1, day)
    assert rules.expired(met, met["last_event_at"] + day * 1000, day)
    pending = fold([ev("recording", REC)])
    assert not rules.expired(pending, REC + 10**12, day)  # waits for its verdict first
    breached = rules.apply_stall(pending, SLA_S)
    assert not rules.expired(breached, REC + SLA_MS + day * 1000 - 1, day)  # counted from the stall
    assert rules.expired(breached, REC + SLA_MS + day * 1000, day)


def test_avro_alert() -> None:
    _, alerts = run([ev("recording", REC), REC + SLA_MS + 1, ev("transcoded", REC + SLA_MS + 2500)])
    codec = default_codec()
    assert [codec.decode(codec.encode("SlaAlert", a)) for a in alerts] == alerts
    assert alerts[1]["overdue_s"] == 2.5


@given(st.lists(st.tuples(st.sampled_from(["roomdrop", "recording", "transcoded", "chatdata"]),
                          st.integers(-(2**63), 2**63 - 1), st.integers(0, 2**63 - 1)), min_size=1, max_size=4),
       st.floats(0, 10**9))
def test_every_state_the_rules_accept_is_a_snapshot_avro_can_hold(timed: list, sla_s: float) -> None:
    """The processor encodes a session's snapshot only when it publishes it, after the event was applied, so
    the rules must refuse (ValueError, and the processor dead-letters the event) what SessionState cannot
    hold: a deadline past Avro's long. Times anywhere in the long's range, as the log's records may carry."""
    codec = default_codec()
    parts: dict[str, dict | None] = {t: None for t in rules.TABLES}
    for type_, trans, received in timed:
        try:
            change = rules.on_event(parts, ev(type_, trans, received), sla_s)
        except ValueError as exc:
            assert "sla_deadline" in str(exc) and "Avro long" in str(exc)
            continue
        parts.update(change.writes)
        if change.after is not None:
            assert codec.decode(codec.encode("SessionState", change.after)) == change.after


def test_a_deadline_past_avros_long_is_refused() -> None:
    with pytest.raises(ValueError, match="sla_deadline .* SessionState cannot hold"):
        fold([ev("recording", 2**63 - 1000)])
    assert fold([ev("roomdrop", 2**63 - 1000)])["sla_deadline"] is None  # nothing expected: no deadline


# -- generated sessions ----------------------------------------------------------------------------

TYPES = ["roomdrop", "recording", "transcoded", "file-transfer", "chatdata", "custom-type"]
KINDS = ["recording", "transcoded", "chatdata", "transferred", "odd"]


@st.composite
def sessions(draw) -> list[dict]:
    """A session's distinct events (times in a window a few SLAs wide)."""
    n = draw(st.integers(1, 8))
    out = []
    for i in range(n):
        type_ = draw(st.sampled_from(TYPES))
        trans = draw(st.one_of(st.none(), st.integers(0, 400_000)))
        received = draw(st.integers(0, 400_000))
        files = tuple(draw(st.lists(st.sampled_from(KINDS), max_size=3)))
        room = draw(st.sampled_from([None, "r1", "r2"]))
        out.append(ev(type_, trans, received, files, room, event_id=f"id{i}"))
    return out


@st.composite
def deliveries(draw) -> tuple[list[dict], list[dict]]:
    """A session and the same events delivered in another order, some more than once."""
    events = draw(sessions())
    extra = draw(st.lists(st.sampled_from(events), max_size=6))
    shuffled = draw(st.permutations(events + extra))
    return events, list(shuffled)


@given(deliveries())
def test_merge_is_order_and_duplication_independent(d) -> None:
    events, delivered = d
    assert fold(delivered) == fold(events)


@given(deliveries())
def test_parts_by_table_combine_to_the_merged_state(d) -> None:
    events, delivered = d
    parts: dict[str, dict | None] = {t: None for t in rules.TABLES}
    for e in delivered:
        t = rules.table_of(e["type"])
        parts[t] = rules.absorb(parts[t], e)
    assert rules.combine(parts, SLA_S) == fold(events)


@st.composite
def trajectories(draw) -> list:
    """Events delivered in any order (with duplicates), stall commands at any time in between."""
    _, delivered = draw(deliveries())
    items: list = []
    for e in delivered:
        items += draw(st.lists(st.integers(0, 600_000), max_size=2))
        items.append(e)
    items += draw(st.lists(st.integers(0, 600_000), max_size=2))
    return items


@given(trajectories())
def test_table_transitions_equal_the_whole_state_rules(items: list) -> None:
    parts: dict[str, dict | None] = {t: None for t in rules.TABLES}
    state, alerts = None, []
    for item in items:
        if isinstance(item, int):
            change = rules.on_command(parts, rules.STALL, item, SLA_S, retention_s=10**9)
            if state is not None:
                state, raised = rules.sweep_step(state, item, SLA_S)
                alerts += raised
        else:
            change = rules.on_event(parts, item, SLA_S)
            state, raised = rules.step(state, item, SLA_S)
            alerts += raised
        assert change.before == (None if all(p is None for p in parts.values()) else rules.combine(parts, SLA_S))
        parts.update(change.writes)
        assert change.after == state == rules.combine(parts, SLA_S)
        assert change.alerts == raised if state is not None else True
        assert set(change.writes) <= set(rules.TABLES)


@given(trajectories())
def test_at_most_one_alert_of_each_kind(items: list) -> None:
    state, alerts = run(items)
    kinds = [a["kind"] for a in alerts]
    assert kinds.count(rules.STALLED) <= 1 and kinds.count(rules.RECOVERED) <= 1
    if rules.RECOVERED in kinds:
        assert kinds.index(rules.STALLED) < kinds.index(rules.RECOVERED)
        recovered = alerts[kinds.index(rules.RECOVERED)]
        # judged against the deadline as it stood when raised (a later roomdrop may move it), never negative
        assert recovered["overdue_s"] >= 0
        assert recovered["deadline"] == state["stalled_at"]
    assert (rules.STALLED in kinds) == (state["stalled_at"] is not None)
    assert state["sla_state"] in rules.SLA_STATES
    if state["sla_state"] == "breached":
        assert kinds == [rules.STALLED]


@given(trajectories())
def test_met_means_no_stall_raised_once_the_composite_is_known(items: list) -> None:
    """Met: the composite's trans_date is at or before the deadline. Once such a composite is in the state,
    no step raises a stall, however late it was delivered or whatever the watch says afterwards; and no
    alert ever carries a negative overdue."""
    state, composite_known = None, False
    for item in items:
        if isinstance(item, int):
            if state is None:
                continue
            state, raised = rules.sweep_step(state, item, SLA_S)
        else:
            state, raised = rules.step(state, item, SLA_S)
        if composite_known:
            assert rules.STALLED not in [a["kind"] for a in raised]
        assert all(a["overdue_s"] is None or a["overdue_s"] >= 0 for a in raised)
        composite_known = composite_known or state["sla_state"] == "met"
    assume(state is not None and state["sla_state"] == "met")
    assert state["transcoded_at"] is not None
    assert state["sla_deadline"] is None or state["transcoded_at"] <= state["sla_deadline"]


@given(sessions(), st.data())
def test_replay_at_log_time_equals_live_at_wall_time(events: list[dict], data) -> None:
    """Live: the watch looks at every moment (wall time) between deliveries. Replay at full speed: the
    watch looks now and then, at the log's own time: the newest receive time processed from the partition,
    which other sessions' records move anywhere between this session's deliveries. Same result."""
    log = sorted(events, key=lambda e: (e["received_at"], e["event_id"]))
    end = log[-1]["received_at"] + 10 * SLA_MS
    live: list = []
    for e in log:
        live += [e["received_at"] - 1, e]  # the last moment before each delivery
    live.append(end)
    replay: list = []
    for e, following in zip(log, [x["received_at"] for x in log[1:]] + [end]):
        replay.append(e)
        replay += sorted(data.draw(st.lists(st.integers(e["received_at"], following), max_size=2)))
    replay.append(end)  # caught up: the wall clock
    (replayed, replay_alerts), (lived, live_alerts) = run(replay), run(live)
    assert replayed == lived
    # the same alerts; only when each was raised (detected_at: the "now" that raised it) may differ
    without_time = lambda alerts: [{k: v for k, v in a.items() if k != "detected_at"} for a in alerts]  # noqa: E731
    assert without_time(replay_alerts) == without_time(live_alerts)


@given(sessions())
def test_composite_received_within_the_sla_is_never_alerted(events: list[dict]) -> None:
    """However a replay interleaves its log-time sweeps: a composite received before every deadline the
    session ever had means no alert."""
    log = sorted(events, key=lambda e: (e["received_at"], e["event_id"]))
    state = None
    deadlines = []
    for e in log:
        state = rules.merge(state, e, SLA_S)
        if state["sla_deadline"] is not None:
            deadlines.append(state["sla_deadline"])
    composite = [e["received_at"] for e in log if e["type"] == "transcoded"]
    if not composite or not deadlines or min(composite) >= min(deadlines):
        return
    items: list = []
    for e in log:
        items += [e, e["received_at"]]
    _, alerts = run(items + [log[-1]["received_at"] + 100 * SLA_MS])
    assert alerts == []


@given(trajectories(), st.integers(0, 10**7), st.sampled_from([1.0, 60.0, 86400.0]))
def test_retention(items: list, now: int, retention_s: float) -> None:
    state, _ = run(items)
    parts: dict[str, dict | None] = {t: None for t in rules.TABLES}
    for item in items:
        change = (rules.on_command(parts, rules.STALL, item, SLA_S, retention_s) if isinstance(item, int)
                  else rules.on_event(parts, item, SLA_S))
        parts.update(change.writes)
    change = rules.on_command(parts, rules.EXPIRE, now, SLA_S, retention_s)
    gone = state["sla_state"] != "pending" and rules.last_activity(state) + retention_s * 1000 <= now
    assert rules.expired(state, now, retention_s) == gone
    if gone:
        assert change.after is None and change.before == state and change.alerts == []
        assert all(change.writes[t] is None for t, p in parts.items() if p is not None)
    else:
        assert change.writes == {} and change.after == state


# -- the watch -------------------------------------------------------------------------------------

class FakeWall:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_partition_clock() -> None:
    wall = FakeWall(5000.0)
    clock = PartitionClock(wall)
    # nothing processed here, group behind the end: unknown; at the end (just taken over): the wall
    assert clock.now_ms(0, highwater=10, committed=4) is None
    assert clock.now_ms(0, highwater=None, committed=4) is None
    assert clock.now_ms(0, highwater=10, committed=10) == 5_000_000
    assert clock.now_ms(1, highwater=0, committed=None) == 5_000_000  # an empty partition
    # behind: the log's own time
    clock.saw(0, 1_000, offset=4)
    clock.saw(0, 900, offset=5)  # an older receive time does not move the clock back
    assert clock.now_ms(0, highwater=10, committed=4) == 1_000
    clock.saw(0, None, offset=9)  # an unreadable record still moves the position
    assert clock.now_ms(0, highwater=10) == 5_000_000
    assert clock.now_ms(0, highwater=11) == 1_000
    clock.forget([0])
    assert clock.now_ms(0, highwater=11, committed=3) is None


def test_resend() -> None:
    wall = FakeWall(0.0)
    resend = Resend(wall, after_s=10)
    assert resend.due("k", "stall") and not resend.due("k", "stall") and resend.due("k", "expire")
    wall.t = 10.0
    resend.prune()
    assert resend.due("k", "stall")


def test_sweep_judges_only_assigned_partitions_at_their_own_time() -> None:
    states = {}
    for i in range(40):
        conf = f"c{i}"
        states[f"{APP}/{conf}"] = rules.merge(None, {**ev("recording", REC), "conf_num": conf}, SLA_S)
    partitions = 4
    wall = FakeWall((REC + 10**6) / 1000)
    clock = PartitionClock(wall)
    clock.saw(1, REC + SLA_MS, offset=0)  # partition 1 is behind, its log at the deadline: still in time
    clock.saw(2, REC + SLA_MS + 1, offset=0)  # partition 2 is behind, its log just past the deadline
    hw = {0: 5, 1: 5, 2: 5, 3: 7}
    committed = {0: 5, 3: 2}  # partition 0 caught up (just taken over); 3 behind, nothing processed

    def indexed() -> DueIndex:
        index = DueIndex()
        for k, st_ in states.items():
            index.set(k, partition_of(k, partitions), next_due(st_, 86400.0))
        return index

    index = indexed()
    due = sweep(index, states.get, {0, 1, 2, 3}, clock, 86400.0, hw.get, committed.get)
    by_partition = {partition_of(k, partitions) for k, _, _ in due}
    assert by_partition == {0, 2}
    assert all(op == "stall" for _, op, _ in due)
    assert {now for k, _, now in due if partition_of(k, partitions) == 0} == {REC + 10**6}
    assert {now for k, _, now in due if partition_of(k, partitions) == 2} == {REC + SLA_MS + 1}
    assert len(index) == len(states)  # every session stays indexed
    # not applied yet: found again next time (the resend memo keeps the command from flooding)
    assert sorted(sweep(index, states.get, {0, 1, 2, 3}, clock, 86400.0, hw.get, committed.get)) == sorted(due)
    # applied by the agent (which sets the index): nothing more, until the expiry
    for k, _, now in due:
        states[k] = rules.sweep_step(states[k], now, SLA_S)[0]
        index.set(k, partition_of(k, partitions), next_due(states[k], 86400.0))
    assert sweep(index, states.get, {0, 1, 2, 3}, clock, 86400.0, hw.get, committed.get) == []
    wall.t += 2 * 86400
    expiring = sweep(index, states.get, {0}, clock, 86400.0, hw.get, committed.get)
    assert expiring and {op for _, op, _ in expiring} == {"expire"}
    assert {partition_of(k, partitions) for k, _, _ in expiring} == {0}
    only0 = sweep(indexed(), states.get, {0}, clock, 86400.0, hw.get, committed.get)
    assert {partition_of(k, partitions) for k, _, _ in only0} == {0}


def test_due_index() -> None:
    index = DueIndex()
    index.set("a", 0, 10_000)
    index.set("b", 0, 5_000)
    index.set("a", 0, 20_000)  # moved: the old entry is gone
    index.set("c", 1, 1_000)
    index.set("d", 0, None)
    assert len(index) == 3
    assert index.pop_due(0, 15_000) == ["b"]
    assert index.pop_due(0, 15_000) == []
    assert index.pop_due(0, 20_000) == ["a"]
    index.set("c", 1, None)
    assert index.pop_due(1, 100_000) == [] and len(index) == 0
    # whole seconds: one due later in the second taken is taken early (the sweep re-judges and sets it again)
    index.set("e", 0, 30_999)
    index.set("f", 0, 31_000)
    assert index.pop_due(0, 29_999) == [] and index.pop_due(0, 30_000) == ["e"] and len(index) == 1
    index.set("e", 0, 30_999)  # set again by the sweep: taken again at its second, never lost
    assert index.pop_due(0, 31_000) == ["e", "f"] and len(index) == 0


@given(trajectories(), st.sampled_from([1.0, 86400.0]))
def test_next_due_is_when_decide_first_says_something(items: list, retention_s: float) -> None:
    state, _ = run(items)
    due = next_due(state, retention_s)
    assert due is not None
    assert decide(state, due - 1, retention_s) is None
    assert decide(state, due, retention_s) is not None


def test_decide() -> None:
    pending = fold([ev("recording", REC)])
    assert decide(pending, REC, 10.0) is None
    assert decide(pending, REC + SLA_MS + 1, 10.0) == "stall"
    met = fold([ev("recording", REC), ev("transcoded", REC + 5)])
    assert decide(met, REC + 5 + 10_000, 10.0) == "expire"
    assert decide(None, REC, 10.0) is None


def test_partition_of_matches_kafka_default_partitioner() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    rng = random.Random(7)
    for _ in range(200):
        key = f"app{rng.randint(0, 9)}/{rng.randint(0, 10**9)}"
        assert partition_of(key, 8) == DefaultPartitioner()(key.encode(), list(range(8)), list(range(8)))
