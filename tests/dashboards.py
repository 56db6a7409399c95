"""The Grafana dashboards and alert rules of ``dashboards/``, read as data (pure helpers, no I/O but reading).

Two datasources: ClickHouse (``enx-clickhouse``), whose queries are SQL, and Prometheus (``enx-prometheus``),
whose queries are PromQL (read by :mod:`tests.promql`). A query for any other datasource is an error here, so
no panel or rule escapes both checks. Used by the tests that run every panel's SQL against ClickHouse:

- :func:`panel_queries`: every ClickHouse target of every panel of every dashboard JSON, with the columns
  the panel uses;
- :func:`alert_rule_queries`: every ClickHouse query of the provisioned alert rules;
- :func:`expand_macros`: what Grafana and the ``grafana-clickhouse-datasource`` plugin do to a query
  before ClickHouse sees it, for a fixed time range: template variables first (as the Grafana frontend
  does), then the plugin's macros (as its backend, ``pkg/macros/macros.go``, does).

The columns a panel uses are the names of its query's outermost ``SELECT`` list: by convention every item
there is ``expression AS alias`` or a bare column, so the panel's field names, overrides and
transformations can rely on them; :func:`select_columns` reads them and refuses an unnamed item.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

DATASOURCE_TYPE = "grafana-clickhouse-datasource"
DATASOURCE_UID = "enx-clickhouse"
PROMETHEUS_TYPE = "prometheus"
PROMETHEUS_UID = "enx-prometheus"
EXPRESSIONS_UID = "__expr__"  # Grafana's server-side expressions (reduce, threshold) of an alert rule

REPO_ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS_DIR = REPO_ROOT / "dashboards" / "json"
PROVISIONING_DIR = REPO_ROOT / "dashboards" / "provisioning"


class DashboardError(ValueError):
    """A dashboard or rule that Grafana or the ClickHouse plugin would not run as intended."""


class PanelQuery(NamedTuple):
    dashboard: str
    panel_title: str
    sql: str
    expected_columns: list[str]


class AlertQuery(NamedTuple):
    rule: str
    ref_id: str
    sql: str
    expected_columns: list[str]


# -- reading dashboards -----------------------------------------------------------------------------

def load_dashboards(dashboards_dir: Path = DASHBOARDS_DIR) -> dict[str, dict[str, Any]]:
    """Every ``*.json`` under ``dashboards_dir`` by file name, parsed (a parse error names the file)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(dashboards_dir).glob("*.json")):
        try:
            out[path.name] = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DashboardError(f"{path} is not valid JSON: {exc}") from exc
    return out


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included (a row itself has no query)."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def variable_defaults(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """The current (else default) value of each template variable, as Grafana uses it at first load."""
    values: dict[str, str] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        current = var.get("current") or {}
        value = current.get("value", var.get("query", ""))
        if isinstance(value, list):
            value = value[0] if value else ""
        values[var["name"]] = "" if value is None else str(value)
    return values


def is_clickhouse(datasource: Any) -> bool:
    return isinstance(datasource, Mapping) and datasource.get("type") == DATASOURCE_TYPE \
        and datasource.get("uid") == DATASOURCE_UID


def is_prometheus(datasource: Any) -> bool:
    return isinstance(datasource, Mapping) and datasource.get("type") == PROMETHEUS_TYPE \
        and datasource.get("uid") == PROMETHEUS_UID


def _known(datasource: Any, where: str) -> bool:
    """True for ClickHouse, False for Prometheus (checked by tests.promql), an error for anything else."""
    if is_clickhouse(datasource):
        return True
    if is_prometheus(datasource):
        return False
    raise DashboardError(f"{where}: datasource {datasource!r} is neither ClickHouse ({DATASOURCE_UID}) nor "
                         f"Prometheus ({PROMETHEUS_UID})")


def panel_queries(dashboards_dir: Path = DASHBOARDS_DIR, *, interpolate: bool = True) -> list[PanelQuery]:
    """(dashboard title, panel title, SQL, columns the panel uses) for every ClickHouse target of every panel.

    With ``interpolate`` the dashboard's template variables are replaced by their current values (what
    Grafana sends at first load); the plugin's macros are left for :func:`expand_macros`.
    """
    out: list[PanelQuery] = []
    for name, dashboard in load_dashboards(dashboards_dir).items():
        title = dashboard.get("title") or name
        variables = variable_defaults(dashboard)
        for panel in iter_panels(dashboard):
            for target in panel.get("targets", []):
                datasource = target.get("datasource") or panel.get("datasource")
                if not _known(datasource, f"{title} / {panel.get('title')}") or not target.get("rawSql"):
                    continue
                sql = target["rawSql"]
                columns = select_columns(sql, where=f"{title} / {panel.get('title')}")
                if interpolate:
                    sql = interpolate_variables(sql, variables)
                out.append(PanelQuery(title, panel.get("title", ""), sql, columns))
    return out


# -- reading alert rules ------------------------------------------------------------------------------

def load_alert_rules(provisioning_dir: Path = PROVISIONING_DIR) -> list[dict[str, Any]]:
    """Every rule of every group in ``<provisioning>/alerting/*.yaml`` (unified alerting file format)."""
    import yaml

    rules: list[dict[str, Any]] = []
    for path in sorted((Path(provisioning_dir) / "alerting").glob("*.y*ml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if doc.get("apiVersion") != 1:
            raise DashboardError(f"{path}: apiVersion must be 1")
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                rules.append({**rule, "_group": group.get("name"), "_folder": group.get("folder"),
                              "_file": path.name})
    return rules


def alert_rule_queries(provisioning_dir: Path = PROVISIONING_DIR) -> list[AlertQuery]:
    """(rule title, refId, SQL, columns) for every ClickHouse query of every provisioned alert rule."""
    out: list[AlertQuery] = []
    for rule in load_alert_rules(provisioning_dir):
        for data in rule.get("data", []):
            model = data.get("model") or {}
            uid = data.get("datasourceUid")
            if uid == EXPRESSIONS_UID or not _known({"type": (model.get("datasource") or {}).get("type"), "uid": uid},
                                                    f"alert rule {rule.get('title')}") or not model.get("rawSql"):
                continue
            sql = model["rawSql"]
            out.append(AlertQuery(rule.get("title", ""), data.get("refId", ""), sql,
                                  select_columns(sql, where=f"alert rule {rule.get('title')}")))
    return out


# -- the outermost SELECT list ----------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^'\\]|\\.|'')*')
  | (?P<quoted>`(?:[^`\\]|\\.)*`|"(?:[^"\\]|\\.)*")
  | (?P<open>[(\[])
  | (?P<close>[)\]])
  | (?P<comma>,)
  | (?P<word>[A-Za-z_$][A-Za-z0-9_$.]*)
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)


def _tokens(sql: str) -> list[tuple[str, str, int]]:
    """(kind, text, depth) for every token but whitespace and comments."""
    out: list[tuple[str, str, int]] = []
    depth = 0
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup or "other"
        text = m.group()
        if kind in ("ws", "comment"):
            continue
        if kind == "close":
            depth -= 1
        out.append((kind, text, depth))
        if kind == "open":
            depth += 1
    return out


def _unquote(name: str) -> str:
    return name[1:-1] if name[:1] in "`\"" else name


def select_columns(sql: str, where: str = "query") -> list[str]:
    """The names of the outermost SELECT list (``expr AS alias`` or a bare column), in order.

    Raises :class:`DashboardError` for ``*`` or an unnamed expression: a panel must name what it uses.
    """
    tokens = _tokens(sql)
    start = next((i for i, (k, t, d) in enumerate(tokens) if d == 0 and k == "word" and t.upper() == "SELECT"),
                 None)
    if start is None:
        raise DashboardError(f"{where}: no top-level SELECT")
    i = start + 1
    if i < len(tokens) and tokens[i][1].upper() == "DISTINCT":
        i += 1
    items: list[list[tuple[str, str, int]]] = [[]]
    enders = {"FROM", "WHERE", "GROUP", "ORDER", "LIMIT", "UNION", "HAVING", "SETTINGS", "FORMAT"}
    for kind, text, depth in tokens[i:]:
        if depth == 0 and kind == "word" and text.upper() in enders:
            break
        if depth == 0 and kind == "comma":
            items.append([])
            continue
        items[-1].append((kind, text, depth))
    names: list[str] = []
    for item in items:
        if not item:
            raise DashboardError(f"{where}: an empty item in the SELECT list")
        if len(item) >= 3 and item[-2][2] == 0 and item[-2][1].upper() == "AS" and item[-1][0] in ("word", "quoted"):
            names.append(_unquote(item[-1][1]))
        elif len(item) == 1 and item[0][0] in ("word", "quoted") and item[0][1] != "*":
            names.append(_unquote(item[0][1]).rsplit(".", 1)[-1])
        else:
            text = " ".join(t for _, t, _ in item)
            raise DashboardError(f"{where}: name the SELECT item `{text[:80]}` with AS, so the panel can rely on it")
    return names


# -- template variables and macros ------------------------------------------------------------------

def sqlstring(value: str) -> str:
    """Grafana's ``${var:sqlstring}`` format for one value: quoted, ``'`` doubled."""
    return "'" + value.replace("'", "''") + "'"


_VARIABLE = re.compile(r"\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<fmt>[A-Za-z]+))?\}"
                       r"|\[\[(?P<old>[A-Za-z_][A-Za-z0-9_]*)\]\]"
                       r"|\$(?P<plain>(?!__)[A-Za-z_][A-Za-z0-9_]*)")


def interpolate_variables(sql: str, values: Mapping[str, str]) -> str:
    """Replace ``$var``, ``${var}``, ``${var:sqlstring}`` / ``${var:raw}`` and ``[[var]]`` as Grafana does.

    Grafana's own ``$__`` variables and macros are left alone; an unknown variable is an error.
    """
    def repl(m: re.Match[str]) -> str:
        name = m.group("braced") or m.group("old") or m.group("plain")
        if name.startswith("__"):
            return m.group()
        if name not in values:
            raise DashboardError(f"template variable ${name} is not defined by the dashboard")
        fmt = m.group("fmt")
        if fmt in (None, "raw", "text"):
            return values[name]
        if fmt in ("sqlstring", "singlequote"):
            return sqlstring(values[name])
        raise DashboardError(f"variable format :{fmt} is not one this project uses (sqlstring or raw)")

    return _VARIABLE.sub(repl, sql)


def _utc(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when


def _date(when: dt.datetime) -> str:
    return f"toDate('{_utc(when).astimezone(dt.timezone.utc):%Y-%m-%d}')"


def _seconds(when: dt.datetime) -> str:
    return f"toDateTime({int(_utc(when).timestamp())})"


def _millis(when: dt.datetime) -> str:
    return f"fromUnixTimestamp64Milli({int(round(_utc(when).timestamp() * 1000))})"


_MACRO = re.compile(r"\$__(?P<name>[A-Za-z_]+)\b(?:\((?P<args>[^()]*)\))?")
_MACRO_NESTED = re.compile(r"\$__[A-Za-z_]+\([^()]*\(")


def expand_macros(sql: str, from_dt: dt.datetime, to_dt: dt.datetime, *, interval_s: float = 60,
                  variables: Mapping[str, str] | None = None) -> str:
    """The SQL the ClickHouse plugin sends for the time range ``[from_dt, to_dt]`` (naive means UTC).

    Implements the plugin's macros: ``$__timeFilter(col)``, ``$__timeFilter_ms(col)``, ``$__dateFilter(col)``,
    ``$__dateTimeFilter(date, time)`` (alias ``$__dt``), ``$__fromTime``, ``$__toTime``, ``$__fromTime_ms``,
    ``$__toTime_ms``, ``$__timeInterval(col)``, ``$__timeInterval_ms(col)`` and ``$__interval_s``. With
    ``variables``, template variables are interpolated first. A macro argument with parentheses is refused:
    the plugin's parser stops at the first ``)``, so ``$__timeFilter(coalesce(a, b))`` would break in Grafana.
    """
    if variables is not None:
        sql = interpolate_variables(sql, variables)
    nested = _MACRO_NESTED.search(sql)
    if nested:
        raise DashboardError(f"macro argument with parentheses at `{nested.group()}`: the plugin cannot parse it; "
                             f"give the macro a plain column")
    seconds = max(int(interval_s), 1)
    millis = max(int(interval_s * 1000), 1)

    def repl(m: re.Match[str]) -> str:
        name = m.group("name")
        raw_args = m.group("args")
        args = [a.strip() for a in raw_args.split(",")] if raw_args is not None else []

        def need(n: int) -> None:
            if len(args) != n or not all(args):
                raise DashboardError(f"$__{name} expects {n} argument(s), got `{m.group()}`")

        if name == "fromTime":
            return _seconds(from_dt)
        if name == "toTime":
            return _seconds(to_dt)
        if name == "fromTime_ms":
            return _millis(from_dt)
        if name == "toTime_ms":
            return _millis(to_dt)
        if name == "interval_s":
            return str(seconds)
        if name == "timeFilter":
            need(1)
            return f"{args[0]} >= {_seconds(from_dt)} AND {args[0]} <= {_seconds(to_dt)}"
        if name == "timeFilter_ms":
            need(1)
            return f"{args[0]} >= {_millis(from_dt)} AND {args[0]} <= {_millis(to_dt)}"
        if name == "dateFilter":
            need(1)
            return f"{args[0]} >= {_date(from_dt)} AND {args[0]} <= {_date(to_dt)}"
        if name in ("dateTimeFilter", "dt"):
            need(2)
            return (f"({args[0]} >= {_date(from_dt)} AND {args[0]} <= {_date(to_dt)}) AND "
                    f"({args[1]} >= {_seconds(from_dt)} AND {args[1]} <= {_seconds(to_dt)})")
        if name == "timeInterval":
            need(1)
            return f"toStartOfInterval(toDateTime({args[0]}), INTERVAL {seconds} second)"
        if name == "timeInterval_ms":
            need(1)
            return f"toStartOfInterval(toDateTime64({args[0]}, 3), INTERVAL {millis} millisecond)"
        raise DashboardError(f"$__{name} is not a macro of {DATASOURCE_TYPE}")

    # longest names first is implicit: the pattern takes the whole word (fromTime_ms, not fromTime)
    return _MACRO.sub(repl, sql)
