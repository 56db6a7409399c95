"""The traffic generator of ``enx-streams simulate`` (pure), and its HTTP client against a real local server."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
from collections import Counter, defaultdict

import pytest
from aiohttp import web

from streams import simulate
from streams.simulate import SLA_S, Delivery, SimulationError, generate, post_plan, redact_url, run

NOW_S = 1_736_942_400.0  # 2025-01-15 12:00:00 UTC


def plan(**kw):
    args = dict(sessions=200, seed=11, duplicates=0.1, out_of_order=0.2, stalled=0.1, now_s=NOW_S)
    args.update(kw)
    return generate(**args)


def trans_date_seconds(value) -> float:
    """What an EnableX trans_date means, in Unix seconds (the forms the generator writes)."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()):
        n = int(value)
        return n / 1000 if n > 10**11 else float(n)
    text = value.replace("Z", "+00:00").replace(" ", "T")
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


def valid(p) -> list[tuple[dict, dict]]:
    return [(json.loads(d.body), d.meta) for d in p.deliveries if not d.meta["invalid"]]


def test_same_seed_same_bytes_other_seed_other_traffic() -> None:
    a, b, c = plan(), plan(), plan(seed=12)
    assert [d.body for d in a.deliveries] == [d.body for d in b.deliveries]
    assert a.expected == b.expected
    assert [d.body for d in a.deliveries] != [d.body for d in c.deliveries]


def test_every_valid_body_is_real_json_with_the_session_fields() -> None:
    p = plan(invalid=0.05)
    for d in p.deliveries:
        if d.meta["invalid"]:
            continue
        body = json.loads(d.body.decode("utf-8"))  # real JSON, no typographic quotes
        assert "\u201c" not in d.body.decode("utf-8")
        assert body["type"] in simulate.TYPES
        for key in ("app_id", "room_id", "conf_num", "trans_date"):
            assert isinstance(body[key], (str, int)) and str(body[key])


def test_both_shapes_all_types_and_every_trans_date_form() -> None:
    p = plan()
    bodies = valid(p)
    assert {m["type"] for _, m in bodies} == set(simulate.TYPES)
    assert p.expected.by_shape == {"classic": 100, "objects": 100}
    assert {m["trans_date_format"] for _, m in bodies} == {"s", "s_str", "ms", "ms_str", "datetime", "iso8601"}

    classic_rec = [b for b, m in bodies if m["shape"] == "classic" and m["type"] == "recording"]
    objects_rec = [b for b, m in bodies if m["shape"] == "objects" and m["type"] == "recording"]
    assert classic_rec and all(isinstance(u, str) for b in classic_rec for u in b["recording"])
    assert objects_rec and all(set(u) == {"url"} for b in objects_rec for u in b["recording"])

    classic_tc = [b for b, m in bodies if m["shape"] == "classic" and m["type"] == "transcoded"]
    assert classic_tc and all(isinstance(b["recording"], str) and b["stage"].isdigit() and b["file_size"].isdigit()
                              for b in classic_tc)
    objects_tc = [b for b, m in bodies if m["shape"] == "objects" and m["type"] == "transcoded"]
    assert objects_tc and all(b["transcoded"][0]["url"].startswith("https://") for b in objects_tc)
    assert all(m["shape"] == "objects" for _, m in bodies if m["type"] == "chatdata")


def test_file_transfers_go_to_every_destination_kind() -> None:
    p = plan()
    transfers = [b for b, m in valid(p) if m["type"] == "file-transfer" and not m["duplicate"]]
    kinds = Counter(b["destination"]["name"] for b in transfers)
    assert set(kinds) == set(simulate.DESTINATIONS)
    assert dict(kinds) == p.expected.by_destination
    for b in transfers:
        dest = b["destination"]
        assert b["files"] and all(f["url"] for f in b["files"])
        if dest["name"] == "awss3":
            assert dest["account"] and not dest["host"]
        else:
            assert dest["host"] and b["files"][0]["url"].startswith(f"{dest['name']}://")


def test_shares_of_duplicates_stalled_and_out_of_order_are_honoured() -> None:
    p = plan(sessions=1000, duplicates=0.1, out_of_order=0.2, stalled=0.1)
    e = p.expected
    assert e.deliveries == e.events + e.duplicates + e.invalid
    assert 0.07 * e.events <= e.duplicates <= 0.13 * e.events
    assert e.stalled_sessions == round(0.1 * e.recorded_sessions)
    assert e.late_sessions == round(0.05 * e.recorded_sessions)
    assert 0.15 * e.sessions <= e.out_of_order_sessions <= 0.2 * e.sessions  # not the lone roomdrops
    dups = [d for d in p.deliveries if d.meta["duplicate"]]
    bodies = {d.body for d in p.deliveries if not d.meta["duplicate"]}
    assert len(dups) == e.duplicates and all(d.body in bodies for d in dups)
    assert len(bodies) == e.events  # every distinct event is a distinct body
    assert Counter(m["type"] for _, m in valid(p) if not m["duplicate"]) == Counter(
        {t: n for t, n in e.by_type.items() if n})


def test_no_duplicates_no_stalls_when_asked_for_none() -> None:
    e = plan(duplicates=0.0, stalled=0.0, out_of_order=0.0).expected
    assert e.duplicates == e.stalled_sessions == e.late_sessions == e.out_of_order_sessions == e.invalid == 0
    assert e.by_type["transcoded"] >= e.recorded_sessions


def _sessions(p) -> dict[str, list[tuple[dict, dict]]]:
    out: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    for body, meta in valid(p):
        if not meta["duplicate"]:
            out[meta["session"]].append((body, meta))
    return out


