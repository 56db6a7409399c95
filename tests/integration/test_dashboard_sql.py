"""Every dashboard panel's and alert rule's SQL, run on the real embedded ClickHouse after a simulated run.

The data takes the product's own path, minus the transport: the simulator's bodies (``streams.simulate``)
-> payload normalisation (``streams.events.normalise``) -> the Avro contract (encode, decode) -> session
states and SLA alerts by the processor's pure rules (``streams.processor.rules``: merge, judge) -> rows
(``streams.sink.rows``) -> a fresh chdb directory migrated by ``streams.sink.migrations``. Every delivery
is inserted, duplicates included (at-least-once), and every state snapshot the processor would write, so
the panels read through ``FINAL`` exactly what they read in production.

Then each panel's SQL, with the plugin's macros expanded for a fixed time range around the run, must
return rows with exactly the columns the panel uses; a few panels are also checked against what the
simulator says it sent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests import dashboards
from streams.avro import default_codec
from streams.config import Settings
from streams.simulate import Expected, generate
from streams.sink import migrations, rows
from streams.sink.clickhouse import connect

NOW_S = 1_736_942_400  # 2025-01-15 12:00:00 UTC: the simulated run posts from here
NOW_MS = NOW_S * 1000
FROM = dt.datetime(2025, 1, 15, 6, 0, tzinfo=dt.timezone.utc)   # the dashboards' time range
TO = dt.datetime(2025, 1, 15, 13, 0, tzinfo=dt.timezone.utc)
JUDGED_AT_MS = NOW_MS + 5 * 60_000  # the SLA watch's "now" once the run is in
POST_INTERVAL_MS = 40  # received_at of consecutive posts
SOURCE = "127.0.0.1"


# -- the product's pure steps -------------------------------------------------------------------------

def accept(body: bytes, received_at_ms: int) -> dict[str, Any] | str:
    """What ingest does with a body: the WebhookEvent (as it goes to Kafka), or the rejection reason."""
    from streams.events import normalise

    try:
        result = normalise(body, received_at_ms, SOURCE)
    except ValueError as exc:  # a rejection raised
        return str(exc)
    if isinstance(result, dict):
        return result
    return str(getattr(result, "reason", result))  # a rejection returned


def dead_letter(body: bytes, reason: str, received_at_ms: int) -> dict[str, Any]:
    return {"id": "dl-" + hashlib.sha256(body + str(received_at_ms).encode()).hexdigest()[:32],
            "received_at": received_at_ms, "reason": reason, "raw": body,
            "headers": {"content-type": "application/json"}, "source": SOURCE}


def roundtrip(record_name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Through the Avro contract, as every record travels through Kafka."""
    codec = default_codec()
    return codec.decode(codec.encode(record_name, record))


def sessions_and_alerts(events: list[dict[str, Any]], now_ms: int, sla_ms: int) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]]]:
    """Every SessionState snapshot the processor writes (one per change, then the watch's verdict at
    ``now_ms``) and the SlaAlerts it raises, by the pure rules."""
    from streams.processor import rules

    states: dict[str, dict[str, Any]] = {}
    snapshots: list[dict[str, Any]] = []
    alerts: dict[str, dict[str, Any]] = {}
    for event in events:
        key = f"{event['app_id']}/{event['conf_num']}"
        merged, raised = rules.step(states.get(key), event, sla_ms / 1000)
        if merged != states.get(key):
            states[key] = merged
            snapshots.append(merged)
        alerts.update({a["alert_id"]: a for a in raised})
    for key, state in states.items():
        judged, raised = rules.sweep_step(state, now_ms, sla_ms / 1000)
        if judged != state:
            states[key] = judged
            snapshots.append(judged)
        alerts.update({a["alert_id"]: a for a in raised})
    return snapshots, list(alerts.values())


# -- the data load ------------------------------------------------------------------------------------

PROCESSOR_FAILURES = 2


