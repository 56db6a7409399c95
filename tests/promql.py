"""The Prometheus side of ``dashboards/``: every PromQL query of the panels and rules, the metric and label
names each one reads, and the names ingest and the worker export (pure helpers, no I/O but reading).

PromQL is not run here (no Prometheus in the tests); instead :func:`names_in` reads a query with a small
tokenizer, so a panel or rule naming a metric or a label nothing exports (a typo, a renamed metric) fails
the check instead of drawing an empty graph or never firing.
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
FUNCTIONS_AND_KEYWORDS_WITH_PARENS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
OPERATOR_WORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}


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

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<variable>\$\{?[A-Za-z_][A-Za-z0-9_]*\}?)
  | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<open>\()
  | (?P<close>\))
  | (?P<lbrace>\{)
  | (?P<rbrace>\})
  | (?P<other>[-+*/%^=!<>~,]+)
""", re.VERBOSE)


def _tokens(expr: str, where: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise DashboardError(f"{where}: cannot read the PromQL at `{expr[pos:pos + 30]}`")
        if m.lastgroup not in ("ws", "comment"):
            out.append((m.lastgroup or "other", m.group()))
        pos = m.end()
    return out


class Names(NamedTuple):
    metrics: frozenset[str]
    labels: frozenset[str]


def names_in(expr: str, where: str = "query") -> Names:
    """The metric names a PromQL expression selects and the label names it uses (in matchers and in
    ``by``/``without``/``on``/``ignoring``/``group_left``/``group_right`` lists). Functions and aggregations
    (an identifier before ``(``) and operator words are neither; ``{__name__="x"}`` selects ``x``."""
    if not expr.strip():
        raise DashboardError(f"{where}: an empty PromQL query")
    tokens = _tokens(expr, where)
    metrics: set[str] = set()
    labels: set[str] = set()
    depth = 0
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "open":
            depth += 1
        elif kind == "close":
            depth -= 1
        elif kind == "lbrace":
            end = next((j for j in range(i + 1, len(tokens)) if tokens[j][0] == "rbrace"), None)
            if end is None:
                raise DashboardError(f"{where}: a label matcher without its closing brace")
            inner = tokens[i + 1:end]
            for j, (k, t) in enumerate(inner):
                if k == "ident" and (j == 0 or inner[j - 1][1] == ","):
                    if t == "__name__" and j + 2 < len(inner) and inner[j + 1][1] == "=" \
                            and inner[j + 2][0] == "string":
                        metrics.add(inner[j + 2][1][1:-1])
                    elif t != "__name__":
                        labels.add(t)
            i = end
        elif kind == "ident":
            lowered = text.lower()
            if lowered in FUNCTIONS_AND_KEYWORDS_WITH_PARENS:
                if following[0] != "open":
                    raise DashboardError(f"{where}: `{text}` needs a label list in parentheses")
                end = next(j for j in range(i + 2, len(tokens)) if tokens[j][0] == "close")
                labels.update(t for k, t in tokens[i + 2:end] if k == "ident")
                i = end
            elif following[0] == "open" or lowered in OPERATOR_WORDS \
                    or (following[0] == "ident" and following[1].lower() in ("by", "without")):
                pass  # a function or aggregation (``sum by (x) (...)`` too), or an operator
            else:
                metrics.add(text)
        i += 1
    if depth != 0:
        raise DashboardError(f"{where}: unbalanced parentheses")
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
