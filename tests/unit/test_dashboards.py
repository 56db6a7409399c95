"""The Grafana dashboards and alert rule of ``dashboards/``: valid, ClickHouse-backed, macros expandable."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
import yaml

from tests import dashboards as d
from tests.dashboards import DashboardError, expand_macros, interpolate_variables, select_columns

ROOT = Path(__file__).resolve().parents[2]
JSON_DIR = ROOT / "dashboards" / "json"
PROVISIONING = ROOT / "dashboards" / "provisioning"
FROM = dt.datetime(2025, 1, 15, 6, 0, tzinfo=dt.timezone.utc)
TO = dt.datetime(2025, 1, 15, 12, 10, tzinfo=dt.timezone.utc)
FROM_S, TO_S = int(FROM.timestamp()), int(TO.timestamp())


def all_dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(JSON_DIR.glob("*.json"))}


def test_the_four_dashboards_exist_as_valid_json_with_unique_uids() -> None:
    boards = all_dashboards()
    titles = {b["title"] for b in boards.values()}
    assert {"enx-streams: SLA overview", "enx-streams: session lifecycle", "enx-streams: ingest health",
            "enx-streams: error-code lookup"} <= titles
    uids = [b["uid"] for b in boards.values()]
    assert len(uids) == len(set(uids)) and all(len(u) <= 40 for u in uids)
    assert not (JSON_DIR / ".gitkeep").exists()


def test_the_reconciliation_dashboard_shows_findings_and_rescued_sessions() -> None:
    (board,) = [b for b in all_dashboards().values() if b["title"] == "enx-streams: reconciliation"]
    assert board["uid"] == "enx-reconciliation"
    queries = {q.panel_title: q for q in d.panel_queries(JSON_DIR) if q.dashboard == board["title"]}
    assert set(queries) == {"Findings in range", "Findings per day", "Findings by app",
                            "Sessions rescued from a false page", "Rescued sessions", "Recent findings"}
    per_day = queries["Findings per day"]
    assert per_day.expected_columns == ["time", "roomdrop", "recording", "transcoded", "chatdata", "session_unknown"]
    assert "toStartOfDay(found_at) AS time" in per_day.sql
    for q in queries.values():  # every table read through FINAL: a finding found twice counts once
        assert re.search(r"FROM enablex\.(reconcile_findings|sessions)( AS [a-z])? FINAL", q.sql), q.panel_title
    rescued = queries["Sessions rescued from a false page"]
    assert rescued.expected_columns == ["rescued", "before_page", "page_closed"]
    assert "has(s.reconciled, 'transcoded')" in rescued.sql and "cause = 'webhook_missing'" in rescued.sql
    recent = queries["Recent findings"]
    assert {"urls", "conf_num", "sla_state", "next_step"} <= set(recent.expected_columns)


def is_prometheus_panel(panel: dict) -> bool:
    return all(d.is_prometheus(t["datasource"]) for t in panel["targets"])


def test_every_panel_has_clickhouse_targets_with_raw_sql_or_prometheus_targets_with_promql() -> None:
    sources = set()
    for name, board in all_dashboards().items():
        panels = list(d.iter_panels(board))
        assert panels, name
        assert len({p["id"] for p in panels}) == len(panels), f"{name}: panel ids must be unique"
        for panel in panels:
            assert set(panel["gridPos"]) == {"x", "y", "w", "h"}, panel["title"]
            assert panel["targets"], f"{name} / {panel['title']}: no target"
            assert panel["datasource"] == panel["targets"][0]["datasource"], panel["title"]  # one datasource a panel
            for target in panel["targets"]:
                sources.add(target["datasource"]["uid"])
                if is_prometheus_panel(panel):  # its PromQL is checked in test_prometheus_queries.py
                    assert target["expr"].strip() and "rawSql" not in target, panel["title"]
                    continue
                assert target["datasource"] == {"type": "grafana-clickhouse-datasource", "uid": "enx-clickhouse"}
                assert target["editorType"] == "sql" and target["rawSql"].strip()
                assert target["queryType"] == ("timeSeries" if panel["type"] == "timeseries" else "table")
    assert sources == {"enx-clickhouse", "enx-prometheus"}


def test_a_query_for_an_unknown_datasource_is_refused(tmp_path: Path) -> None:
    board = {"title": "t", "panels": [{"title": "p", "targets": [
        {"datasource": {"type": "mysql", "uid": "x"}, "rawSql": "SELECT 1 AS a"}]}]}
    (tmp_path / "b.json").write_text(json.dumps(board))
    with pytest.raises(DashboardError, match="neither ClickHouse"):
        d.panel_queries(tmp_path)
    (tmp_path / "alerting").mkdir()
    (tmp_path / "alerting" / "r.yaml").write_text(yaml.safe_dump({"apiVersion": 1, "groups": [{"rules": [
        {"title": "r", "data": [{"refId": "A", "datasourceUid": "other", "model": {"rawSql": "SELECT 1 AS a"}}]}]}]}))
    with pytest.raises(DashboardError, match="neither ClickHouse"):
        d.alert_rule_queries(tmp_path)


def test_panel_queries_covers_every_panel_with_its_columns() -> None:
    queries = d.panel_queries(JSON_DIR)
    expected_panels = sum(1 for b in all_dashboards().values() for p in d.iter_panels(b) if not is_prometheus_panel(p))
    assert len(queries) == expected_panels >= 20
    by_title = {(q.dashboard, q.panel_title): q for q in queries}
    stalled = by_title[("enx-streams: SLA overview", "Stalled sessions")]
    assert "overdue_min" in stalled.expected_columns and "sla_state = 'breached'" in stalled.sql
    states = by_title[("enx-streams: SLA overview", "Sessions by SLA state")]
    assert states.expected_columns == ["pending", "met", "breached", "recovered", "not_applicable"]
    assert any("events_per_minute" in q.sql for q in queries)
    assert any("dead_letters_per_minute" in q.sql for q in queries)
    assert any("enablex.error_codes" in q.sql for q in queries)


def test_panel_config_only_names_columns_its_query_returns() -> None:
    boards = all_dashboards()
    for name, board in boards.items():
        for panel in d.iter_panels(board):
            if is_prometheus_panel(panel):
                continue  # series named by their labels, not by SELECT columns
            columns = select_columns(panel["targets"][0]["rawSql"])
            if panel["type"] == "timeseries":
                assert columns[0] == "time", f"{panel['title']}: a time series needs its time column first"
            for override in panel["fieldConfig"]["overrides"]:
                if override["matcher"]["id"] == "byName":
                    assert override["matcher"]["options"] in columns, (panel["title"], override)
            for sort in panel.get("options", {}).get("sortBy", []):
                assert sort["displayName"] in columns
            x_field = panel.get("options", {}).get("xField")
            assert x_field is None or x_field in columns


def test_macros_expand_to_no_leftover_placeholders() -> None:
    queries = [*d.panel_queries(JSON_DIR), *d.alert_rule_queries(PROVISIONING)]
    for q in queries:
        sql = expand_macros(q.sql, FROM, TO)
        assert "$__" not in sql, q
        assert not re.search(r"\$\{?[A-Za-z_]", sql), f"unexpanded variable in {q[1]}"
    macro_users = [q for q in queries if "$__timeFilter(" in q.sql]
    assert len(macro_users) >= 10


def test_expand_macros_matches_the_plugins_formats() -> None:
    assert expand_macros("$__timeFilter(t)", FROM, TO) == f"t >= toDateTime({FROM_S}) AND t <= toDateTime({TO_S})"
    assert expand_macros("$__timeFilter_ms(t)", FROM, TO) == \
        f"t >= fromUnixTimestamp64Milli({FROM_S * 1000}) AND t <= fromUnixTimestamp64Milli({TO_S * 1000})"
    assert expand_macros("$__fromTime,$__toTime", FROM, TO) == f"toDateTime({FROM_S}),toDateTime({TO_S})"
    assert expand_macros("$__fromTime_ms $__toTime_ms", FROM, TO) == \
        f"fromUnixTimestamp64Milli({FROM_S * 1000}) fromUnixTimestamp64Milli({TO_S * 1000})"
    assert expand_macros("$__timeInterval(t)", FROM, TO, interval_s=300) == \
        "toStartOfInterval(toDateTime(t), INTERVAL 300 second)"
    assert expand_macros("$__timeInterval_ms(t)", FROM, TO, interval_s=0.5) == \
        "toStartOfInterval(toDateTime64(t, 3), INTERVAL 500 millisecond)"
    assert expand_macros("$__interval_s", FROM, TO, interval_s=0.2) == "1"
    assert expand_macros("$__dateFilter(d)", FROM, TO) == "d >= toDate('2025-01-15') AND d <= toDate('2025-01-15')"
    assert expand_macros("$__dt(d, t)", FROM, TO) == (
        f"(d >= toDate('2025-01-15') AND d <= toDate('2025-01-15')) AND "
        f"(t >= toDateTime({FROM_S}) AND t <= toDateTime({TO_S}))")
    naive = FROM.replace(tzinfo=None)
    assert expand_macros("$__fromTime", naive, TO) == f"toDateTime({FROM_S})"


def test_expand_macros_refuses_what_the_plugin_cannot_run() -> None:
    with pytest.raises(DashboardError, match="plain column"):
        expand_macros("WHERE $__timeFilter(coalesce(a, b))", FROM, TO)
    with pytest.raises(DashboardError, match="not a macro"):
        expand_macros("$__timeGroup(t, 1m)", FROM, TO)
    with pytest.raises(DashboardError, match="expects 1"):
        expand_macros("$__timeFilter()", FROM, TO)


def test_template_variables_are_interpolated_like_grafana() -> None:
    sql = "WHERE ${q:sqlstring} = '' OR x = $n OR y = ${n} OR z = [[n]] AND $__timeFilter(t)"
    out = interpolate_variables(sql, {"q": "can't", "n": "7"})
    assert out == "WHERE 'can''t' = '' OR x = 7 OR y = 7 OR z = 7 AND $__timeFilter(t)"
    with pytest.raises(DashboardError, match="not defined"):
        interpolate_variables("$missing", {})
    boards = all_dashboards()
    codes = next(b for b in boards.values() if b["uid"] == "enx-error-codes")
    assert d.variable_defaults(codes) == {"search": ""}
    assert codes["templating"]["list"][0]["type"] == "textbox"


def test_select_columns_needs_every_item_named() -> None:
    assert select_columns("WITH 1 AS k SELECT a, t.b, f(x) AS c, `d e` FROM t") == ["a", "b", "c", "d e"]
    assert select_columns("SELECT (SELECT count() FROM x) AS n, n * 2 AS m") == ["n", "m"]
    assert select_columns("SELECT DISTINCT a FROM t -- comment, with, commas") == ["a"]
    with pytest.raises(DashboardError, match="name the SELECT item"):
        select_columns("SELECT count() FROM t")
    with pytest.raises(DashboardError, match="name the SELECT item"):
        select_columns("SELECT * FROM t")


def test_alert_rules_are_valid_unified_alerting_provisioning() -> None:
    doc = yaml.safe_load((PROVISIONING / "alerting" / "enx-alerts.yaml").read_text(encoding="utf-8"))
    assert doc["apiVersion"] == 1
    rules = {r["uid"]: r for g in doc["groups"] for r in g["rules"]}
    assert list(rules) == ["enx-transcode-stalled", "enx-processor-dead-letters", "enx-webhook-missing"]
    for group in doc["groups"]:
        assert group["folder"] and group["interval"] and group["orgId"] == 1
    dashboard_uids = {dash["uid"] for dash in d.load_dashboards(JSON_DIR).values()}
    for rule in rules.values():
        ref_ids = [x["refId"] for x in rule["data"]]
        assert rule["condition"] in ref_ids and len(set(ref_ids)) == len(ref_ids)
        for data in rule["data"]:
            assert data["model"]["refId"] == data["refId"]
            if data["datasourceUid"] == "__expr__":
                assert data["model"]["expression"] in ref_ids
        query = next(x for x in rule["data"] if x["datasourceUid"] == "enx-clickhouse")
        assert query["model"]["datasource"] == {"type": "grafana-clickhouse-datasource", "uid": "enx-clickhouse"}
        assert rule["noDataState"] == "OK" and rule["labels"]["severity"]
        assert rule["annotations"]["__dashboardUid__"] in dashboard_uids
    stalled = next(x for x in rules["enx-transcode-stalled"]["data"] if x["refId"] == "A")["model"]["rawSql"]
    assert "enablex.sessions FINAL" in stalled and "sla_state = 'breached'" in stalled
    assert rules["enx-transcode-stalled"]["labels"]["severity"] == "page"
    failed = next(x for x in rules["enx-processor-dead-letters"]["data"] if x["refId"] == "A")["model"]["rawSql"]
    assert "enablex.dead_letters FINAL" in failed and "reason_code = 'processor_failed'" in failed
    queries = d.alert_rule_queries(PROVISIONING)
    assert [(q.rule, q.ref_id) for q in queries] == [("Transcode stalled", "A"),
                                                     ("Processor could not handle an event", "A"),
                                                     ("Webhooks missing", "A")]
    assert "overdue_min" in queries[0].expected_columns and "records" in queries[1].expected_columns
    missing = rules["enx-webhook-missing"]
    assert missing["labels"]["severity"] == "ticket"
    assert queries[2].expected_columns == ["app_id", "findings"]  # one instance per app, one number
    assert "enablex.reconcile_findings FINAL" in queries[2].sql and "$__timeFilter(found_at)" in queries[2].sql
    assert all(x["relativeTimeRange"] == {"from": 3600, "to": 0} for x in missing["data"])  # the last hour
    (threshold,) = [x["model"] for x in missing["data"] if x["model"].get("type") == "threshold"]
    assert threshold["conditions"][0]["evaluator"] == {"type": "gt", "params": [5]}


def test_provisioning_points_grafana_at_the_datasource_uid_the_panels_use() -> None:
    ds = yaml.safe_load((PROVISIONING / "datasources" / "clickhouse.yaml").read_text(encoding="utf-8"))
    (source,) = ds["datasources"]
    assert (source["type"], source["uid"]) == ("grafana-clickhouse-datasource", "enx-clickhouse")
    assert source["isDefault"] is True
    prometheus = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text(encoding="utf-8"))
    (source,) = prometheus["datasources"]
    assert (source["type"], source["uid"]) == (d.PROMETHEUS_TYPE, d.PROMETHEUS_UID) and source["isDefault"] is False
    assert sorted(p.name for p in (PROVISIONING / "datasources").iterdir()) == ["clickhouse.yaml", "prometheus.yaml"]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "enx-streams.yaml").read_text(encoding="utf-8"))
    assert providers["providers"][0]["type"] == "file"


def test_every_alert_rule_has_a_runbook_that_exists() -> None:
    rules = d.load_alert_rules(PROVISIONING)
    assert rules
    seen = set()
    for rule in rules:
        url = rule.get("annotations", {}).get("runbook_url", "")
        assert url.startswith("docs/runbooks/") and url.endswith(".md"), (rule["title"], url)
        path = ROOT / url
        assert path.is_file(), f"{rule['title']}: runbook {url} does not exist"
        text = path.read_text(encoding="utf-8")
        assert rule["title"] in text and rule["uid"] in text, f"{url} is not the runbook of {rule['title']}"
        for section in ("## What it means", "## What to check", "## What to do"):
            assert section in text, f"{url} lacks {section!r}"
        seen.add(url)
    assert len(seen) == len(rules), "one runbook per rule"


def test_the_stall_rule_is_bounded_in_time_and_newest_first() -> None:
    (query,) = [q for q in d.alert_rule_queries(PROVISIONING) if q.rule == "Transcode stalled"]
    assert "sla_deadline > $__toTime - INTERVAL 7 DAY" in query.sql
    assert "ORDER BY sla_deadline DESC" in query.sql
