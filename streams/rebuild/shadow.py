"""The rebuild's ClickHouse side: the live database's tables and rows, the shadow database built by the same
migrations, and the swap. Synchronous (clickhouse-connect): call it off the event loop.

The swap is one ``EXCHANGE TABLES`` statement for every table of the shadow (an Atomic database, ClickHouse's
default and chdb's, exchanges two tables atomically), after which readers of ``enablex`` see the rebuilt
rows. Materialized views are not exchanged: a view follows the tables by name, so ``enablex``'s views feed
the exchanged tables from the next insert on. The shadow's own views are dropped (they would follow the old
tables, by name, into the next rebuild's shadow), and the shadow, holding the old rows now, is renamed
``<db>_previous``: kept until the next rebuild, for a comparison or to exchange back; ``DROP DATABASE
enablex_previous`` frees its disk earlier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streams.sink import migrations

VIEW_ENGINES = ("MaterializedView", "View", "LiveView", "WindowView")


def shadow_of(database: str) -> str:
    return f"{database}_rebuild"


def previous_of(database: str) -> str:
    return f"{database}_previous"


def _tables(client: Any, database: str, views: bool) -> list[str]:
    engines = ", ".join(f"'{e}'" for e in VIEW_ENGINES)
    where = "IN" if views else "NOT IN"
    return [r[0] for r in client.query(f"SELECT name FROM system.tables WHERE database = "
                                       f"'{migrations.checked(database)}' AND engine {where} ({engines}) "
                                       f"ORDER BY name").result_rows]


def row_counts(client: Any, database: str) -> dict[str, int]:
    """Every table of ``database`` but its views, with its rows (as stored, before FINAL collapses them)."""
    return {t: int(client.query(f"SELECT count() FROM {database}.`{t}`").result_rows[0][0])
            for t in _tables(client, database, views=False)}


def writers(client: Any, database: str) -> list[str]:
    """Inserts into ``database`` running now, on a ClickHouse server (another sink)."""
    rows = client.query("SELECT user, query_id, substring(query, 1, 80) FROM system.processes "
                        f"WHERE query_kind = 'Insert' AND positionCaseInsensitive(query, '{database}.') > 0"
                        ).result_rows
    return [f"user {user}, query {query_id}: {text}" for user, query_id, text in rows]


def create(client: Any, database: str, echo: Callable[[str], None]) -> str:
    """The live database brought up to date, then an empty shadow built by the same migrations; its name."""
    migrations.apply(client, echo, database=database)
    shadow = shadow_of(database)
    client.command(f"DROP DATABASE IF EXISTS {migrations.checked(shadow)}")
    migrations.apply(client, echo, database=shadow)
    return shadow


def overdue(client: Any, shadow: str, before_ms: int) -> int:
    """Sessions of the shadow whose webhooks all came before ``before_ms`` (the live run could have judged them)
    still waiting for a stall that was due by then. Sessions that webhooks keep arriving for are not counted:
    with traffic that never stops, there would always be one the watch has not swept yet."""
    at = f"fromUnixTimestamp64Milli(toInt64({int(before_ms)}))"
    return int(client.query(f"SELECT count() FROM {migrations.checked(shadow)}.sessions FINAL WHERE sla_state = "
                            f"'pending' AND sla_deadline < {at} AND last_event_at < {at}").result_rows[0][0])


def swap_statement(database: str, shadow: str, live_tables: list[str], shadow_tables: list[str]) -> list[str]:
    """The statements that put the shadow's tables in ``database``: one EXCHANGE for those both have, a RENAME
    for one only the shadow has (a table of a migration the live database lacked). Pure."""
    both = [t for t in shadow_tables if t in live_tables]
    out = []
    if both:
        out.append("EXCHANGE TABLES " + ", ".join(f"{database}.`{t}` AND {shadow}.`{t}`" for t in both))
    out += [f"RENAME TABLE {shadow}.`{t}` TO {database}.`{t}`" for t in shadow_tables if t not in live_tables]
    return out


def swap(client: Any, database: str, shadow: str) -> str:
    """Swap the shadow's tables in; the old ones end in ``<db>_previous`` (its name returned)."""
    for sql in swap_statement(database, shadow, _tables(client, database, views=False),
                              _tables(client, shadow, views=False)):
        client.command(sql)
    for view in _tables(client, shadow, views=True):
        client.command(f"DROP VIEW IF EXISTS {shadow}.`{view}`")
    previous = previous_of(database)
    client.command(f"DROP DATABASE IF EXISTS {migrations.checked(previous)}")
    client.command(f"RENAME DATABASE {shadow} TO {previous}")
    return previous
