"""The "Transcode stalled" rule keeps paging: more than 1,000 old breached sessions do not crowd out a new
stall, and a stall's instance resolves when its composite arrives.

The data takes the product's path (simulated bodies -> ``normalise`` -> Avro -> the processor's pure rules
-> rows) into a fresh embedded ClickHouse; the rule's SQL runs as Grafana would run it at ``NOW``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from streams.avro import default_codec
from streams.config import Settings
from streams.events import normalise
from streams.processor import rules
from streams.simulate import generate
from streams.sink import migrations, rows
from streams.sink.clickhouse import connect
from tests import dashboards

NOW_S = 1_736_942_400  # 2025-01-15 12:00:00 UTC: Grafana evaluates the rule now
NOW_MS = NOW_S * 1000
DAY_S = 86_400
LIMIT = 1000


def roundtrip(name: str, record: dict[str, Any]) -> dict[str, Any]:
    codec = default_codec()
    return codec.decode(codec.encode(name, record))


def events_of(sessions: int, seed: int, start_s: int, **fates: float) -> list[dict[str, Any]]:
    """The WebhookEvents ingest makes of a simulated run that starts at ``start_s``."""
    out = []
    for n, (body, meta) in enumerate(generate(sessions=sessions, seed=seed, duplicates=0.0, out_of_order=0.0,
                                              now_s=start_s, **fates)):
        event = normalise(body, start_s * 1000 + n * 40, "127.0.0.1")
        assert isinstance(event, dict), event
        out.append(roundtrip("WebhookEvent", event))
    return out


def process(states: dict[str, dict[str, Any]], events: list[dict[str, Any]], sla_s: float) -> list[dict[str, Any]]:
    """Every snapshot the processor writes for ``events``, by its pure rules."""
    snapshots = []
    for event in events:
        key = rules.session_key(event["app_id"], event["conf_num"])
        merged, _ = rules.step(states.get(key), event, sla_s)
        if merged != states.get(key):
            states[key] = merged
            snapshots.append(merged)
    return snapshots


def sweep(states: dict[str, dict[str, Any]], now_ms: int, sla_s: float) -> list[dict[str, Any]]:
    snapshots = []
    for key, state in states.items():
        judged, _ = rules.sweep_step(state, now_ms, sla_s)
        if judged != state:
            states[key] = judged
            snapshots.append(judged)
    return snapshots


def insert_sessions(client: Any, snapshots: list[dict[str, Any]]) -> None:
    table_rows = [rows.session_row(roundtrip("SessionState", s)) for s in snapshots]
    client.insert("enablex.sessions", rows.as_lists("sessions", table_rows), column_names=rows.COLUMNS["sessions"])


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("stall-rule"))
    c = connect(settings)
    try:
        migrations.apply(c)
        yield c
    finally:
        c.close()  # chdb holds one data directory per process


def breached(states: dict[str, dict[str, Any]]) -> set[str]:
    return {k for k, s in states.items() if s["sla_state"] == "breached"}


def stall_rule(client: Any) -> list[dict[str, Any]]:
    (query,) = [q for q in dashboards.alert_rule_queries() if q.rule == "Transcode stalled"]
    to = dt.datetime.fromtimestamp(NOW_S, dt.timezone.utc)
    result = client.query(dashboards.expand_macros(query.sql, to - dt.timedelta(hours=1), to))
    assert list(result.column_names) == query.expected_columns
    return [dict(zip(result.column_names, r)) for r in result.result_rows]


def test_a_new_stall_pages_among_thousands_of_old_ones_and_resolves_with_its_composite(client: Any) -> None:
    sla_s = Settings().transcode_sla_seconds
    # months ago, and three days ago: more than LIMIT breached sessions each, composites that never came
    ancient: dict[str, dict[str, Any]] = {}
    recent: dict[str, dict[str, Any]] = {}
    snapshots = process(ancient, events_of(1400, 21, NOW_S - 90 * DAY_S, stalled=1.0, late=0.0), sla_s)
    snapshots += process(recent, events_of(1400, 22, NOW_S - 3 * DAY_S, stalled=1.0, late=0.0), sla_s)
    # two hours ago: sessions whose composite is late; the watch judges them before it comes
    new: dict[str, dict[str, Any]] = {}
    new_events = events_of(8, 23, NOW_S - 2 * 3600, stalled=0.0, late=1.0)
    composites = [e for e in new_events if e["type"] == "transcoded"]
    snapshots += process(new, [e for e in new_events if e["type"] != "transcoded"], sla_s)
    for states in (ancient, recent, new):
        snapshots += sweep(states, NOW_MS, sla_s)
    insert_sessions(client, snapshots)
    assert len(breached(ancient)) > LIMIT and len(breached(recent)) > LIMIT
    assert breached(new) and composites

    instances = stall_rule(client)
    keys = [f"{r['app_id']}/{r['conf_num']}" for r in instances]
    assert breached(new) <= set(keys), "a new stall is not among the rule's instances"
    assert not set(keys) & breached(ancient), "a stall older than the rule's window still pages"
    assert len(keys) == LIMIT and set(keys) <= breached(new) | breached(recent)
    deadlines = [r["deadline"] for r in instances]
    assert deadlines == sorted(deadlines, reverse=True)  # newest first
    assert all(r["overdue_min"] > 0 for r in instances)  # the threshold: > 0

    # the composites arrive: the new sessions' instances resolve, the others stay
    late = [{**e, "received_at": NOW_MS + 60_000 + n} for n, e in enumerate(composites)]
    insert_sessions(client, process(new, late, sla_s))
    assert not breached(new) and {s["sla_state"] for s in new.values()} >= {"recovered"}
    keys_after = {f"{r['app_id']}/{r['conf_num']}" for r in stall_rule(client)}
    assert not keys_after & set(new)
    assert keys_after <= breached(recent) and len(keys_after) == LIMIT
