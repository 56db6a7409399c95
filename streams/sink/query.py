"""``enx-streams sql``: run SQL on the configured ClickHouse and return the result in any output format.

- A server DSN (``http(s)://``): clickhouse-connect's ``raw_query`` with a read-only setting (dropped when
  the server's user is read-only already, which forbids setting it).
- The embedded engine: chdb lets one process open a data directory, so the query goes to the process
  that owns it, over its unix socket (:mod:`streams.sink.owner`), and runs read-only there. With no
  owner running (a stopped ``dev``), this process takes the owner lock itself for the query, opens the
  directory with a read-only session, and says so through ``notice`` (the CLI: stderr).

Every path runs with :data:`OUTPUT_SETTINGS`: JSON output formats replace bytes that are not UTF-8 (a
dead letter's raw body) with U+FFFD, so their output is always valid UTF-8 and JSON.

This module imports neither chdb nor aiohttp at import time: the owner path is a plain HTTP request on a
socket, and the engine is opened only when nobody owns the directory.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from streams.config import Settings
from streams.sink.clickhouse import ClickHouseError, OwnerError, current_owner, redact_dsn, settings_path, socket_path

DEFAULT_FORMAT = "PrettyCompact"
FORMAT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# JSONEachRow and its kin print a String column's bytes as they are unless told to validate them
OUTPUT_SETTINGS = {"output_format_json_validate_utf8": 1}


def readonly_refusal(message: str) -> str:
    return ("enx-streams sql is read-only on the embedded engine: SELECT, SHOW, DESCRIBE, EXPLAIN and the like "
            "run; writes belong to the sink and the migrations (ClickHouse said: " + message + ")")


def is_readonly_error(message: str) -> bool:
    return "Code: 164" in message or "(READONLY)" in message


class QueryError(Exception):
    """The query could not run; the message says why and what to do next (and holds no password)."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _error_of(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip() or "no message"


def no_owner_message(settings: Settings, db_path: Path) -> str:
    data_dir = settings.data_dir
    return (f"no process owns the embedded ClickHouse at {db_path}, so nothing can answer the query (chdb lets "
            f"one process open a data directory, and `enx-streams sql` asks that process). Start one: "
            f"`enx-streams dev --data-dir {data_dir}` (the whole pipeline) or "
            f"`enx-streams worker --roles sink --data-dir {data_dir}`; or set ENX_CLICKHOUSE_DSN to a ClickHouse "
            f"server")


