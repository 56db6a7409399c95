"""Ingest's watermarks and the SLA watch's "now" from them (streams/watermark.py, streams/ingest/watermark.py,
streams/processor/watermarks.py, watch.PartitionClock): the record, who holds the bound, the leases, and,
over generated timelines of ingest instances delivering and spooling, that the bound never passes a webhook
that is not in the log yet, and that a session whose composite waits in a spool is never stalled.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from streams import watermark
from streams.avro import default_codec
from streams.events import Rejection, normalise
from streams.ingest.watermark import InFlight, instance_id, safe_at
from streams.processor import rules
from streams.processor.watch import PartitionClock
from streams.processor.watermarks import ConnectedTime, Held, bound, bounded, hold, holds
from streams.sink.rows import project
from streams.watermark import Mark
from tests.unit.test_rules import FakeWall

LEASE_MS = 60_000


# -- the record ------------------------------------------------------------------------------------------

def test_a_watermark_is_a_webhook_event_every_reader_decodes_and_today_s_readers_skip() -> None:
    codec = default_codec()
    value = codec.encode("WebhookEvent", watermark.record("ingest-a", 3, 1_700_000_000_123))
    decoded = codec.decode(value)
    assert codec.record_name(value) == "WebhookEvent"
    assert watermark.is_mark(decoded) and decoded["conf_num"] is None and decoded["app_id"] == ""
    assert watermark.parse(decoded) == Mark("ingest-a", 1_700_000_000_123, leaving=False)
    leaving = codec.decode(codec.encode("WebhookEvent", watermark.record("ingest-a", 3, 5, leaving=True)))
    assert watermark.parse(leaving) == Mark("ingest-a", 5, leaving=True)
    # one id per instance, partition, time and kind: never deduplicated into each other
    ids = {watermark.record("i", p, t, lv)["event_id"] for p in range(3) for t in (1, 2) for lv in (False, True)}
    assert len(ids) == 12
    # the sink writes no row for it (webhook_events, and so events_per_minute, never see it)
    assert project("webhooks", "WebhookEvent", decoded) == {}
    with pytest.raises(ValueError):
        watermark.record("", 0, 1)


def test_a_watermark_without_an_instance_vouches_for_nothing() -> None:
    forged = {**watermark.record("x", 0, 10), "raw": "{}", "source": None}
    with pytest.raises(ValueError, match="instance"):
        watermark.parse(forged)
    assert watermark.parse({**watermark.record("x", 0, 10), "raw": "not json"}) == Mark("x", 10)  # from source
    assert watermark.parse({"type": "recording", "received_at": 1}) is None


@pytest.mark.parametrize("kind", ["_watermark", "_anything", "_"])
def test_ingest_refuses_a_posted_body_of_a_reserved_type(kind: str) -> None:
    body = f'{{"type": "{kind}", "app_id": "a", "conf_num": "c"}}'.encode()
    with pytest.raises(Rejection) as caught:
        normalise(body, 1)
    assert caught.value.code == "reserved_type"
    assert normalise(b'{"type": "new-type_", "app_id": "a"}', 1)["type"] == "new-type_"  # others: kept


# -- ingest's side -----------------------------------------------------------------------------------------

def test_safe_at_never_passes_a_webhook_in_flight_nor_goes_back() -> None:
    assert safe_at(100, None, None) == 100
    assert safe_at(100, 40, None) == 40
    assert safe_at(100, 140, None) == 100
    assert safe_at(100, 40, 70) == 70  # not back behind the last one written
    assert safe_at(50, None, 70) == 70  # a clock stepped back


def test_in_flight_is_a_multiset() -> None:
    f = InFlight()
    assert f.oldest() is None
    f.open(5), f.open(5), f.open(9)
    f.close(5)
    assert f.oldest() == 5
    f.close(5)
    assert f.oldest() == 9
    f.close(9)
    assert f.oldest() is None


def test_the_instance_id_lives_in_the_spool_directory(tmp_path: Path) -> None:
    first = instance_id(tmp_path / "spool")
    assert first.startswith("ingest-") and instance_id(tmp_path / "spool") == first
    assert instance_id(tmp_path / "other") != first


# -- who holds the bound -----------------------------------------------------------------------------------

def test_hold_keeps_the_newest_watermark_and_leaving_wins_a_tie() -> None:
    h = hold(None, Mark("a", 10), heard=1.0)
    assert h == Held(10, False, 1.0)
    assert hold(h, Mark("a", 5), heard=2.0) == Held(10, False, 2.0)  # older: only heard again
    assert hold(h, Mark("a", 10, leaving=True), heard=2.0) == Held(10, True, 2.0)
    assert hold(Held(10, True, 2.0), Mark("a", 10), heard=3.0) == Held(10, True, 3.0)
    assert hold(Held(10, True, 2.0), Mark("a", 11), heard=3.0) == Held(11, False, 3.0)  # back again


@pytest.mark.parametrize("held, connected, expected", [
    ({"a": Held(100, False, 0.0)}, None, 100),  # one instance: its watermark
    ({"a": Held(100, False, 0.0), "b": Held(150, False, 0.0)}, None, 100),  # the oldest of those that hold
    ({"a": Held(100, True, 0.0), "b": Held(150, False, 0.0)}, None, 150),  # a left: not waited for
    ({"a": Held(100, True, 0.0)}, None, None),  # all left: no bound
    ({"a": Held(100, False, 0.0), "b": Held(100 + LEASE_MS, False, 0.0)}, None, 100),  # b passed it by the lease
    ({"a": Held(100, False, 0.0), "b": Held(101 + LEASE_MS, False, 0.0)}, None, 101 + LEASE_MS),  # by more: gone
    ({"a": Held(100, False, 0.0), "b": Held(101 + LEASE_MS, True, 0.0)}, None, None),  # b's leaving still says so
    ({"a": Held(100, False, 0.0)}, 60.0, 100),  # caught up, silent for the lease of connected time: still held
    ({"a": Held(100, False, 0.0)}, 60.001, None),  # past it: gone
    ({"a": Held(100, False, 10.0), "b": Held(200, False, 70.5)}, 70.5, 200),  # only a is silent that long
])
def test_bound(held: dict, connected: float | None, expected: int | None) -> None:
    assert bound(held, LEASE_MS, connected) == expected
    assert expected == min((h.at_ms for n, h in held.items() if holds(n, held, LEASE_MS, connected)), default=None)


def test_bounded() -> None:
    assert bounded(None, 5) is None and bounded(7, None) == 7 and bounded(7, 5) == 5 and bounded(3, 5) == 3


def test_connected_time_runs_only_while_the_broker_answers() -> None:
    wall = FakeWall(0.0)
    c = ConnectedTime(wall)
    assert c.tick(True) == 0.0
    wall.t = 2.0
    assert c.tick(True) == 2.0
    wall.t = 5.0
    assert c.tick(False) == 2.0  # the interval that ended unanswered does not count
    wall.t = 600.0
    assert c.tick(True) == 2.0  # nor the outage
    wall.t = 602.0
    assert c.tick(True) == 4.0


# -- the partition's clock ---------------------------------------------------------------------------------

def test_without_watermarks_the_clock_is_today_s() -> None:
    wall = FakeWall(5000.0)
    clock = PartitionClock(wall)
    clock.saw(0, 1_000, offset=0)
    assert clock.now_ms(0, highwater=1) == 5_000_000 and clock.now_ms(0, highwater=2) == 1_000
    assert clock.bound(0) is None


def test_watermarks_hold_the_clock_while_an_instance_spools_and_a_broker_outage_never_lapses_it() -> None:
    wall = FakeWall(1000.0)
    clock = PartitionClock(wall, lease_s=60)
    clock.tick(True)
    clock.saw(0, 999_000, offset=0)
    clock.marked(0, Mark("a", 999_000))
    # caught up, the wall clock ahead: held at the watermark; behind: the log's time, held too
    assert clock.now_ms(0, highwater=1) == 999_000
    clock.saw(0, 999_500, offset=1)  # a webhook received after the watermark
    assert clock.now_ms(0, highwater=5) == 999_000
    # the broker away for ten minutes: the lease does not run
    wall.t = 1005.0
    clock.tick(False)
    wall.t = 1605.0
    clock.tick(False)
    assert clock.now_ms(0, highwater=2) == 999_000
    # it answers again: the lease runs; 60 s of it while ingest stays silent, then judged without it
    clock.tick(True)
    wall.t = 1664.0
    clock.tick(True)
    assert clock.now_ms(0, highwater=2) == 999_000
    wall.t = 1666.0
    clock.tick(True)
    assert clock.now_ms(0, highwater=2) == 1_666_000
    # behind, the connected lease is not for the worker to decide: the log has more to say
    assert clock.now_ms(0, highwater=9) == 999_000
    # the instance is back (its spool drained): its new watermark holds again
    clock.saw(0, 1_665_000, offset=2)
    clock.marked(0, Mark("a", 1_665_000))
    assert clock.now_ms(0, highwater=3) == 1_665_000
    clock.forget([0])
    assert clock.bound(0) is None


def test_a_clean_shutdown_releases_the_clock() -> None:
    wall = FakeWall(2000.0)
    clock = PartitionClock(wall)
    clock.saw(0, 1_000_000, offset=0)
    clock.marked(0, Mark("a", 1_000_000, leaving=True))
    assert clock.now_ms(0, highwater=1) == 2_000_000


# -- properties over generated ingest timelines ------------------------------------------------------------

SLA_S, SLA_MS = 10.0, 10_000  # shorter than the timelines, so deadlines pass in them


@st.composite
def timelines(draw: st.DrawFn) -> dict:
    """Two ingest instances over ``steps`` seconds: which seconds each cannot reach Kafka (it spools), and
    which webhooks each receives when. Both deliver at second 0: the watch knows an instance from its first
    watermark (one that starts spooling and never wrote one holds nothing: README, SLA semantics)."""
    steps = draw(st.integers(10, 60))
    out = {"steps": steps, "down": {}, "posts": {}}
    for name in ("a", "b"):
        start = draw(st.integers(1, steps))
        length = draw(st.integers(0, steps))
        out["down"][name] = range(start, min(steps, start + length))
        out["posts"][name] = sorted(draw(st.lists(st.integers(0, steps - 1), max_size=8)))
    return out


def the_log(timeline: dict) -> list[tuple[str, str, int]]:
    """What reaches one partition, in order: ``(kind, instance, time)`` with kind ``webhook`` or ``mark``.
    A webhook received while its instance spools waits in the spool until the instance is back, which drains
    it (in order) before it writes its next watermark; a watermark each second it delivers directly."""
    log: list[tuple[str, str, int]] = []
    spools: dict[str, list[int]] = {"a": [], "b": []}
    for t in range(timeline["steps"]):
        for name in ("a", "b"):
            down = t in timeline["down"][name]
            if not down and spools[name]:
                log += [("webhook", name, r) for r in spools[name]]
                spools[name] = []
            for r in (p for p in timeline["posts"][name] if p == t):
                if down:
                    spools[name].append(r * 1000)
                else:
                    log.append(("webhook", name, r * 1000))
            if not down:
                log.append(("mark", name, t * 1000))
    for name in ("a", "b"):  # whatever is left drains at the end
        log += [("webhook", name, r) for r in spools[name]]
    return log


def bounds_along(log: list[tuple[str, str, int]], lease_ms: int) -> list[int | None]:
    """The watermarks' bound after each record of the log (a replay's: only the log decides)."""
    held: dict[str, Held] = {}
    out = []
    for kind, name, at in log:
        if kind == "mark":
            held[name] = hold(held.get(name), Mark(name, at), 0.0)
        out.append(bound(held, lease_ms, None))
    return out


@given(timelines())
def test_the_bound_never_passes_a_webhook_not_yet_in_the_log(timeline: dict) -> None:
    """With a lease longer than any outage: nothing received before the bound is still to come."""
    log = the_log(timeline)
    for i, b in enumerate(bounds_along(log, lease_ms=10**9)):
        if b is None:
            continue
        later = [at for kind, _, at in log[i + 1:] if kind == "webhook"]
        assert all(at >= b for at in later), (i, b, later)


@given(timelines())
def test_past_the_lease_only_a_lapsed_instance_is_overtaken(timeline: dict) -> None:
    """With a short lease, a webhook still to come below the bound is one of an instance that another
    instance's watermarks had passed by more than the lease."""
    lease_ms = 5_000
    log = the_log(timeline)
    for i, b in enumerate(bounds_along(log, lease_ms)):
        if b is None:
            continue
        held: dict[str, Held] = {}
        for kind, name, at in log[:i + 1]:
            if kind == "mark":
                held[name] = hold(held.get(name), Mark(name, at), 0.0)
        for kind, name, at in log[i + 1:]:
            if kind == "webhook" and at < b:
                assert name in held and not holds(name, held, lease_ms, None)


