"""Every PromQL query of the dashboards and alert rules reads metrics and labels that ingest or the worker
exports; the Prometheus datasource, dashboard and rules are what docker-compose.yml serves."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streams.config import Settings
from streams.ingest.metrics import IngestMetrics
from streams.sink.consumer import SinkStats
from streams.worker import ROLES
from streams.worker_metrics import WorkerMetrics
from tests import dashboards as d
from tests import promql
from tests.dashboards import DashboardError

ROOT = Path(__file__).resolve().parents[2]
PROVISIONING = ROOT / "dashboards" / "provisioning"


class _Sink:
    stats = SinkStats(rows_by_table={"webhook_events": 1})


def exported_series() -> dict[str, frozenset[str]]:
    """What ingest and a worker of every role export, each labelled metric given one sample so its labels show
    (a labelled metric with none would hide them: the last assertion catches a new one left out here)."""
    ingest = IngestMetrics()
    ingest.accepted.labels("recording").inc()
    ingest.rejected.labels("not_json").inc()
    ingest.durable_by.labels("kafka").inc()
    worker = WorkerMetrics(Settings(), ROLES)
    worker.processor.handled["enablex.webhooks.v1"] += 1
    worker.processor.rejected["enablex.webhooks.v1"] += 1
    worker.processor.alerts["transcode_stalled"] += 1
    worker.sink.watch(_Sink())
    for sample in worker.lag.samples.values():
        sample.lag = {("enablex.webhooks.v1", 0): 0}
    families = [*ingest.registry.collect(), *worker.registry.collect()]
    unsampled = [f.name for f in families if not f.samples]
    assert not unsampled, f"give these a sample above, so their labels are known: {unsampled}"
    return promql.exported(families)


SERIES = exported_series()
QUERIES = promql.queries()


def test_there_are_prometheus_queries_in_a_dashboard_and_in_rules() -> None:
    assert sum(1 for q in QUERIES if q.where.startswith("alert rule ")) == 3
    assert sum(1 for q in QUERIES if not q.where.startswith("alert rule ")) >= 20


@pytest.mark.parametrize("query", QUERIES, ids=[f"{q.where}/{q.ref_id}" for q in QUERIES])
def test_every_promql_query_reads_exported_metrics_and_labels(query: promql.PromQuery) -> None:
    assert promql.unknown_names(query, SERIES) == []


def test_a_query_naming_an_unknown_metric_or_label_fails() -> None:
    def problems(expr: str) -> list[str]:
        return promql.unknown_names(promql.PromQuery("test", "A", expr), SERIES)

    assert problems("sum by (role) (enx_worker_consumer_lag)") == []
    assert problems("sum(rate(enx_sink_rows_inserted[5m]))") == ["metric enx_sink_rows_inserted"]  # no _total
    assert problems("sum by (rol) (enx_worker_consumer_lag)") == ["label rol"]
    assert problems('enx_sink_records_total{table="x"}') == ["label table"]
    assert problems('{__name__="enx_nothing"}') == ["metric enx_nothing"]
    assert problems("vector(1)") == ["no metric at all"]
    assert problems('up{job=~"enx-.*"} == 0') == []


def test_the_reader_tells_metrics_from_functions_keywords_and_labels() -> None:
    names = promql.names_in('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="1, y", z!~"b"}[$__rate_interval] '
                            'offset 1h))) / on (k) group_left (g) b > bool 2 and c unless sum(d) without (w) '
                            'or max_over_time({__name__="e", v="1"}[5m:1m])')
    assert names.metrics == {"a_bucket", "b", "c", "d", "e"}
    assert names.labels == {"le", "x", "z", "k", "g", "w", "v"}
    for broken in ("sum(a", 'a{x="1"', "", "a ? b",
                   "rate(a)",                   # a type error: rate takes a range vector
                   "a[$__unknown_interval]"):   # not a Grafana variable
        with pytest.raises(DashboardError):
            promql.names_in(broken)


def test_the_pipeline_dashboard_reads_prometheus() -> None:
    boards = {b["uid"]: b for b in d.load_dashboards().values()}
    board = boards["enx-pipeline-metrics"]
    assert board["title"] == "enx-streams: lag, freshness and throughput"
    panels = list(d.iter_panels(board))
    assert all(d.is_prometheus(t["datasource"]) for p in panels for t in p["targets"])
    read = set().union(*(promql.names_in(t["expr"]).metrics for p in panels for t in p["targets"]))
    # lag, freshness and throughput, at every stage
    assert {"enx_worker_consumer_lag", "enx_worker_last_commit_age_seconds", "enx_ingest_spool_oldest_seconds",
            "enx_ingest_accepted_total", "enx_processor_events_total", "enx_sink_rows_inserted_total",
            "enx_processor_alerts_total", "enx_processor_open_sessions", "enx_processor_sweep_seconds_bucket",
            "enx_sink_insert_failures_total", "enx_sink_dead_letters_total"} <= read
    refs = [(p["title"], t["refId"]) for p in panels for t in p["targets"]]
    assert len(refs) == len(set(refs))


def test_the_prometheus_rules() -> None:
    doc = yaml.safe_load((PROVISIONING / "alerting" / "enx-metrics.yaml").read_text(encoding="utf-8"))
    (group,) = doc["groups"]
    assert doc["apiVersion"] == 1 and group["orgId"] == 1 and group["folder"] == "enx-streams"
    rules = {r["uid"]: r for r in group["rules"]}
    assert list(rules) == ["enx-consumer-lag", "enx-commit-stale", "enx-spool-stale"]

    def parts(rule: dict) -> tuple[str, dict, dict]:
        data = {x["refId"]: x for x in rule["data"]}
        assert rule["condition"] == "C" and set(data) == {"A", "B", "C"}
        assert data["A"]["datasourceUid"] == d.PROMETHEUS_UID and d.is_prometheus(data["A"]["model"]["datasource"])
        assert data["A"]["model"]["instant"] is True
        assert data["B"]["model"]["expression"] == "A" and data["C"]["model"]["expression"] == "B"
        (condition,) = data["C"]["model"]["conditions"]
        return data["A"]["model"]["expr"], condition["evaluator"], rule

    expr, evaluator, rule = parts(rules["enx-consumer-lag"])
    assert "enx_worker_consumer_lag" in expr and "sum by (role, group)" in expr
    assert evaluator == {"type": "gt", "params": [10000]} and rule["for"] == "10m"
    assert rule["noDataState"] == "Alerting"  # no worker scraped at all is not "no lag"
    expr, evaluator, rule = parts(rules["enx-commit-stale"])
    assert expr.startswith("min by (role, group) (enx_worker_last_commit_age_seconds) and on (role, group)")
    assert expr.endswith("> 0)")  # only while records wait: an idle group is not stuck
    assert evaluator == {"type": "gt", "params": [300]} and rule["noDataState"] == "OK"
    assert rule["labels"]["severity"] == "page"
    expr, evaluator, rule = parts(rules["enx-spool-stale"])
    assert expr == "max by (instance) (enx_ingest_spool_oldest_seconds)"  # issue 17: older than 5 minutes
    assert evaluator == {"type": "gt", "params": [300]} and rule["noDataState"] == "OK"
    for rule in rules.values():
        assert rule["annotations"]["__dashboardUid__"] == "enx-pipeline-metrics"
        assert rule["annotations"]["runbook_url"].startswith("docs/runbooks/")
