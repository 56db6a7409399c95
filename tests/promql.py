"""The Prometheus side of ``dashboards/``: every PromQL query of the panels and rules, the metric and label
names each one reads, and the names ingest and the worker export (pure helpers, no I/O but reading).

PromQL is not run here (no Prometheus in the tests); instead each query is parsed by ``promql-parser`` (a
port of Prometheus' own parser: a syntax or type error fails) and :func:`names_in` walks its tree, so a panel
or rule naming a metric or a label nothing exports (a typo, a renamed metric) fails the check instead of
drawing an empty graph or never firing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from tests.dashboards import (DASHBOARDS_DIR, PROMETHEUS_UID, PROVISIONING_DIR, DashboardError, is_prometheus,
                              iter_panels, load_alert_rules, load_dashboards)

# what Prometheus itself gives every target, and the labels it attaches
PROMETHEUS_SERIES = {"up": frozenset(), "scrape_duration_seconds": frozenset(), "scrape_samples_scraped": frozenset()}
TARGET_LABELS = frozenset({"job", "instance"})


class PromQuery(NamedTuple):
    where: str   # "<dashboard> / <panel>" or "alert rule <title>"
    ref_id: str
    expr: str


def queries(dashboards_dir: Path = DASHBOARDS_DIR, provisioning_dir: Path = PROVISIONING_DIR) -> list[PromQuery]:
    """Every Prometheus target of every panel and every Prometheus query of every alert rule."""
    out: list[PromQuery] = []
    for name, dashboard in load_dashboards(dashboards_dir).items():
        for panel in iter_panels(dashboard):
            for target in panel.get("targets", []):
                if is_prometheus(target.get("datasource") or panel.get("datasource")):
                    out.append(PromQuery(f"{dashboard.get('title') or name} / {panel.get('title')}",
                                         target.get("refId", ""), target.get("expr", "")))
    for rule in load_alert_rules(provisioning_dir):
        for data in rule.get("data", []):
            if data.get("datasourceUid") == PROMETHEUS_UID:
                out.append(PromQuery(f"alert rule {rule.get('title')}", data.get("refId", ""),
                                     (data.get("model") or {}).get("expr", "")))
    return out


# -- reading a query --------------------------------------------------------------------------------

# Grafana's own variables in a Prometheus query, replaced by a value of their kind before parsing (Grafana does
# the same before it sends the query)
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "6h", "__range_s": "21600",
                     "__interval_ms": "15000"}
_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


class Names(NamedTuple):
    metrics: frozenset[str]
    labels: frozenset[str]


def parse(expr: str, where: str = "query") -> Any:
    """The query's syntax tree, by promql-parser (the Rust port of Prometheus' own parser, with its type
    checks), after Grafana's variables are replaced; a clear error for anything Prometheus would refuse."""
    import promql_parser

    def variable(m: re.Match[str]) -> str:
        if m.group(1) not in GRAFANA_VARIABLES:
            raise DashboardError(f"{where}: ${m.group(1)} is not a Grafana variable this project uses")
        return GRAFANA_VARIABLES[m.group(1)]

    text = _VARIABLE.sub(variable, expr)
    if not text.strip():
        raise DashboardError(f"{where}: an empty PromQL query")
    try:
        return promql_parser.parse(text)
    except ValueError as exc:
        raise DashboardError(f"{where}: not valid PromQL ({exc}): {expr}") from None


def names_in(expr: str, where: str = "query") -> Names:
    """The metric names a PromQL expression selects (``x``, or ``{__name__="x"}``) and the label names it
    uses: in matchers, and in ``by``/``without``/``on``/``ignoring``/``group_left``/``group_right`` lists."""
    import promql_parser as P

    metrics: set[str] = set()
    labels: set[str] = set()

    def matchers(group: Any) -> None:
        for matcher in [*group.matchers, *(m for ms in group.or_matchers for m in ms)]:
            if matcher.name == "__name__":
                metrics.add(matcher.value)
            else:
                labels.add(matcher.name)

    def walk(node: Any) -> None:
        if isinstance(node, P.VectorSelector):
            if node.name:
                metrics.add(node.name)
            matchers(node.matchers)
        elif isinstance(node, P.MatrixSelector):
            walk(node.vector_selector)
        elif isinstance(node, P.AggregateExpr):
            if node.modifier is not None:
                labels.update(node.modifier.labels)
            walk(node.expr)
            if node.param is not None:
                walk(node.param)
        elif isinstance(node, P.BinaryExpr):
            modifier = node.modifier
            if modifier is not None:
                if modifier.matching is not None:
                    labels.update(modifier.matching.labels)
                labels.update(modifier.group_labels or ())
            walk(node.lhs)
            walk(node.rhs)
        elif isinstance(node, P.Call):
            for arg in node.args:
                walk(arg)
        elif isinstance(node, (P.ParenExpr, P.UnaryExpr, P.SubqueryExpr)):
            walk(node.expr)
        elif not isinstance(node, (P.NumberLiteral, P.StringLiteral)):
            raise DashboardError(f"{where}: a PromQL node this reader does not know: {type(node).__name__}")

    walk(parse(expr, where))
    return Names(frozenset(metrics), frozenset(labels))


# -- what is exported -------------------------------------------------------------------------------

_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("", "_count", "_sum", "_created"), "info": ("_info",), "untyped": ("",)}


def exported(families: Iterable[Any]) -> dict[str, frozenset[str]]:
    """Series name -> its label names, for prometheus_client metric families (``registry.collect()``): each
    family's series by its type (a counter ``x`` is ``x_total``, a histogram ``x_bucket`` with ``le``...)
    and the labels of its samples."""
    out: dict[str, set[str]] = {}
    for family in families:
        sample_labels = {name for s in family.samples for name in s.labels}
        for suffix in _SUFFIXES[family.type]:
            series = family.name + suffix
            out.setdefault(series, set()).update(sample_labels - ({"le"} if suffix != "_bucket" else set()))
            if suffix == "_bucket":
                out[series].add("le")
    return {name: frozenset(labels) for name, labels in out.items()}


def unknown_names(query: PromQuery, series: Mapping[str, frozenset[str]]) -> list[str]:
    """What ``query`` names that ``series`` (plus Prometheus' own series and target labels) lacks: metrics,
    then labels not carried by any metric the query selects."""
    names = names_in(query.expr, query.where)
    known = {**PROMETHEUS_SERIES, **series}
    problems = [f"metric {m}" for m in sorted(names.metrics - set(known))]
    if not names.metrics:
        problems.append("no metric at all")
    carried = set(TARGET_LABELS).union(*(known.get(m, frozenset()) for m in names.metrics))
    problems += [f"label {label}" for label in sorted(names.labels - carried)]
    return problems