@given(timelines(), st.integers(0, 40), st.integers(0, 10))
def test_a_composite_waiting_in_a_spool_is_never_stalled(timeline: dict, recorded_s: int, composite_s: int) -> None:
    """One session on the partition: its recording posted to ingest ``a`` at ``recorded_s``, its composite to
    ``b`` at ``composite_s``, within the SLA. However the two spool, the watch judging at the bound after
    every record (and the webhook's own judgement) raises no stall: met, no page."""
    steps = timeline["steps"]
    composite_s += recorded_s
    assume(composite_s < steps)
    assume((composite_s - recorded_s) * 1000 <= SLA_MS)
    log = the_log({**timeline, "posts": {"a": [recorded_s], "b": [composite_s]}})
    state, alerts, _ = watched(log, {"a": ("recording", recorded_s * 1000), "b": ("transcoded", composite_s * 1000)})
    assert state is not None and state["sla_state"] == "met" and alerts == []


def watched(log: list[tuple[str, str, int]], posted: dict[str, tuple[str, int]]) -> tuple[dict | None, list, int | None]:
    """One session's webhooks (``posted``: instance -> the type and trans_date of the one it was posted)
    through the rules as the processor judges them, the watch sweeping at the bound after every record: the
    final state, the alerts, the final bound."""
    held: dict[str, Held] = {}
    state, alerts = None, []
    for kind, name, at in log:
        if kind == "mark":
            held[name] = hold(held.get(name), Mark(name, at), 0.0)
        else:
            type_, trans = posted[name]
            event = {"event_id": f"{name}{at}", "type": type_, "app_id": "app", "conf_num": "c", "room_id": None,
                     "trans_date": trans, "received_at": at, "files": []}
            state, raised = rules.step(state, event, SLA_S, bound(held, 10**9, None))
            alerts += raised
        now = bound(held, 10**9, None)
        if state is not None and now is not None:
            state, raised = rules.sweep_step(state, now, SLA_S)
            alerts += raised
    return state, alerts, bound(held, 10**9, None)


