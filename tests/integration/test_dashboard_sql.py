"""Every dashboard panel's and alert rule's SQL, run on the real embedded ClickHouse after a simulated run.

The data takes the product's own path, minus the transport: the simulator's bodies (``streams.simulate``)
-> payload normalisation (``streams.events.normalise``) -> the Avro contract (encode, decode) -> session
states and SLA alerts by the processor's pure rules (``streams.processor.rules``: on_event, on_command,
on_finding) -> rows (``streams.sink.rows``) -> a fresh chdb directory migrated by ``streams.sink.migrations``.
Every delivery is inserted, duplicates included (at-least-once), and every state snapshot the processor
would write, so the panels read through ``FINAL`` exactly what they read in production.

Some webhooks never reach ingest (:class:`Losses`: a failing webhook URL): EnableX's Server API still holds
them, so the reconciler's comparison (``streams.reconcile.compare``) of an archive and a CDR built from what
the simulator sent against what the log holds finds them, and its findings go the product's way too
(Avro, the processor's ``on_finding``, ``rows.project``).

Then each panel's SQL, with the plugin's macros expanded for a fixed time range around the run, must
return rows with exactly the columns the panel uses; a few panels are also checked against what the
simulator says it sent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests import dashboards, promql
from streams.avro import default_codec
from streams.config import Settings
from streams.reconcile import compare
from streams.simulate import Expected, generate
from streams.sink import migrations, rows
from streams.sink.clickhouse import connect

NOW_S = 1_736_942_400  # 2025-01-15 12:00:00 UTC: the simulated run posts from here
NOW_MS = NOW_S * 1000
FROM = dt.datetime(2025, 1, 15, 6, 0, tzinfo=dt.timezone.utc)   # the dashboards' time range
TO = dt.datetime(2025, 1, 15, 13, 0, tzinfo=dt.timezone.utc)
JUDGED_AT_MS = NOW_MS + 5 * 60_000  # the SLA watch's "now" once the run is in
FOUND_AT_MS = NOW_MS + 15 * 60_000  # the reconciler's pass, after the watch's verdict
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


def sessions_and_alerts(events: list[dict[str, Any]], findings: list[dict[str, Any]], sla_ms: int) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]]]:
    """Every SessionState snapshot the processor writes (one per change) and the SlaAlerts it raises, by the
    pure rules on each session's parts, as the owning agent applies them: the webhooks in the log's order,
    the watch's verdict at ``JUDGED_AT_MS``, then the reconciler's findings (found at ``FOUND_AT_MS``)."""
    from streams.processor import rules

    sla_s = sla_ms / 1000
    parts: dict[str, dict[str, Any]] = {}
    states: dict[str, dict[str, Any]] = {}
    snapshots: list[dict[str, Any]] = []
    alerts: dict[str, dict[str, Any]] = {}

    def apply(key: str, change: rules.Transition) -> None:
        parts.setdefault(key, {t: None for t in rules.TABLES}).update(change.writes)
        if change.after is not None and change.after != states.get(key):
            states[key] = change.after
            snapshots.append(change.after)
        alerts.update({a["alert_id"]: a for a in change.alerts})

    def parts_of(key: str) -> dict[str, Any]:
        return parts.get(key) or {t: None for t in rules.TABLES}

    for event in events:
        key = rules.session_key(event["app_id"], event["conf_num"])
        apply(key, rules.on_event(parts_of(key), event, sla_s))
    for key in list(parts):
        apply(key, rules.on_command(parts_of(key), rules.STALL, JUDGED_AT_MS, sla_s, retention_s=10**9))
    for finding in findings:
        key = rules.session_key(finding["app_id"], finding["conf_num"])
        apply(key, rules.on_finding(parts_of(key), finding, sla_s))
    return snapshots, list(alerts.values())


# -- webhooks that never reached ingest, and what EnableX's Server API holds ------------------------

RESCUED_BEFORE_PAGE = 3  # on-time sessions whose transcoded webhooks were lost; their deadline is after the pass
RESCUED_AFTER_PAGE = 3   # stalled sessions whose composite the archive lists (its webhook lost): paged, then closed
UNKNOWN_SESSIONS = 2     # unrecorded sessions whose only webhook, the roomdrop, was lost


@dataclasses.dataclass(frozen=True)
class Losses:
    """The simulated sessions (keys ``app_id/conf_num``) some of whose webhooks EnableX sent but ingest never got."""

    before_page: list[str]
    after_page: list[str]
    unknown: list[str]
    roomdrop: list[str]   # a recorded session whose roomdrop was lost
    chatdata: list[str]   # a session whose chat file's webhook was lost

    def lost(self, meta: dict[str, Any]) -> bool:
        key, type_ = meta["session"], meta["type"]
        return (key in self.unknown or (key in self.before_page and type_ == "transcoded")
                or (key in self.roomdrop and type_ == "roomdrop") or (key in self.chatdata and type_ == "chatdata"))

    def expected_findings(self) -> set[tuple[str, str, str]]:
        """(session key, kind, missing type) of every finding the reconciler must report."""
        return ({(k, "webhook_missing", "transcoded") for k in self.before_page + self.after_page}
                | {(k, "session_unknown", "roomdrop") for k in self.unknown}
                | {(k, "webhook_missing", "roomdrop") for k in self.roomdrop}
                | {(k, "webhook_missing", "chatdata") for k in self.chatdata})


def choose_losses(metas: list[dict[str, Any]], sla_ms: int) -> Losses:
    """Which webhooks are lost, chosen deterministically among the simulated sessions (sorted keys)."""
    types: dict[str, set[str]] = {}
    first: dict[str, dict[str, Any]] = {}
    ended_ms: dict[str, int] = {}
    for meta in metas:
        types.setdefault(meta["session"], set()).add(meta["type"])
        first.setdefault(meta["session"], meta)
        if meta["type"] == "roomdrop":
            ended_ms[meta["session"]] = int(meta["trans_date_s"] * 1000)
    keys = sorted(types)
    on_time = [k for k in keys if first[k]["fate"] == "on_time"]
    composited = [k for k in on_time if first[k]["recorded"] and "transcoded" in types[k]]
    before_page = [k for k in composited if ended_ms[k] + sla_ms > FOUND_AT_MS + 60_000][:RESCUED_BEFORE_PAGE]
    after_page = [k for k in keys if first[k]["fate"] == "stalled"][:RESCUED_AFTER_PAGE]
    unknown = [k for k in on_time if types[k] == {"roomdrop"}][:UNKNOWN_SESSIONS]
    roomdrop = [k for k in composited if k not in before_page][:1]
    chatdata = [k for k in on_time if "chatdata" in types[k] and k not in before_page + roomdrop][:1]
    losses = Losses(before_page, after_page, unknown, roomdrop, chatdata)
    assert (len(before_page), len(after_page), len(unknown), len(roomdrop), len(chatdata)) == (
        RESCUED_BEFORE_PAGE, RESCUED_AFTER_PAGE, UNKNOWN_SESSIONS, 1, 1), losses
    return losses


def utc_text(ms: int) -> str:
    """A time as EnableX's Server API writes it: ``YYYY-MM-DD HH:MM:SS`` UTC."""
    return f"{dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc):%Y-%m-%d %H:%M:%S}"