def processor_failures(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dead letters as the processor writes them for events it could not handle: two of the simulated ones
    (the dead letter leaves the event's own rows alone)."""
    from streams import dead_letters

    return [dead_letters.for_record("processor", "enablex.webhooks.v1", n % 8, n, e["received_at"],
                                    e["raw"].encode(), f"{e['app_id']}/{e['conf_num']}".encode(), [],
                                    "processor_failed: ValueError: a value SessionState cannot hold")
            for n, e in enumerate(events[:PROCESSOR_FAILURES])]


class Loaded:
    def __init__(self, client: Any, expected: Expected, states: dict[str, str], alerts: list[dict[str, Any]]):
        self.client = client
        self.expected = expected
        self.states = states   # session key -> final sla_state
        self.alerts = alerts


def insert(client: Any, table: str, table_rows: list[dict[str, Any]]) -> None:
    if table_rows:
        client.insert(f"enablex.{table}", rows.as_lists(table, table_rows), column_names=rows.COLUMNS[table])


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    plan = generate(sessions=120, seed=6, duplicates=0.1, out_of_order=0.2, stalled=0.1, now_s=NOW_S, invalid=0.03)
    settings = Settings(data_dir=tmp_path_factory.mktemp("dashboard-sql"))
    sla_ms = int(settings.transcode_sla_seconds * 1000)
    client = connect(settings)
    try:
        migrations.apply(client)
        events: list[dict[str, Any]] = []
        table_rows: dict[str, list[dict[str, Any]]] = {t: [] for t in rows.COLUMNS}
        for n, (body, meta) in enumerate(plan):
            received_at = NOW_MS + n * POST_INTERVAL_MS
            outcome = accept(body, received_at)
            if isinstance(outcome, str):
                assert meta["invalid"], f"a valid simulated body was rejected ({outcome}): {body[:200]!r}"
                letter = roundtrip("DeadLetter", dead_letter(body, outcome, received_at))
                table_rows["dead_letters"].append(rows.dead_letter_row(letter))
                continue
            assert not meta["invalid"], f"an invalid body was accepted: {body[:200]!r}"
            event = roundtrip("WebhookEvent", outcome)
            events.append(event)
            for table, projected in rows.project("webhooks", "WebhookEvent", event).items():
                table_rows[table].extend(projected)
        table_rows["dead_letters"] += [rows.dead_letter_row(roundtrip("DeadLetter", letter))
                                       for letter in processor_failures(events)]
        snapshots, alerts = sessions_and_alerts(events, JUDGED_AT_MS, sla_ms)
        table_rows["sessions"] = [rows.session_row(roundtrip("SessionState", s)) for s in snapshots]
        table_rows["sla_alerts"] = [rows.alert_row(roundtrip("SlaAlert", a)) for a in alerts]
        for table, table_rows_ in table_rows.items():
            insert(client, table, table_rows_)
        final: dict[str, str] = {}
        for s in snapshots:  # the highest version per session is its state
            key = f"{s['app_id']}/{s['conf_num']}"
            final[key] = s["sla_state"]
        yield Loaded(client, plan.expected, final, alerts)
    finally:
        client.close()  # chdb holds one data directory per process


def run(loaded: Loaded, sql: str) -> tuple[list[str], list[tuple]]:
    result = loaded.client.query(dashboards.expand_macros(sql, FROM, TO, interval_s=300))
    return list(result.column_names), [tuple(r) for r in result.result_rows]


PANELS = dashboards.panel_queries()
RULES = dashboards.alert_rule_queries()


@pytest.mark.parametrize("query", PANELS, ids=[f"{q.dashboard}/{q.panel_title}" for q in PANELS])
def test_every_panel_returns_rows_with_its_columns(loaded: Loaded, query: dashboards.PanelQuery) -> None:
    columns, result = run(loaded, query.sql)
    assert columns == query.expected_columns
    assert result, f"{query.dashboard} / {query.panel_title} returned no row"


def rule(title: str) -> dashboards.AlertQuery:
    (query,) = [q for q in RULES if q.rule == title]
    return query


def test_every_alert_rule_is_tested_below() -> None:
    assert sorted(q.rule for q in RULES) == ["Processor could not handle an event", "Transcode stalled"]


def test_the_stall_rule_fires_for_every_stalled_session(loaded: Loaded) -> None:
    query = rule("Transcode stalled")
    columns, result = run(loaded, query.sql)
    assert columns == query.expected_columns
    stalled = {k for k, s in loaded.states.items() if s == "breached"}
    assert len(stalled) == loaded.expected.stalled_sessions > 0
    assert {f"{r[0]}/{r[1]}" for r in result} == stalled
    assert all(r[columns.index("overdue_min")] > 0 for r in result)  # the threshold: > 0


def test_the_processor_rule_fires_for_each_event_the_processor_could_not_handle(loaded: Loaded) -> None:
    query = rule("Processor could not handle an event")
    columns, result = run(loaded, query.sql)
    assert columns == query.expected_columns
    # one instance per processor dead letter: not for the bodies ingest rejected
    assert sorted(r[columns.index("source")] for r in result) == sorted(
        f"enablex.webhooks.v1/{n % 8}/{n}" for n in range(PROCESSOR_FAILURES))
    assert all(r[columns.index("records")] > 0 for r in result)  # the threshold: > 0
    assert all(r[columns.index("reason")].startswith("processor_failed: ") for r in result)


# -- a few panels against what the simulator says it sent ---------------------------------------------

def panel(dashboard: str, title: str) -> dashboards.PanelQuery:
    return next(q for q in PANELS if q.dashboard == dashboard and q.panel_title == title)


def one_row(loaded: Loaded, dashboard: str, title: str) -> dict[str, Any]:
    columns, result = run(loaded, panel(dashboard, title).sql)
    assert len(result) == 1
    return dict(zip(columns, result[0]))


def test_sla_states_match_the_simulated_fates(loaded: Loaded) -> None:
    e = loaded.expected
    got = one_row(loaded, "enx-streams: SLA overview", "Sessions by SLA state")
    assert got["breached"] == e.stalled_sessions
    assert got["recovered"] == e.late_sessions
    assert got["pending"] == 0
    assert sum(got.values()) == e.sessions
    columns, stalled = run(loaded, panel("enx-streams: SLA overview", "Stalled sessions").sql)
    assert len(stalled) == e.stalled_sessions
    assert all(r[columns.index("overdue_min")] > 5 for r in stalled)


def test_ingest_counts_match_what_was_sent(loaded: Loaded) -> None:
    e = loaded.expected
    got = one_row(loaded, "enx-streams: ingest health", "Accepted and rejected")
    assert got["accepted"] == e.events  # duplicates collapse under FINAL
    assert got["rejected"] == e.invalid + PROCESSOR_FAILURES and e.invalid > 0  # every dead letter
    columns, by_type = run(loaded, panel("enx-streams: ingest health", "Events by app and type").sql)
    per_type: dict[str, int] = {}
    for r in by_type:
        per_type[r[1]] = per_type.get(r[1], 0) + r[2]
    # the aggregate counts inserted rows: every delivery, duplicates included
    assert sum(per_type.values()) == e.events + e.duplicates
    assert set(per_type) == {t for t, n in e.by_type.items() if n}


def test_lifecycle_and_deliveries_match_what_was_sent(loaded: Loaded) -> None:
    e = loaded.expected
    got = one_row(loaded, "enx-streams: session lifecycle", "Sessions through each stage")
    assert got["ended"] == e.sessions
    assert got["recorded"] == e.recorded_sessions
    columns, result = run(loaded, panel("enx-streams: session lifecycle", "Deliveries by destination").sql)
    assert {r[0]: r[1] for r in result} == {k: v for k, v in e.by_destination.items() if v}
    columns, stages = run(loaded, panel("enx-streams: session lifecycle", "Stage latency from session end").sql)
    assert [r[0] for r in stages] == ["1 recording", "2 composite", "3 delivery", "4 chat"]


def test_error_code_lookup_filters_by_its_text_variable(loaded: Loaded) -> None:
    (raw,) = [q for q in dashboards.panel_queries(interpolate=False) if q.panel_title == "Error codes"]
    for search, expect in (("", 77), ("7000", 9), ("moderator", None), ("can't", 0)):
        _, result = run(loaded, dashboards.interpolate_variables(raw.sql, {"search": search}))
        if expect is None:
            assert result and all("moderator" in r[2].lower() for r in result)
        else:
            assert len(result) == expect, search
