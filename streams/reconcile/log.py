"""What the log holds, asked of ClickHouse: the webhook types seen per session, the findings already sunk.

A :data:`QueryFn` takes SQL and returns its result as JSONEachRow bytes. In production it is
:func:`streams.sink.query.run_query` (through the owner of the embedded data directory, or a server);
tests may hand it a chdb client of their own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence

from streams.config import Settings

QueryFn = Callable[[str], bytes]
CHUNK = 500  # sessions (or ids) per query, so a busy day does not make one enormous IN list


def literal(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _chunks(items: Sequence, size: int = CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _rows(data: bytes) -> Iterator[dict]:
    for line in data.splitlines():
        if line.strip():
            yield json.loads(line)


def seen_types(query: QueryFn, sessions: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    """``{app_id}/{conf_num}`` -> the webhook types in ``webhook_events`` for each of ``sessions`` that has any."""
    wanted = sorted(set(sessions))
    seen: dict[str, set[str]] = {}
    for chunk in _chunks(wanted):
        pairs = ", ".join(f"({literal(a)}, {literal(c)})" for a, c in chunk)
        sql = (f"SELECT app_id, conf_num, groupUniqArray(type) AS types FROM enablex.webhook_events "
               f"WHERE (app_id, conf_num) IN ({pairs}) GROUP BY app_id, conf_num")
        for row in _rows(query(sql)):
            seen[f"{row['app_id']}/{row['conf_num']}"] = set(row["types"])
    return seen


def sunk_findings(query: QueryFn, ids: Iterable[str]) -> set[str]:
    """Those of ``ids`` already in ``reconcile_findings``."""
    wanted = sorted(set(ids))
    found: set[str] = set()
    for chunk in _chunks(wanted):
        sql = (f"SELECT DISTINCT finding_id FROM enablex.reconcile_findings "
               f"WHERE finding_id IN ({', '.join(literal(i) for i in chunk)})")
        found |= {row["finding_id"] for row in _rows(query(sql))}
    return found


def clickhouse_query(settings: Settings) -> QueryFn:
    """The production query function (blocking: call it off the event loop). It asks only the owner of an
    embedded directory, never opens one itself: with the sink down what ClickHouse holds is stale (every
    webhook since would look missing), and a pass every few minutes would hold the directory a starting
    sink waits for. The pass fails instead and is tried again at the next interval."""
    from streams.sink.query import run_query

    return lambda sql: run_query(settings, sql, "JSONEachRow", timeout_s=60.0, open_unowned=False)