def enablex_holdings(sent: list[dict[str, Any]], losses: Losses) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Server API's archive entries and CDR rows (the documented shapes) for everything EnableX sent a
    webhook of (lost or not), plus the composites of the ``after_page`` sessions, which EnableX made on time
    (20 minutes after the recording) but whose webhooks never came."""
    archive: list[dict[str, Any]] = []
    cdr: list[dict[str, Any]] = []
    for e in sent:
        head = {"app_id": e["app_id"], "conf_num": e["conf_num"]}
        when = e["trans_date"] if e.get("trans_date") is not None else e["received_at"]
        if e["type"] == "roomdrop":
            cdr.append({**head, "cdr_id": "cdr-" + e["event_id"][:16], "trans_date": utc_text(when)[:10],
                        "room": {"room_id": e.get("room_id"), "connect_dt": utc_text(when - 1_800_000),
                                 "disconnect_dt": utc_text(when), "duration": 1800},
                        "user": {"role": "moderator"}, "usage": {}})
        elif e["type"] in compare.ARCHIVE_TYPES:
            archive.append({**head, "_id": "arc-" + e["event_id"][:16], "room_id": e.get("room_id"),
                            "trans_date": utc_text(when), e["type"]: [{"url": f["url"]} for f in e["files"]]})
        if e["type"] == "recording" and f"{e['app_id']}/{e['conf_num']}" in losses.after_page:
            base = e["files"][0]["url"].rsplit("/", 1)[0]
            archive.append({**head, "_id": "arc-composite-" + e["conf_num"], "room_id": e.get("room_id"),
                            "trans_date": utc_text(when + 20 * 60_000),
                            "transcoded": [{"url": f"{base}/composite-archive.mp4"}]})
    return archive, cdr


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
    def __init__(self, client: Any, expected: Expected, states: dict[str, str], alerts: list[dict[str, Any]],
                 losses: Losses, findings: list[dict[str, Any]]):
        self.client = client
        self.expected = expected  # what the simulator sent, less the lost webhooks: what ingest received
        self.states = states   # session key -> final sla_state
        self.alerts = alerts
        self.losses = losses
        self.findings = findings  # ReconcileFinding records, decoded


def insert(client: Any, table: str, table_rows: list[dict[str, Any]]) -> None:
    if table_rows:
        client.insert(f"enablex.{table}", rows.as_lists(table, table_rows), column_names=rows.COLUMNS[table])


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    plan = generate(sessions=120, seed=6, duplicates=0.1, out_of_order=0.2, stalled=0.1, now_s=NOW_S, invalid=0.03)
    settings = Settings(data_dir=tmp_path_factory.mktemp("dashboard-sql"))
    sla_ms = int(settings.transcode_sla_seconds * 1000)
    losses = choose_losses([meta for _, meta in plan if not meta["invalid"]], sla_ms)
    client = connect(settings)
    try:
        migrations.apply(client)
        events: list[dict[str, Any]] = []
        sent: dict[str, dict[str, Any]] = {}  # every distinct event EnableX sent, lost or not
        lost: Counter[str] = Counter()
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
            sent.setdefault(event["event_id"], event)
            if losses.lost(meta):  # EnableX posted it; it never reached ingest
                lost["duplicates" if meta["duplicate"] else "events"] += 1
                lost["type:" + meta["type"]] += not meta["duplicate"]
                continue
            events.append(event)
            for table, projected in rows.project("webhooks", "WebhookEvent", event).items():
                table_rows[table].extend(projected)
        table_rows["dead_letters"] += [rows.dead_letter_row(roundtrip("DeadLetter", letter))
                                       for letter in processor_failures(events)]
        # the reconciler's pass: EnableX's Server API against the webhook types the log holds
        archive, cdr = enablex_holdings(list(sent.values()), losses)
        seen: dict[str, set[str]] = {}
        for event in events:
            seen.setdefault(compare.session_key(event["app_id"], event["conf_num"]), set()).add(event["type"])
        found = compare.compare(archive, cdr, seen, FOUND_AT_MS, settings.reconcile_grace_s)
        assert {(f.key, f.kind, f.missing_type) for f in found} == losses.expected_findings()
        findings = [roundtrip("ReconcileFinding", f.record()) for f in found]
        for finding in findings:
            for table, projected in rows.project("reconcile", "ReconcileFinding", finding).items():
                table_rows[table].extend(projected)
        snapshots, alerts = sessions_and_alerts(events, findings, sla_ms)
        table_rows["sessions"] = [rows.session_row(roundtrip("SessionState", s)) for s in snapshots]
        table_rows["sla_alerts"] = [rows.alert_row(roundtrip("SlaAlert", a)) for a in alerts]
        for table, table_rows_ in table_rows.items():
            insert(client, table, table_rows_)
        final: dict[str, str] = {}
        for s in snapshots:  # the highest version per session is its state
            key = f"{s['app_id']}/{s['conf_num']}"
            final[key] = s["sla_state"]
        e = plan.expected
        received = dataclasses.replace(
            e, events=e.events - lost["events"], duplicates=e.duplicates - lost["duplicates"],
            deliveries=e.deliveries - lost["events"] - lost["duplicates"],
            by_type={t: n - lost["type:" + t] for t, n in e.by_type.items()})
        yield Loaded(client, received, final, alerts, losses, findings)
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


def test_every_query_is_sql_run_here_or_promql_checked_elsewhere() -> None:
    """Two datasources: the ClickHouse targets are the SQL run above; the Prometheus ones (tests.promql, checked
    against the exported metric names in tests/unit/test_prometheus_queries.py) never reach ClickHouse."""
    targets = [t for b in dashboards.load_dashboards().values() for p in dashboards.iter_panels(b) for t in p["targets"]]
    prometheus = promql.queries()
    assert prometheus and len(PANELS) + sum(1 for q in prometheus if not q.where.startswith("alert rule ")) == len(targets)
    assert all("expr" not in t for t in targets if dashboards.is_clickhouse(t["datasource"]))
    rule_queries = [x for r in dashboards.load_alert_rules() for x in r["data"] if x["datasourceUid"] != "__expr__"]
    assert len(RULES) + sum(1 for q in prometheus if q.where.startswith("alert rule ")) == len(rule_queries)


def rule(title: str) -> dashboards.AlertQuery:
    (query,) = [q for q in RULES if q.rule == title]
    return query


def test_every_alert_rule_is_tested_below() -> None:
    assert sorted(q.rule for q in RULES) == ["Processor could not handle an event", "Transcode stalled",
                                             "Webhooks missing"]


def test_the_stall_rule_fires_for_every_stalled_session(loaded: Loaded) -> None:
    query = rule("Transcode stalled")
    columns, result = run(loaded, query.sql)
    assert columns == query.expected_columns
    stalled = {k for k, s in loaded.states.items() if s == "breached"}
    # a stalled session whose composite the archive lists is no longer stalled: its page was closed
    assert len(stalled) == loaded.expected.stalled_sessions - RESCUED_AFTER_PAGE > 0
    assert stalled.isdisjoint(loaded.losses.after_page)
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
    assert got["breached"] == e.stalled_sessions - RESCUED_AFTER_PAGE  # rescued from a false page: met
    assert got["recovered"] == e.late_sessions
    assert got["pending"] == 0
    assert sum(got.values()) == e.sessions
    columns, stalled = run(loaded, panel("enx-streams: SLA overview", "Stalled sessions").sql)
    assert len(stalled) == e.stalled_sessions - RESCUED_AFTER_PAGE
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


# -- reconciliation: the findings, the rescued sessions and the "Webhooks missing" rule --------------

RECONCILIATION = "enx-streams: reconciliation"


def as_dicts(loaded: Loaded, dashboard: str, title: str) -> list[dict[str, Any]]:
    columns, result = run(loaded, panel(dashboard, title).sql)
    return [dict(zip(columns, r)) for r in result]


def test_the_findings_panels_show_what_the_reconciler_found(loaded: Loaded) -> None:
    losses, findings = loaded.losses, loaded.findings
    expected = losses.expected_findings()
    got = one_row(loaded, RECONCILIATION, "Findings in range")
    assert got == {"webhook_missing": len(expected) - UNKNOWN_SESSIONS, "session_unknown": UNKNOWN_SESSIONS,
                   "sessions": len({k for k, _, _ in expected}), "apps": len({f["app_id"] for f in findings})}
    (day,) = as_dicts(loaded, RECONCILIATION, "Findings per day")  # one pass, one day
    assert day["time"].date() == dt.date(2025, 1, 15)
    assert {k: v for k, v in day.items() if k != "time"} == {
        "roomdrop": 1, "recording": 0, "transcoded": RESCUED_BEFORE_PAGE + RESCUED_AFTER_PAGE, "chatdata": 1,
        "session_unknown": UNKNOWN_SESSIONS}
    by_app = as_dicts(loaded, RECONCILIATION, "Findings by app")
    assert {r["app_id"]: r["findings"] for r in by_app} == Counter(f["app_id"] for f in findings)

    recent = {(f"{r['app_id']}/{r['conf_num']}", r["missing_type"]): r
              for r in as_dicts(loaded, RECONCILIATION, "Recent findings")}
    assert set(recent) == {(k, t) for k, _, t in expected}
    urls = {(f"{f['app_id']}/{f['conf_num']}", f["missing_type"]): " ".join(f["urls"]) for f in findings}
    for (key, type_), row in recent.items():
        assert row["urls"] == urls[(key, type_)] and row["sla_state"] == loaded.states[key]
        assert row["source"] == ("cdr" if type_ == "roomdrop" else "archive")
        assert row["found_at"] == rows.datetime_required(FOUND_AT_MS).replace(tzinfo=None)  # chdb: naive UTC
    for key in losses.before_page + losses.after_page:  # what to do next: the MP4 is at the archive's URL
        row = recent[(key, "transcoded")]
        assert row["urls"].endswith(".mp4") and row["sla_state"] == "met"
        assert row["next_step"].startswith("Composite in the archive")
    for key in losses.unknown:
        row = recent[(key, "roomdrop")]
        assert (row["kind"], row["urls"], row["sla_state"]) == ("session_unknown", "", "not_applicable")
        assert row["next_step"].startswith("No webhook of this conference reached ingest")


def test_the_rescued_panels_count_the_sessions_judged_from_the_archive(loaded: Loaded) -> None:
    losses = loaded.losses
    closed = {f"{a['app_id']}/{a['conf_num']}" for a in loaded.alerts
              if a["kind"] == "transcode_recovered" and a["cause"] == "webhook_missing"}
    paged = {f"{a['app_id']}/{a['conf_num']}" for a in loaded.alerts if a["kind"] == "transcode_stalled"}
    assert closed == set(losses.after_page) <= paged and paged.isdisjoint(losses.before_page)
    got = one_row(loaded, RECONCILIATION, "Sessions rescued from a false page")
    assert got == {"rescued": RESCUED_BEFORE_PAGE + RESCUED_AFTER_PAGE, "before_page": RESCUED_BEFORE_PAGE,
                   "page_closed": RESCUED_AFTER_PAGE}
    rescued = {f"{r['app_id']}/{r['conf_num']}": r for r in as_dicts(loaded, RECONCILIATION, "Rescued sessions")}
    assert set(rescued) == set(losses.before_page + losses.after_page)
    for key, row in rescued.items():
        assert (row["sla_state"], row["composite_from"]) == ("met", "archive") and loaded.states[key] == "met"
        assert row["composite_at"] <= row["deadline"]
    assert {k for k, r in rescued.items() if r["page"] == "none"} == set(losses.before_page)
    assert all(rescued[k]["page"].startswith("closed 2025-01-15 12:15") for k in losses.after_page)


def threshold_of(title: str) -> float:
    """The value above which the rule fires (its threshold expression, ``gt``)."""
    (rule_,) = [r for r in dashboards.load_alert_rules() if r["title"] == title]
    (model,) = [x["model"] for x in rule_["data"] if x["model"].get("type") == "threshold"]
    evaluator = model["conditions"][0]["evaluator"]
    assert evaluator["type"] == "gt"
    return float(evaluator["params"][0])


def evaluate(loaded: Loaded, title: str, at_ms: int) -> dict[str, int]:
    """The rule's query as Grafana runs it at ``at_ms``, over its own relative time range: app_id -> findings."""
    (rule_,) = [r for r in dashboards.load_alert_rules() if r["title"] == title]
    span_s = next(x for x in rule_["data"] if x["refId"] == "A")["relativeTimeRange"]["from"]
    to = rows.datetime_required(at_ms)
    query = rule(title)
    result = loaded.client.query(dashboards.expand_macros(query.sql, to - dt.timedelta(seconds=span_s), to))
    assert query.expected_columns == ["app_id", "findings"]
    if result.result_rows:  # chdb names no column of an empty result
        assert list(result.column_names) == query.expected_columns
    return {r[0]: r[1] for r in result.result_rows}


