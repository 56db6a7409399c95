"""What reconciliation found, in the processor's rules (issue 19 item 3): findings of EnableX's Server API
(ReconcileFinding) kept beside the webhooks' parts, overlaid where no webhook brought the same type.

A table of situations (an archived composite on time makes the session ``met`` with no page however late it
is found; one found after a page closes it as ``webhook_missing``; a session known only from the archive is
watched), then properties: the state is the same for any order and duplication of webhooks and findings, and
equals the webhooks' state overlaid with the findings'; a webhook takes a finding's place whenever it comes.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.avro import default_codec
from streams.processor import rules
from tests.unit.test_rules import APP, CONF, SLA_MS, SLA_S, ev, fold, sessions

REC = 1_000_000


def finding(type_: str, trans: int | None, found: int, urls: tuple[str, ...] = ("https://arch/f.mp4",),
            finding_id: str | None = None) -> dict:
    return {"finding_id": finding_id or f"f-{type_}", "kind": "webhook_missing", "app_id": APP, "conf_num": CONF,
            "room_id": "room", "missing_type": type_, "source": "cdr" if type_ == "roomdrop" else "archive",
            "trans_date": trans, "urls": [] if type_ == "roomdrop" else list(urls), "archive_id": "a1",
            "found_at": found}


def play(items: list) -> tuple[dict[str, dict | None], dict | None, list[dict]]:
    """Webhooks (dicts with event_id), findings (dicts with finding_id) and sweeps (ints) through the agent's
    transitions, as app.py applies them."""
    parts: dict[str, dict | None] = {t: None for t in rules.TABLES}
    state, alerts = None, []
    for item in items:
        if isinstance(item, int):
            change = rules.on_command(parts, rules.STALL, item, SLA_S, retention_s=10**9)
        elif "finding_id" in item:
            change = rules.on_finding(parts, item, SLA_S)
        else:
            change = rules.on_event(parts, item, SLA_S)
        parts.update(change.writes)
        state = change.after if change.after is not None or change.before is None else state
        alerts += change.alerts
        assert change.after == rules.combine(parts, SLA_S) or change.after is None
    return parts, state, alerts


def test_an_archived_composite_on_time_makes_the_session_met_with_no_page_however_late_it_is_found() -> None:
    _, state, alerts = play([ev("recording", REC), finding("transcoded", REC + 60_000, REC + SLA_MS + 500_000)])
    assert state["sla_state"] == "met" and state["reconciled"] == ["transcoded"]
    assert state["transcoded_at"] == REC + 60_000 and state["transcoded_files"] == 1
    assert alerts == []


def test_a_composite_found_after_the_page_closes_it_as_a_missing_webhook_not_a_late_job() -> None:
    _, state, alerts = play([ev("recording", REC), REC + SLA_MS + 1,
                             finding("transcoded", REC + 60_000, REC + SLA_MS + 300_000)])
    assert [a["kind"] for a in alerts] == [rules.STALLED, rules.RECOVERED]
    assert alerts[0]["cause"] is None
    assert alerts[1]["cause"] == rules.WEBHOOK_MISSING and alerts[1]["overdue_s"] == 0
    assert state["sla_state"] == "met"
    codec = default_codec()
    assert [codec.decode(codec.encode("SlaAlert", a)) for a in alerts] == alerts
    assert codec.decode(codec.encode("SessionState", state)) == state


def test_a_late_webhook_after_the_finding_takes_its_place_and_raises_nothing_more() -> None:
    _, found_first, alerts1 = play([ev("recording", REC, event_id="rec"), finding("transcoded", REC + 60_000, REC + 100),
                                    ev("transcoded", REC + 60_000, REC + 200, event_id="real")])
    assert found_first["reconciled"] == [] and found_first["transcoded_files"] == 1
    assert found_first["sla_state"] == "met" and alerts1 == []
    _, webhook_first, _ = play([ev("recording", REC, event_id="rec"), ev("transcoded", REC + 60_000, REC + 200, event_id="real"),
                                finding("transcoded", REC + 60_000, REC + 100)])
    assert webhook_first == found_first


def test_a_session_known_only_from_the_archive_is_watched_and_pages_when_its_composite_is_late() -> None:
    parts, state, alerts = play([finding("recording", REC, REC + 1000)])
    assert state["sla_state"] == "pending" and state["sla_deadline"] == REC + SLA_MS
    assert state["reconciled"] == ["recording"]
    _, state, alerts = play([finding("recording", REC, REC + 1000), REC + SLA_MS + 1])
    assert state["sla_state"] == "breached" and [a["kind"] for a in alerts] == [rules.STALLED]


def test_a_lost_roomdrop_found_in_the_cdr_anchors_the_deadline() -> None:
    _, state, _ = play([ev("recording", REC + 5000), finding("roomdrop", REC, REC + 9000)])
    assert state["ended_at"] == REC and state["sla_deadline"] == REC + SLA_MS
    assert state["reconciled"] == ["roomdrop"] and state["recording_latency_s"] == 5.0


def test_the_same_finding_twice_changes_nothing() -> None:
    f = finding("chatdata", REC, REC + 10)
    parts, _, _ = play([ev("roomdrop", REC), f])
    again = rules.on_finding(parts, f, SLA_S)
    assert not again.changed and again.writes == {} and again.alerts == []


def test_a_webhook_keeps_its_own_time_and_files_whatever_was_found() -> None:
    _, state, _ = play([ev("transcoded", REC + 10, files=("transcoded", "transcoded")),
                        finding("transcoded", REC, REC + 5, urls=("a", "b", "c"))])
    assert state["transcoded_at"] == REC + 10 and state["transcoded_files"] == 2 and state["reconciled"] == []


FOUND_TYPES = ["roomdrop", "recording", "transcoded", "chatdata"]


@st.composite
def with_findings(draw) -> tuple[list[dict], list[dict], list[dict]]:
    events = draw(sessions())
    found = [finding(t, draw(st.one_of(st.none(), st.integers(0, 400_000))), draw(st.integers(0, 400_000)),
                     urls=tuple(draw(st.lists(st.sampled_from(["u1", "u2"]), max_size=2))), finding_id=f"f{i}")
             for i, t in enumerate(draw(st.lists(st.sampled_from(FOUND_TYPES), max_size=4, unique=True)))]
    extra = draw(st.lists(st.sampled_from(events + found), max_size=4))
    return events, found, draw(st.permutations(events + found + extra))


@given(with_findings())
def test_state_is_the_webhooks_state_overlaid_with_the_findings_in_any_order(d) -> None:
    events, found, delivered = d
    parts, state, _ = play(delivered)
    real = fold(events)
    found_base = None
    for f in found:
        found_base = rules.absorb(found_base, rules.finding_event(f))
    expected = rules.overlay(None if real is None else rules.base_of(real), found_base)
    combined = rules.combine(parts, SLA_S)
    if expected is not None:  # the stall depends on when things arrived, not on the set: taken as it was judged
        expected["stalled_at"] = combined["stalled_at"]
    assert combined == rules.derive(expected, SLA_S)
    types_seen = {e["type"] for e in events}
    assert not set(state["reconciled"]) & types_seen  # a webhook always takes the finding's place
    assert state["reconciled"] == [t for t in FOUND_TYPES if t in state["reconciled"]]


@given(with_findings(), st.lists(st.integers(0, 600_000), max_size=3))
def test_overdue_is_never_negative_and_met_raises_no_page_after_the_composite_is_known(d, sweeps: list) -> None:
    _, _, delivered = d
    items: list = list(delivered)
    for i, now in enumerate(sweeps):
        items.insert(min(i * 2, len(items)), now)
    _, state, alerts = play(items)
    kinds = [a["kind"] for a in alerts]
    assert kinds.count(rules.STALLED) <= 1 and kinds.count(rules.RECOVERED) <= 1
    for a in alerts:
        assert a["overdue_s"] is None or a["overdue_s"] >= 0
    if state is not None and state["sla_state"] == "met" and rules.STALLED in kinds:
        assert rules.RECOVERED in kinds  # a page that went out is closed
