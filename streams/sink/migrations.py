"""The numbered ClickHouse migrations of ``schemas/clickhouse/``: applied forwards, recorded, never twice.

A migration is a file ``NNN_name.sql``; its statements each end with ``;`` at the end of a line (that is
where they are split; ``--`` comment lines are dropped). Every statement is idempotent on its own
(``IF NOT EXISTS``, guarded inserts), so a migration interrupted half-way is simply applied again. Once
all its statements succeeded, a row (version, name, applied_at) goes to ``enablex.schema_migrations``;
a rerun applies only the versions not recorded there, which is nothing when all are.

With the embedded engine, the sink worker that owns the data directory applies pending migrations at its
start; ``enx-streams migrate`` applies them itself only when no owner runs.

The files name the contract's database, ``enablex``. The same migrations build another database (a
rebuild's shadow, ``enablex_rebuild``): :func:`for_database` renames the database in each statement, and
that database gets a ledger of its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams.config import Settings
from streams.schema_files import schemas_dir

MIGRATIONS_DIR = schemas_dir() / "clickhouse"
DATABASE = "enablex"  # the contract's database, as the migration files name it
LEDGER = f"{DATABASE}.schema_migrations"
_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# the database as the files name it: before a '.' (a qualified name), or after CREATE/DROP DATABASE [IF [NOT] EXISTS]
_QUALIFIED = re.compile(rf"\b{DATABASE}(?=\.[A-Za-z_`])")
_DATABASE_STATEMENT = re.compile(rf"(\bDATABASE\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?){DATABASE}\b", re.IGNORECASE)
_FILE = re.compile(r"^(\d{3,})_([A-Za-z0-9_]+)\.sql$")
_STATEMENT_END = re.compile(r";\s*$")

Echo = Callable[[str], None]


class MigrationError(RuntimeError):
    """A migration failed; the message names the file and the statement."""


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.version:03d}_{self.name}"

    def statements(self) -> list[str]:
        return split_statements(self.path.read_text(encoding="utf-8"))


def split_statements(text: str) -> list[str]:
    """The statements of a migration file: split where a line ends with ``;``, comment lines dropped. Pure."""
    statements: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith("--"):
            continue
        current.append(line)
        if _STATEMENT_END.search(line):
            sql = "\n".join(current).strip()
            sql = _STATEMENT_END.sub("", sql).strip()
            if sql:
                statements.append(sql)
            current = []
    rest = "\n".join(current).strip()
    if rest:
        statements.append(rest)
    return statements


def checked(database: str) -> str:
    """``database`` if it is a plain ClickHouse name (safe to put in a statement), else MigrationError."""
    if not _DATABASE_NAME.match(database):
        raise MigrationError(f"{database!r} is not a plain ClickHouse database name (letters, digits, '_')")
    return database


def for_database(sql: str, database: str) -> str:
    """A statement of the migration files with its database ``enablex`` renamed ``database`` (the names it
    qualifies, ``CREATE DATABASE``). Pure."""
    if checked(database) == DATABASE:
        return sql
    return _DATABASE_STATEMENT.sub(lambda m: m.group(1) + database, _QUALIFIED.sub(database, sql))


def ledger(database: str = DATABASE) -> str:
    return f"{checked(database)}.schema_migrations"


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every ``NNN_name.sql`` in ``directory``, in version order; two files with one version is an error."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path} is not named NNN_name.sql; rename it so its order is clear")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path} and {found[version].path} share version {version}; renumber one")
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


def applied_versions(client: Any, database: str = DATABASE) -> set[int]:
    """Versions recorded in the ledger of ``database`` (empty on a fresh engine)."""
    exists = client.query(f"SELECT count() FROM system.tables WHERE database = '{checked(database)}' "
                          "AND name = 'schema_migrations'").result_rows[0][0]
    if not exists:
        return set()
    return {int(row[0]) for row in client.query(f"SELECT version FROM {ledger(database)} FINAL").result_rows}


def pending(client: Any, migrations: list[Migration], database: str = DATABASE) -> list[Migration]:
    done = applied_versions(client, database)
    return [m for m in migrations if m.version not in done]


def apply(client: Any, echo: Echo = lambda _m: None, *, target: int | None = None,
          directory: Path = MIGRATIONS_DIR, database: str = DATABASE) -> list[str]:
    """Apply the pending migrations in order (up to ``target`` when given) to ``database`` (the contract's
    ``enablex`` unless told otherwise); returns the labels applied.

    Synchronous (clickhouse-connect): from async code call it with ``asyncio.to_thread``.
    """
    done: list[str] = []
    for migration in pending(client, discover(directory), database):
        if target is not None and migration.version > target:
            break
        for number, sql in enumerate(migration.statements(), start=1):
            try:
                client.command(for_database(sql, database))
            except Exception as exc:  # noqa: BLE001 - any failure stops here, with where it happened
                first = sql.splitlines()[0][:120]
                raise MigrationError(f"migration {migration.path.name}, statement {number} ({first} ...) "
                                     f"failed: {exc}") from exc
        client.insert(ledger(database), [[migration.version, migration.label, dt.datetime.now(dt.timezone.utc)]],
                      column_names=["version", "name", "applied_at"])
        echo(f"clickhouse: applied migration {migration.label}" + ("" if database == DATABASE else f" to {database}"))
        done.append(migration.label)
    return done


def run_cli(settings: Settings, echo: Echo = print) -> int:
    """``enx-streams migrate``: apply pending migrations; 0 on success (also when there was nothing to do)."""
    from streams.sink.clickhouse import ClickHouseError, OwnerError, OwnerLock, connect, current_owner, \
        redact_dsn, settings_path

    path = settings_path(settings)
    lock: OwnerLock | None = None
    if settings.clickhouse_is_embedded and path is not None:
        owner = current_owner(path)
        if owner is not None:
            echo(f"the embedded ClickHouse at {path} is owned by {owner.describe()}, which applied the "
                 f"migrations at its start; nothing to do (restart it to apply new ones)")
            return 0
        try:
            lock = OwnerLock.acquire(path, "enx-streams migrate")
        except OwnerError as exc:
            echo(f"error: {exc}")
            return 1
    client = None
    try:
        client = connect(settings)
        applied = apply(client, echo)
        where = str(path) if path is not None else redact_dsn(settings.clickhouse_url)
        if applied:
            echo(f"applied {len(applied)} migration(s) to {where}")
        else:
            echo(f"{where} is up to date: no migration to apply")
        return 0
    except (ClickHouseError, MigrationError) as exc:
        echo(f"error: {exc}")
        return 1
    finally:
        if client is not None:
            client.close()
        if lock is not None:
            lock.release()