def lost_webhooks(app_id: str, n: int, first_ms: int, last_ms: int) -> list[dict[str, Any]]:
    """``n`` findings of ``app_id`` found between ``first_ms`` and ``last_ms``, of every kind and type."""
    types = ("transcoded", "roomdrop", "recording", "chatdata")
    out = []
    for i in range(n):
        type_ = types[i % len(types)]
        kind = "session_unknown" if type_ == "roomdrop" and i % 8 == 1 else "webhook_missing"
        found = first_ms + (last_ms - first_ms) * i // max(1, n - 1)
        out.append(roundtrip("ReconcileFinding", compare.Finding(
            kind, app_id, f"{i:06d}", "room-1", type_, "cdr" if type_ == "roomdrop" else "archive", found - 3_600_000,
            () if type_ == "roomdrop" else (f"https://recordings.enablex.io/{app_id}/{i}/file",), f"a-{i}",
            found).record()))
    return out


def test_the_webhook_missing_rule_fires_for_an_app_with_many_lost_webhooks_in_the_last_hour(loaded: Loaded) -> None:
    title = "Webhooks missing"
    limit = threshold_of(title)
    # the loaded run: every finding counts (session_unknown too: a conference none of whose webhooks came)
    at_run = evaluate(loaded, title, FOUND_AT_MS + 60_000)
    assert at_run == Counter(f["app_id"] for f in loaded.findings)
    # days after the run (outside every panel's time range), three apps: one loses many webhooks in the last
    # hour, one a few, one many but two hours ago
    at = NOW_MS + 5 * 86_400_000
    many, few, old = int(limit) + 7, int(limit) - 2, int(limit) + 15
    batches = {"app-lossy": lost_webhooks("app-lossy", many, at - 55 * 60_000, at - 60_000),
               "app-few": lost_webhooks("app-few", few, at - 50 * 60_000, at - 10 * 60_000),
               "app-old": lost_webhooks("app-old", old, at - 170 * 60_000, at - 130 * 60_000)}
    for batch in batches.values():
        for finding in batch + batch[:3]:  # the sink's at-least-once: a finding inserted twice counts once
            for table, projected in rows.project("reconcile", "ReconcileFinding", finding).items():
                insert(loaded.client, table, projected)

    def firing(at_ms: int) -> dict[str, int]:
        return {app: n for app, n in evaluate(loaded, title, at_ms).items() if n > limit}

    assert evaluate(loaded, title, at) == {"app-lossy": many, "app-few": few}
    assert firing(at) == {"app-lossy": many}                       # many in the last hour: a ticket
    assert firing(at - 120 * 60_000) == {"app-old": old}           # the old outage, when it was new
    assert evaluate(loaded, title, at + 2 * 3_600_000) == {}      # nothing found for an hour: resolved (no data: OK)
    assert evaluate(loaded, title, at - 86_400_000) == {}         # no finding at all: nothing


def test_the_sla_alerts_panel_says_which_recoveries_were_a_missing_webhook(loaded: Loaded) -> None:
    alerts = as_dicts(loaded, "enx-streams: SLA overview", "SLA alerts")
    missing = {f"{a['app_id']}/{a['conf_num']}" for a in alerts if a["cause"] == "webhook_missing"}
    assert missing == set(loaded.losses.after_page)
    assert all(a["kind"] == "transcode_recovered" for a in alerts if a["cause"] == "webhook_missing")
    assert any(a["kind"] == "transcode_recovered" and a["cause"] == "" for a in alerts)  # the late jobs