def test_timing_by_event_time_matches_each_sessions_fate() -> None:
    p = plan(sessions=400)
    fates: Counter[str] = Counter()
    for key, events in _sessions(p).items():
        types = {m["type"] for _, m in events}
        times = {m["type"]: trans_date_seconds(b["trans_date"]) for b, m in events}
        fate = events[0][1]["fate"]
        fates[fate] += 1
        assert "roomdrop" in types
        end = times["roomdrop"]
        assert all(trans_date_seconds(b["trans_date"]) <= NOW_S + 1 for b, _ in events), "no event in the future"
        if fate == "stalled":
            assert "recording" in types and "transcoded" not in types
            assert end + SLA_S < NOW_S - 5 * 60, "a stalled session's deadline has passed when it is posted"
        elif "transcoded" in types:
            latency = min(trans_date_seconds(b["trans_date"]) for b, m in events if m["type"] == "transcoded") - end
            if fate == "late":
                assert SLA_S < latency <= 61 * 60
            else:
                assert 10 * 60 <= latency < SLA_S
                assert end + SLA_S >= NOW_S + 5 * 60 - 1, "an on-time session's deadline is still ahead"
        if "file-transfer" in types:
            assert times["file-transfer"] >= times["transcoded"]
    assert fates["stalled"] == p.expected.stalled_sessions and fates["late"] == p.expected.late_sessions


def test_out_of_order_sessions_are_delivered_out_of_event_order() -> None:
    p = plan(sessions=300, duplicates=0.0)
    for key, events in _sessions(p).items():
        order = [m["event_order"] for _, m in events]  # send order of the session's events
        if events[0][1]["out_of_order"]:
            assert order != sorted(order)
        else:
            assert order == sorted(order)


def test_spread_anchors_later_sessions_later() -> None:
    p = plan(sessions=100, stalled=0.0, spread_s=3600)
    ends = {k: trans_date_seconds(ev[0][0]["trans_date"]) for k, ev in _sessions(p).items()
            if ev[0][1]["type"] == "roomdrop"}
    assert max(ends.values()) > NOW_S  # the last sessions are anchored near the end of the run


def test_invalid_bodies_are_not_json_objects_with_a_type() -> None:
    p = plan(invalid=0.1)
    bad = [d for d in p.deliveries if d.meta["invalid"]]
    assert len(bad) == p.expected.invalid > 0
    for d in bad:
        try:
            body = json.loads(d.body)
        except ValueError:
            continue
        assert not isinstance(body, dict) or "type" not in body


def test_bad_shares_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicates"):
        plan(duplicates=1.5)
    with pytest.raises(SimulationError, match="--stalled"):
        run("http://localhost:1/webhooks/enablex", 1, 10, 0, 0, 2.0, 1)
    with pytest.raises(SimulationError, match="--rate"):
        run("http://localhost:1/webhooks/enablex", 1, 0, 0, 0, 0, 1)


def test_redact_url_hides_tokens_and_passwords() -> None:
    assert redact_url("http://h:8080/webhooks/enablex/s3cret") == "http://h:8080/webhooks/enablex/***"
    assert redact_url("http://u:pw@h/webhooks/enablex") == "http://u:***@h/webhooks/enablex"
    assert redact_url("http://h/webhooks/enablex") == "http://h/webhooks/enablex"


# -- the client, against a real aiohttp server on a free port -----------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_posts_every_body_in_order_and_counts_statuses() -> None:
    received: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        received.append(body)
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        if not isinstance(event, dict) or "type" not in event:
            return web.json_response({"error": "not an EnableX event"}, status=400)
        return web.json_response({"status": "accepted"}, status=202)

    app = web.Application()
    app.router.add_post("/webhooks/enablex", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        p = plan(sessions=30, invalid=0.1)
        outcome = await post_plan(f"http://127.0.0.1:{port}/webhooks/enablex", p.deliveries, rate=2000,
                                  concurrency=1)
    finally:
        await runner.cleanup()
    assert received == [d.body for d in p.deliveries]  # concurrency 1: exactly the plan's order
    assert outcome.statuses == Counter({202: p.expected.deliveries - p.expected.invalid, 400: p.expected.invalid})
    text = simulate.summarise("http://127.0.0.1/webhooks/enablex", 11, p.expected, outcome)
    assert f"202: {p.expected.deliveries - p.expected.invalid}" in text and "meant to stall" in text


async def test_unreachable_ingest_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulate, "BACKOFF_S", (0.01, 0.01, 0.01))
    port = _free_port()  # nothing listens there
    deliveries = [Delivery(b'{"type": "roomdrop"}', {})] * 3
    with pytest.raises(SimulationError, match=r"enx-streams dev") as info:
        await post_plan(f"http://127.0.0.1:{port}/webhooks/enablex/tok3n", deliveries, rate=100)
    assert "tok3n" not in str(info.value)


def test_run_end_to_end_against_a_local_server_in_a_thread() -> None:
    import threading

    port = _free_port()
    statuses: list[int] = []
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        statuses.append(202)
        return web.json_response({"status": "accepted"}, status=202)

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/webhooks/enablex", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    def thread() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(serve())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    t = threading.Thread(target=thread, daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        summary = run(f"http://127.0.0.1:{port}/webhooks/enablex", sessions=10, rate=1000, duplicates=0.2,
                      out_of_order=0.2, stalled=0.2, seed=3)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
    assert "sessions                  10" in summary
    assert f"202: {len(statuses)}" in summary and len(statuses) > 10