def query_owner(settings: Settings, db_path: Path, sql: str, fmt: str, timeout_s: float) -> bytes:
    """Ask the owner of ``db_path`` over its socket."""
    sock = socket_path(db_path)
    connection = _UnixHTTPConnection(sock, timeout_s)
    try:
        try:
            connection.request("POST", "/query", body=json.dumps({"sql": sql, "format": fmt}).encode(),
                               headers={"Content-Type": "application/json"})
        except (FileNotFoundError, ConnectionRefusedError):
            owner = current_owner(db_path)
            if owner is None:
                raise QueryError(no_owner_message(settings, db_path)) from None
            raise QueryError(f"the embedded ClickHouse at {db_path} is owned by {owner.describe()}, which does not "
                             f"answer queries on {sock} (yet): it may still be starting (migrations), so retry in a "
                             f"moment; if it persists, see that process's log") from None
        response = connection.getresponse()
        body = response.read()
    except TimeoutError:
        raise QueryError(f"the owner of {db_path} did not answer within {timeout_s:.0f} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise QueryError(f"the owner of {db_path} did not answer on {sock}: {exc}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise QueryError(_error_of(body))
    return body


def query_server(settings: Settings, sql: str, fmt: str) -> bytes:
    """Run on a ClickHouse server, read-only."""
    from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError

    from streams.sink.clickhouse import connect

    try:
        client = connect(settings, readonly=True)
    except ClickHouseError as exc:
        raise QueryError(str(exc)) from None
    try:
        try:
            return bytes(client.raw_query(sql, fmt=fmt, settings=OUTPUT_SETTINGS))
        except DriverError as exc:
            if "Cannot modify 'readonly' setting" not in str(exc):
                raise
        client.close()  # the server's user is read-only already: run without setting it
        client = connect(settings)
        return bytes(client.raw_query(sql, fmt=fmt, settings=OUTPUT_SETTINGS))
    except ClickHouseError as exc:
        raise QueryError(str(exc)) from None
    except DriverError as exc:
        message = str(exc)
        password = urlsplit(settings.clickhouse_url).password
        if password:
            message = message.replace(password, "***")
        raise QueryError(f"ClickHouse at {redact_dsn(settings.clickhouse_url)}: {message}") from None
    finally:
        client.close()


def query_directly(settings: Settings, db_path: Path, sql: str, fmt: str) -> bytes:
    """Open the unowned directory ``db_path`` in this process, read-only, for one query.

    Holds the owner lock meanwhile, marked as a reader's (raises :class:`OwnerError` when an owner took it
    first), so nothing else opens the directory under the query; a sink or a migration starting in that
    moment waits for the query to finish (:data:`streams.sink.clickhouse.READER_WAIT_S` at most).
    """
    from streams.sink.clickhouse import OwnerLock, connect

    if not db_path.is_dir():
        raise QueryError(f"there is no embedded ClickHouse at {db_path} (nothing was ever written there): start "
                         f"`enx-streams dev --data-dir {settings.data_dir}` or run `enx-streams migrate`, or check "
                         f"--data-dir / ENX_DATA_DIR")
    if not FORMAT_NAME.match(fmt):
        raise QueryError(f"{fmt!r} is not a ClickHouse format name")
    with OwnerLock.acquire(db_path, "enx-streams sql (read-only, no owner was running)", transient=True):
        try:
            client = connect(settings, readonly=True)
        except ClickHouseError as exc:
            raise QueryError(str(exc)) from None
        try:
            return bytes(client.raw_query(sql, fmt=fmt, settings=OUTPUT_SETTINGS))
        except Exception as exc:  # noqa: BLE001 - chdb's errors, said as the owner would say them
            message = str(exc).strip() or type(exc).__name__
            if is_readonly_error(message):
                raise QueryError(readonly_refusal(message)) from None
            raise QueryError(message) from None
        finally:
            client.close()


def run_query(settings: Settings, sql: str, fmt: str = DEFAULT_FORMAT, *, timeout_s: float = 300.0,
              notice: Callable[[str], None] = lambda _m: None, open_unowned: bool = True) -> bytes:
    """The result of ``sql`` in the ClickHouse output format ``fmt`` (PrettyCompact, JSONEachRow, CSV...).

    ``notice`` hears how an embedded directory without owner was read (the CLI prints it on stderr);
    ``open_unowned=False`` asks only an owner (a probe such as ``enx-streams status`` must never hold the
    directory a starting sink is waiting for): with none, :class:`QueryError` says so."""
    if not sql.strip():
        raise QueryError("no SQL given; try: enx-streams sql \"SELECT count() FROM enablex.webhook_events FINAL\"")
    if not settings.clickhouse_is_embedded:
        return query_server(settings, sql, fmt)
    db_path = settings_path(settings)
    if db_path is None:
        raise QueryError("an in-memory ClickHouse (chdb://memory) lives inside its process only; set "
                         "ENX_CLICKHOUSE_DSN to chdb:///abs/path or to a server to query it from here")
    if open_unowned and current_owner(db_path) is None:
        try:
            out = query_directly(settings, db_path, sql, fmt)
        except OwnerError:
            pass  # an owner started meanwhile: ask it
        else:
            notice(f"note: no process owns the embedded ClickHouse at {db_path}; this command opened it itself, "
                   f"read-only, for this query")
            return out
    return query_owner(settings, db_path, sql, fmt, timeout_s)