@given(timelines(), st.integers(0, 40))
def test_a_lost_composite_is_stalled_exactly_once(timeline: dict, recorded_s: int) -> None:
    """The same with the composite lost (never posted): one stall, once the watermarks pass the deadline."""
    assume(recorded_s < timeline["steps"])
    log = the_log({**timeline, "posts": {"a": [recorded_s], "b": []}})
    _, alerts, final = watched(log, {"a": ("recording", recorded_s * 1000)})
    assume(final is not None and final > recorded_s * 1000 + SLA_MS)
    assert [a["kind"] for a in alerts] == [rules.STALLED]
    assert alerts[0]["detected_at"] > alerts[0]["deadline"] == recorded_s * 1000 + SLA_MS


@given(timelines())
def test_live_and_replay_read_the_same_now_from_the_watermarks(timeline: dict) -> None:
    """A live worker (caught up after every record, its wall clock ahead of the log, the broker answering) and
    a replay (far behind) have the same "now" at every record once a watermark was read."""
    log = the_log(timeline)
    wall = FakeWall(10**6)
    live, replay = PartitionClock(wall, lease_s=10**6), PartitionClock(wall, lease_s=10**6)
    live.tick(True)
    seen_mark = False
    for offset, (kind, name, at) in enumerate(log):
        for clock in (live, replay):
            clock.saw(0, at, offset)
            if kind == "mark":
                clock.marked(0, Mark(name, at))
        live.tick(True)
        seen_mark = seen_mark or kind == "mark"
        if seen_mark:
            assert live.now_ms(0, highwater=offset + 1) == replay.now_ms(0, highwater=len(log) + 1)
