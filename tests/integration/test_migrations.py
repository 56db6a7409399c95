"""The numbered ClickHouse migrations on a fresh embedded engine (real chdb, one data directory per test)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.config import Settings
from streams.sink import migrations
from streams.sink.clickhouse import OwnerLock, connect, settings_path

# the source documents, kept verbatim in the repository (tests/data/seeds) so a clean clone tests against them
SEED = Path(__file__).resolve().parents[1] / "data" / "seeds" / "003_951e7e4425c9114a.txt"
CONTRACT_TABLES = {"webhook_events", "session_files", "sessions", "sla_alerts", "dead_letters", "error_codes"}
RECONCILE_TABLES = {"reconcile_findings"}
VIEWS = {"events_per_minute_mv", "dead_letters_per_minute_mv"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[object]:
    c = connect(settings)
    try:
        yield c
    finally:
        c.close()  # chdb holds one data directory per process: the next test opens another


def tables(client) -> set[str]:
    return {r[0] for r in client.query("SELECT name FROM system.tables WHERE database = 'enablex'").result_rows}


def scalar(client, sql: str):
    return client.query(sql).result_rows[0][0]


def test_all_at_once_then_rerun_does_nothing(client):
    applied = migrations.apply(client)
    assert applied == [m.label for m in migrations.discover()]
    assert applied[:5] == ["001_database", "002_contract_tables", "003_dashboard_aggregates", "004_error_codes",
                           "005_reconcile_findings"]
    assert CONTRACT_TABLES | RECONCILE_TABLES | VIEWS | {"schema_migrations", "events_per_minute", "dead_letters_per_minute"} \
        <= tables(client)
    ledger = client.query("SELECT version, name FROM enablex.schema_migrations FINAL ORDER BY version").result_rows
    assert [name for _, name in ledger] == applied
    assert migrations.apply(client) == []
    assert scalar(client, "SELECT count() FROM enablex.schema_migrations") == len(applied)
    assert scalar(client, "SELECT count() FROM enablex.error_codes") == 77


def test_step_by_step_forwards(client):
    assert migrations.apply(client, target=1) == ["001_database"]
    assert tables(client) == {"schema_migrations"}
    assert migrations.apply(client, target=1) == []
    assert migrations.apply(client, target=2) == ["002_contract_tables"]
    assert tables(client) == {"schema_migrations"} | CONTRACT_TABLES
    assert scalar(client, "SELECT count() FROM enablex.error_codes") == 0
    assert migrations.apply(client, target=3) == ["003_dashboard_aggregates"]
    assert VIEWS <= tables(client)
    assert migrations.apply(client, target=4) == ["004_error_codes"]
    assert migrations.apply(client, target=5) == ["005_reconcile_findings"]
    assert RECONCILE_TABLES <= tables(client)
    later = [m.label for m in migrations.discover() if m.version > 5]
    assert migrations.apply(client) == later
    assert migrations.apply(client) == []
    assert migrations.applied_versions(client) == {m.version for m in migrations.discover()}


def test_every_statement_is_idempotent_on_its_own(client):
    migrations.apply(client)
    before = {t: scalar(client, f"SELECT count() FROM enablex.{t}") for t in CONTRACT_TABLES | RECONCILE_TABLES}
    for migration in migrations.discover():
        for sql in migration.statements():
            client.command(sql)  # an interrupted migration is simply applied again
    after = {t: scalar(client, f"SELECT count() FROM enablex.{t}") for t in CONTRACT_TABLES | RECONCILE_TABLES}
    assert after == before and after["error_codes"] == 77


def seed_rows() -> list[tuple[int, str]]:
    """(code, description) of every row of the seed's error-code tables, read independently of 004's SQL."""
    text = SEED.read_text(encoding="utf-8")
    return [(int(m.group(1)), m.group(2).strip()) for m in re.finditer(r"(?m)^(\d{4})\s*(\S.*)$", text)]


def test_error_codes_hold_every_row_of_the_seed(client):
    migrations.apply(client)
    rows = client.query("SELECT code, operation, description FROM enablex.error_codes FINAL").result_rows
    expected = seed_rows()
    assert len(expected) == 77 and len(rows) == len(expected)
    assert sorted((code, desc) for code, _, desc in rows) == sorted(expected)
    operations_7000 = {op for code, op, _ in rows if code == 7000}
    assert operations_7000 == {"Start Live Recording", "Stop Live Recording", "Call State Change Event",
                               "Start Streaming", "Stop Streaming", "Generic Error", "Move File CallBack"}
    generic = sorted(desc for code, op, desc in rows if op == "Generic Error")
    assert len(generic) == 3 and all(code == 7000 for code, op, _ in rows if op == "Generic Error")
    assert ("Live Recording Waiting Queue", 7208) in {(op, code) for code, op, _ in rows}
    assert len({op for _, op, _ in rows}) == 9


def test_duplicates_collapse_under_final_and_views_aggregate(client):
    migrations.apply(client)
    at = dt.datetime(2024, 5, 1, 10, 30, 15, 250000, tzinfo=dt.timezone.utc)
    row = ["e1", at, "recording", "app", None, "42", None, 1, 10, "", "{}"]
    columns = ["event_id", "received_at", "type", "app_id", "room_id", "conf_num", "trans_date", "file_count",
               "total_bytes", "destination", "raw"]
    client.insert("enablex.webhook_events", [row], column_names=columns)
    client.insert("enablex.webhook_events", [row], column_names=columns)
    assert scalar(client, "SELECT count() FROM enablex.webhook_events") == 2
    assert scalar(client, "SELECT count() FROM enablex.webhook_events FINAL") == 1
    per_minute = client.query("SELECT minute, type, app_id, sum(events) FROM enablex.events_per_minute "
                              "GROUP BY minute, type, app_id").result_rows
    assert [(m.replace(tzinfo=None), t, a, n) for m, t, a, n in per_minute] == \
        [(dt.datetime(2024, 5, 1, 10, 30), "recording", "app", 2)]
    client.insert("enablex.dead_letters", [["d1", at, "not_json: x", "not_json", b"{", None, {"a": "b"}]],
                  column_names=["id", "received_at", "reason", "reason_code", "raw", "source", "headers"])
    assert client.query("SELECT reason_code, sum(rejected) FROM enablex.dead_letters_per_minute "
                        "GROUP BY reason_code").result_rows == [("not_json", 1)]


def test_migrate_command_applies_then_reports_up_to_date(settings):
    said: list[str] = []
    assert migrations.run_cli(settings, said.append) == 0
    assert any(f"applied {len(migrations.discover())} migration(s)" in line for line in said)
    said.clear()
    assert migrations.run_cli(settings, said.append) == 0
    assert said == [f"{settings_path(settings)} is up to date: no migration to apply"]


def test_migrate_command_leaves_a_running_owner_alone(settings):
    import os

    with OwnerLock.acquire(settings_path(settings), "enx-streams worker --roles sink"):
        said: list[str] = []
        assert migrations.run_cli(settings, said.append) == 0
    assert len(said) == 1
    assert f"owned by pid {os.getpid()} (enx-streams worker --roles sink)" in said[0]
    assert "applied the migrations at its start" in said[0]
    assert not (settings.data_dir / "clickhouse" / "store").exists()  # it did not open the engine


def test_session_files_rows_from_before_005_read_as_from_webhooks(client):
    migrations.apply(client, target=4)
    at = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    columns = ["event_id", "received_at", "type", "app_id", "conf_num", "kind", "url", "stage", "size_bytes",
               "destination", "trans_date"]
    client.insert("enablex.session_files", [["e1", at, "transcoded", "app", "1", "transcoded", "u", None, None, "",
                                             None]], column_names=columns)
    assert migrations.apply(client, target=5) == ["005_reconcile_findings"]
    assert client.query("SELECT event_id, source FROM enablex.session_files").result_rows == [("e1", "webhook")]
    client.insert("enablex.reconcile_findings", [["f1", "webhook_missing", "app", "1", None, "transcoded", "archive",
                                                  at, ["u"], "a1", at]] * 2,
                  column_names=["finding_id", "kind", "app_id", "conf_num", "room_id", "missing_type", "source",
                                "trans_date", "urls", "archive_id", "found_at"])
    assert scalar(client, "SELECT count() FROM enablex.reconcile_findings FINAL") == 1


def test_split_statements():
    text = "-- a comment;\nCREATE TABLE a\n(x UInt8);\n\nINSERT INTO a VALUES ('a;b');\nSELECT 1"
    assert migrations.split_statements(text) == ["CREATE TABLE a\n(x UInt8)", "INSERT INTO a VALUES ('a;b')",
                                                 "SELECT 1"]


def test_what_came_from_reconciliation_is_marked_in_sessions_and_alerts(client):
    migrations.apply(client)
    columns = {(t, c): ty for t, c, ty in client.query(
        "SELECT table, name, type FROM system.columns WHERE database = 'enablex' "
        "AND table IN ('sessions', 'sla_alerts')").result_rows}
    assert columns[("sessions", "reconciled")] == "Array(LowCardinality(String))"
    assert columns[("sla_alerts", "cause")] == "LowCardinality(Nullable(String))"
