"""`enx-streams sql` through the owner of an embedded data directory (real chdb, real unix socket)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streams.config import Settings
from streams.sink import migrations
from streams.sink.clickhouse import OwnerError, OwnerInfo, OwnerLock, connect, current_owner, settings_path, \
    socket_path
from streams.sink.owner import QueryServer, serve_queries
from streams.sink.query import QueryError, run_query

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Owner:
    settings: Settings
    writer: Any
    server: QueryServer


@pytest.fixture
async def owner(tmp_path: Path) -> AsyncIterator[Owner]:
    """What the sink worker does at its start, in this process: lock, open, migrate, serve."""
    settings = Settings(data_dir=tmp_path)
    lock = OwnerLock.acquire(settings_path(settings), "enx-streams worker --roles sink")
    writer = await asyncio.to_thread(connect, settings)
    server = None
    try:
        await asyncio.to_thread(migrations.apply, writer)
        reader = await asyncio.to_thread(connect, settings, readonly=True)
        server = await serve_queries(settings, reader)
        yield Owner(settings, writer, server)
    finally:
        if server is not None:
            await server.close()
        await asyncio.to_thread(writer.close)
        lock.release()


async def sql(settings: Settings, query: str, fmt: str = "PrettyCompact") -> bytes:
    return await asyncio.to_thread(run_query, settings, query, fmt)  # sync client: keep the loop serving


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENX_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams.cli", "sql", "--data-dir", str(settings.data_dir), *args,
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode, out.decode(), err.decode()


def insert_event(owner: Owner, event_id: str, type_: str) -> None:
    at = dt.datetime(2024, 5, 1, 10, 30, 15, 250000, tzinfo=dt.timezone.utc)
    owner.writer.insert("enablex.webhook_events", [[event_id, at, type_, "app", None, "42", None, 0, 0, "", "{}"]],
                        column_names=["event_id", "received_at", "type", "app_id", "room_id", "conf_num",
                                      "trans_date", "file_count", "total_bytes", "destination", "raw"])


async def test_queries_in_any_format(owner: Owner):
    await asyncio.to_thread(insert_event, owner, "e1", "roomdrop")
    await asyncio.to_thread(insert_event, owner, "e2", "recording")
    query = "SELECT event_id, type, received_at FROM enablex.webhook_events FINAL ORDER BY event_id"
    lines = (await sql(owner.settings, query, "JSONEachRow")).decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"event_id": "e1", "type": "roomdrop", "received_at": "2024-05-01 10:30:15.250"},
        {"event_id": "e2", "type": "recording", "received_at": "2024-05-01 10:30:15.250"}]
    pretty = (await sql(owner.settings, query)).decode()
    assert "event_id" in pretty and "roomdrop" in pretty and "│" in pretty
    assert await sql(owner.settings, "SELECT event_id, type FROM enablex.webhook_events FINAL ORDER BY event_id",
                     "CSV") == b'"e1","roomdrop"\n"e2","recording"\n'
    assert await sql(owner.settings, "SELECT count() FROM enablex.error_codes WHERE code = 7000", "TSV") == b"9\n"


async def test_read_only_writes_fail_clearly_and_change_nothing(owner: Owner):
    for statement in ("INSERT INTO enablex.error_codes VALUES (1, 'x', 'y')", "DROP TABLE enablex.error_codes",
                      "TRUNCATE TABLE enablex.error_codes", "CREATE TABLE enablex.t (a UInt8) ENGINE = Memory",
                      "SELECT 1 SETTINGS readonly = 0"):
        with pytest.raises(QueryError, match="read-only"):
            await sql(owner.settings, statement)
    assert await sql(owner.settings, "SELECT count() FROM enablex.error_codes", "TSV") == b"77\n"
    # a failed multi-statement query leaves nothing behind for the next one
    with pytest.raises(QueryError, match="read-only"):
        await sql(owner.settings, "SELECT 1; DROP TABLE enablex.error_codes")
    assert await sql(owner.settings, "SELECT 42", "TSV") == b"42\n"
    # the owner's writer session is untouched by the read-only one
    await asyncio.to_thread(insert_event, owner, "e3", "chatdata")
    assert await sql(owner.settings, "SELECT count() FROM enablex.webhook_events", "TSV") == b"1\n"


async def test_clickhouse_errors_come_back_as_messages(owner: Owner):
    with pytest.raises(QueryError, match="UNKNOWN_TABLE|Unknown table"):
        await sql(owner.settings, "SELECT * FROM enablex.no_such_table")
    with pytest.raises(QueryError, match="Unknown format"):
        await sql(owner.settings, "SELECT 1", "NoSuchFormat")
    with pytest.raises(QueryError, match="not a ClickHouse format name"):
        await sql(owner.settings, "SELECT 1", "JSON; DROP")
    assert await sql(owner.settings, "SELECT 7", "TSV") == b"7\n"


async def test_the_sql_command_through_the_owner(owner: Owner):
    await asyncio.to_thread(insert_event, owner, "e1", "transcoded")
    code, out, err = await cli(owner.settings, "--format", "JSONEachRow",
                               "SELECT event_id, type FROM enablex.webhook_events FINAL")
    assert code == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [{"event_id": "e1", "type": "transcoded"}]
    code, out, err = await cli(owner.settings, "DROP TABLE enablex.webhook_events")
    assert code == 1 and "read-only" in err and out == ""


async def test_a_second_owner_is_refused(owner: Owner):
    path = settings_path(owner.settings)
    with pytest.raises(OwnerError) as refused:
        OwnerLock.acquire(path)
    message = str(refused.value)
    assert f"is owned by pid {os.getpid()} (enx-streams worker --roles sink)" in message
    assert "several sink workers need a ClickHouse server" in message and "ENX_CLICKHOUSE_DSN=http://" in message
    # the same from another process
    probe = ("import sys; from pathlib import Path; from streams.sink.clickhouse import OwnerLock, OwnerError\n"
             "try:\n    OwnerLock.acquire(Path(sys.argv[1]))\nexcept OwnerError as e:\n    print(e); sys.exit(3)\n")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", probe, str(path), cwd=REPO,
                                                stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 3 and f"owned by pid {os.getpid()}" in out.decode()
    assert current_owner(path).pid == os.getpid()


def migrated_directory(settings: Settings) -> None:
    """A data directory as a stopped ``dev`` leaves it: migrated, one dead letter whose body is not UTF-8."""
    with OwnerLock.acquire(settings_path(settings), "test writer"):
        writer = connect(settings)
        try:
            migrations.apply(writer)
            at = dt.datetime(2024, 5, 1, 10, 30, tzinfo=dt.timezone.utc)
            writer.insert("enablex.dead_letters", [["dl1", at, "not_utf8: x", "not_utf8", b"\xff\xfe{\"a\":1}\x80",
                                                    "127.0.0.1", {}]],
                          column_names=["id", "received_at", "reason", "reason_code", "raw", "source", "headers"])
        finally:
            writer.close()


def test_no_owner_opens_the_directory_itself_read_only(tmp_path: Path):
    settings = Settings(data_dir=tmp_path)
    migrated_directory(settings)
    notes: list[str] = []
    assert run_query(settings, "SELECT count() FROM enablex.dead_letters", "TSV", notice=notes.append) == b"1\n"
    assert len(notes) == 1 and "no process owns" in notes[0] and "read-only" in notes[0]
    with pytest.raises(QueryError, match="read-only"):
        run_query(settings, "DROP TABLE enablex.dead_letters", "TSV")
    with pytest.raises(QueryError, match="not a ClickHouse format name"):
        run_query(settings, "SELECT 1", "JSON; DROP")
    assert current_owner(settings_path(settings)) is None  # the lock went with the query
    # a socket left behind by a killed owner changes nothing
    sock = socket_path(settings_path(settings))
    sock.parent.mkdir(parents=True, exist_ok=True)
    sock.write_bytes(b"")
    assert run_query(settings, "SELECT count() FROM enablex.dead_letters", "TSV") == b"1\n"


def test_no_directory_says_so_and_how_to_start_one(tmp_path: Path):
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(QueryError) as nothing:
        run_query(settings, "SELECT 1", "TSV")
    message = str(nothing.value)
    assert "there is no embedded ClickHouse" in message and f"enx-streams dev --data-dir {tmp_path}" in message
    assert not (tmp_path / "clickhouse").exists()  # a query creates nothing


JSON_FORMATS = ("JSONEachRow", "JSONCompactEachRow", "JSONLines", "NDJSON", "JSONStringsEachRow")


async def test_the_sql_command_without_owner_reads_and_prints_valid_utf8_json(tmp_path: Path):
    settings = Settings(data_dir=tmp_path)
    await asyncio.to_thread(migrated_directory, settings)
    for fmt in JSON_FORMATS:
        code, out, err = await cli(settings, "--format", fmt, "SELECT id, raw FROM enablex.dead_letters FINAL")
        assert code == 0, err
        assert "no process owns" in err and "read-only" in err
        rows = [json.loads(line) for line in out.splitlines()]  # out was decoded as UTF-8 (strict) by cli()
        assert len(rows) == 1 and "dl1" in json.dumps(rows[0]) and "\ufffd" in json.dumps(rows[0], ensure_ascii=False)
    code, out, err = await cli(settings, "--format", "JSON", "SELECT raw FROM enablex.dead_letters")
    assert code == 0 and json.loads(out)["rows"] == 1, err


async def test_json_through_the_owner_is_valid_utf8(owner: Owner):
    at = dt.datetime(2024, 5, 1, 10, 30, tzinfo=dt.timezone.utc)
    await asyncio.to_thread(owner.writer.insert, "enablex.dead_letters",
                            [["dl2", at, "not_utf8: x", "not_utf8", b"\xc3(\xa0\xa1", None, {}]],
                            column_names=["id", "received_at", "reason", "reason_code", "raw", "source", "headers"])
    for fmt in JSON_FORMATS:
        out = await sql(owner.settings, "SELECT id, raw FROM enablex.dead_letters FINAL", fmt)
        assert [json.loads(line) for line in out.decode("utf-8").splitlines()][0]
    code, out, err = await cli(owner.settings, "--format", "JSONEachRow", "SELECT raw FROM enablex.dead_letters")
    assert code == 0 and "no process owns" not in err and json.loads(out)["raw"].startswith("\ufffd"), err


def test_a_killed_owner_leaves_the_directory_free(tmp_path: Path):
    path = tmp_path / "clickhouse"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from streams.sink.clickhouse import "
         "OwnerLock; OwnerLock.acquire(Path(sys.argv[1]), 'holder'); print('held', flush=True); time.sleep(60)",
         str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert current_owner(path).command == "holder"
        with pytest.raises(OwnerError, match=f"pid {holder.pid} \\(holder\\)"):
            OwnerLock.acquire(path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert current_owner(path) is None
    with OwnerLock.acquire(path) as lock:
        assert lock.held and current_owner(path).pid == os.getpid()
    assert current_owner(path) is None


async def test_closing_the_owner_removes_its_socket(tmp_path: Path):
    settings = Settings(data_dir=tmp_path)
    sock = socket_path(settings_path(settings))
    sock.parent.mkdir(parents=True)
    sock.write_bytes(b"stale")  # left by a killed owner: the next owner replaces it
    with OwnerLock.acquire(settings_path(settings)):
        reader = await asyncio.to_thread(connect, settings, readonly=True)
        server = await serve_queries(settings, reader)
        try:
            assert await sql(settings, "SELECT 'up'", "TSV") == b"up\n"
            assert oct(sock.stat().st_mode & 0o777) == oct(0o600)
        finally:
            await server.close()
    assert not sock.exists()
    assert await sql(settings, "SELECT 'itself'", "TSV") == b"itself\n"  # no owner: read in this process


def _reader(path: Path) -> subprocess.Popen:
    """A process holding ``path`` as ``enx-streams sql`` does with no owner running, until its stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from streams.sink.clickhouse import "
         "OwnerLock; lock = OwnerLock.acquire(Path(sys.argv[1]), 'enx-streams sql (test)', transient=True); "
         "print('held', flush=True); sys.stdin.read(); lock.release()", str(path)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_an_owner_starting_while_sql_reads_waits_for_the_read(tmp_path: Path):
    """The reason sql-without-owner was once reverted: a sink restarted while a query held the directory
    was refused. Now it waits for the reader (the injected sleep is where it waits: the reader finishes)."""
    path = tmp_path / "clickhouse"
    reader = _reader(path)
    waits: list[float] = []

    def reader_finishes(seconds: float) -> None:
        waits.append(seconds)
        if reader.poll() is None:
            reader.stdin.close()
            reader.wait(timeout=30)

    try:
        assert current_owner(path).transient
        with OwnerLock.acquire(path, "sink", sleep=reader_finishes) as lock:
            assert lock.held and current_owner(path) == OwnerInfo(os.getpid(), "sink", False)
        assert waits  # it waited, it was not refused
    finally:
        reader.kill()
        reader.wait()


def test_a_reader_that_outlasts_the_wait_is_named(tmp_path: Path):
    path = tmp_path / "clickhouse"
    reader = _reader(path)
    now = [0.0]

    def advance(seconds: float) -> None:
        now[0] += 10.0

    try:
        with pytest.raises(OwnerError, match=rf"pid {reader.pid} \(enx-streams sql \(test\)\)"):
            OwnerLock.acquire(path, "sink", wait_s=30.0, clock=lambda: now[0], sleep=advance)
        assert now[0] >= 30.0  # it waited the whole time first
        assert current_owner(path).pid == reader.pid  # and took nothing from the reader
    finally:
        reader.kill()
        reader.wait()
