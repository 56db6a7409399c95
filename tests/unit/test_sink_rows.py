"""Record -> row rules of the ClickHouse sink (pure)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.avro import default_codec
from streams.sink import rows as R

UTC = dt.timezone.utc
T0 = 1_700_000_000_123  # 2023-11-14 22:13:20.123 UTC


def event(**overrides):
    base = {
        "event_id": "e1", "received_at": T0, "type": "transcoded", "app_id": "app", "room_id": "room",
        "conf_num": "42", "trans_date": T0 - 5_000,
        "files": [
            {"kind": "transcoded", "url": "https://x/1.mp4", "stage": "1", "size_bytes": 1000},
            {"kind": "transcoded", "url": "https://x/2.mp4", "stage": "2", "size_bytes": 24},
            {"kind": "transcoded", "url": "https://x/3.mp4", "stage": None, "size_bytes": None},
        ],
        "destination": None, "raw": '{"type":"transcoded"}', "source": "10.0.0.1",
    }
    base.update(overrides)
    return base


def avro_roundtrip(name: str, record: dict) -> dict:
    codec = default_codec()
    return codec.decode(codec.encode(name, record))


def test_times_are_exact_utc_milliseconds():
    assert R.datetime_or_none(T0) == dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert R.datetime_or_none(None) is None
    assert R.datetime_or_none(0) == dt.datetime(1970, 1, 1, tzinfo=UTC)


def test_times_outside_datetime64_range_are_null_or_clamped():
    far = 10**15  # a microsecond timestamp mistaken for milliseconds: year ~33658
    assert R.datetime_or_none(far) is None
    assert R.datetime_or_none(R.MIN_MS - 1) is None
    assert R.datetime_required(far) == dt.datetime(2299, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    assert R.datetime_required(-10**15) == dt.datetime(1900, 1, 1, tzinfo=UTC)
    assert R.datetime_required(None) == R.EPOCH


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_datetime_or_none_keeps_every_representable_millisecond(ms):
    value = R.datetime_or_none(ms)
    if R.MIN_MS <= ms <= R.MAX_MS:
        assert value is not None and value.tzinfo is not None
        assert (value - R.EPOCH) // dt.timedelta(milliseconds=1) == ms
    else:
        assert value is None


def test_webhook_event_row_and_one_file_row_per_url():
    decoded = avro_roundtrip("WebhookEvent", event())
    row, files = R.webhook_event_rows(decoded)
    assert set(row) == set(R.COLUMNS["webhook_events"])
    assert row["event_id"] == "e1" and row["type"] == "transcoded" and row["app_id"] == "app"
    assert row["room_id"] == "room" and row["conf_num"] == "42"
    assert row["received_at"] == R.datetime_or_none(T0)
    assert row["trans_date"] == R.datetime_or_none(T0 - 5_000)
    assert row["file_count"] == 3 and row["total_bytes"] == 1024
    assert row["destination"] == "" and row["raw"] == '{"type":"transcoded"}'
    assert [f["url"] for f in files] == ["https://x/1.mp4", "https://x/2.mp4", "https://x/3.mp4"]
    assert [(f["kind"], f["stage"], f["size_bytes"]) for f in files] == [
        ("transcoded", "1", 1000), ("transcoded", "2", 24), ("transcoded", None, None)]
    for f in files:
        assert set(f) == set(R.COLUMNS["session_files"])
        assert (f["event_id"], f["app_id"], f["conf_num"], f["type"]) == ("e1", "app", "42", "transcoded")
        assert f["trans_date"] == row["trans_date"] and f["received_at"] == row["received_at"]


def test_file_transfer_rows_carry_the_destination():
    decoded = avro_roundtrip("WebhookEvent", event(
        type="file-transfer",
        files=[{"kind": "transferred", "url": "sftp://h/a.mp4", "stage": None, "size_bytes": 7}],
        destination={"name": "sftp", "host": "h", "account": None}))
    row, files = R.webhook_event_rows(decoded)
    assert row["destination"] == "sftp"
    assert files[0]["destination"] == "sftp" and files[0]["kind"] == "transferred"


def test_event_without_session_or_files():
    row, files = R.webhook_event_rows(avro_roundtrip("WebhookEvent", event(
        type="some-new-type", conf_num=None, room_id=None, trans_date=None, files=[])))
    assert row["conf_num"] == "" and row["room_id"] is None and row["trans_date"] is None
    assert row["file_count"] == 0 and row["total_bytes"] == 0 and files == []
    no_files = event(files=[])
    assert R.project("webhooks", "WebhookEvent", no_files) == {"webhook_events": [R.webhook_event_rows(no_files)[0]]}


def test_unusable_sizes_and_dates_never_reach_clickhouse():
    row, files = R.webhook_event_rows(event(
        trans_date=10**16, files=[{"kind": "recording", "url": "u", "stage": None, "size_bytes": -5}]))
    assert row["trans_date"] is None and files[0]["trans_date"] is None
    assert files[0]["size_bytes"] is None and row["total_bytes"] == 0


def session_state(**overrides):
    base = {
        "app_id": "app", "conf_num": "42", "room_id": "room", "version": 3, "event_ids": ["a", "b", "c"],
        "ended_at": T0, "recording_at": T0 + 60_000, "transcoded_at": T0 + 600_000, "delivered_at": None,
        "chat_at": None, "recording_files": 2, "transcoded_files": 1, "delivered_files": 0, "chat_files": 0,
        "recording_latency_s": 60.0, "transcode_latency_s": 600.0, "delivery_latency_s": None,
        "chat_latency_s": None, "sla_deadline": T0 + 2_700_000, "sla_state": "met", "stalled_at": None,
        "last_event_at": T0 + 601_000,
    }
    base.update(overrides)
    return base


def test_session_row():
    row = R.session_row(avro_roundtrip("SessionState", session_state()))
    assert set(row) == set(R.COLUMNS["sessions"])
    assert row["version"] == 3 and row["sla_state"] == "met"
    assert row["ended_at"] == R.datetime_or_none(T0)
    assert row["sla_deadline"] == R.datetime_or_none(T0 + 2_700_000)
    assert row["delivered_at"] is None and row["stalled_at"] is None
    assert (row["recording_files"], row["transcoded_files"]) == (2, 1)
    assert row["transcode_latency_s"] == 600.0 and row["delivery_latency_s"] is None
    assert row["last_event_at"] == R.datetime_or_none(T0 + 601_000)
    assert "event_ids" not in row
    assert row["reconciled"] == []


def test_session_row_clamps_counts():
    row = R.session_row(session_state(version=-1, recording_files=-3, chat_files=2**40))
    assert row["version"] == 0 and row["recording_files"] == 0 and row["chat_files"] == R.UINT32_MAX


def test_alert_row():
    alert = {"alert_id": "al1", "kind": "transcode_recovered", "app_id": "app", "conf_num": "42",
             "room_id": None, "deadline": T0, "detected_at": T0 + 90_000, "overdue_s": 90.0}
    row = R.alert_row(avro_roundtrip("SlaAlert", alert))
    assert set(row) == set(R.COLUMNS["sla_alerts"])
    assert row == {"alert_id": "al1", "kind": "transcode_recovered", "app_id": "app", "conf_num": "42",
                   "room_id": None, "deadline": R.datetime_or_none(T0),
                   "detected_at": R.datetime_or_none(T0 + 90_000), "overdue_s": 90.0, "cause": None}
    found = R.alert_row(avro_roundtrip("SlaAlert", {**alert, "overdue_s": 0.0, "cause": "webhook_missing"}))
    assert found["cause"] == "webhook_missing"


def test_dead_letter_row_keeps_raw_bytes_and_reason_code():
    letter = {"id": "d1", "received_at": T0, "reason": "not_json: Expecting value: line 1",
              "raw": b"\xff{\xe2\x80\x9ctype\xe2\x80\x9d", "headers": {"content-type": "application/json"},
              "source": "10.0.0.9"}
    row = R.dead_letter_row(avro_roundtrip("DeadLetter", letter))
    assert set(row) == set(R.COLUMNS["dead_letters"])
    assert row["reason_code"] == "not_json" and row["reason"] == letter["reason"]
    assert row["raw"] == letter["raw"] and isinstance(row["raw"], bytes)
    assert row["headers"] == {"content-type": "application/json"} and row["source"] == "10.0.0.9"


@pytest.mark.parametrize("reason,code", [("not_json: x", "not_json"), ("missing_field: conf_num", "missing_field"),
                                         ("plain", "plain"), (": odd", "unknown"), ("", "unknown")])
def test_reason_code(reason, code):
    assert R.reason_code(reason) == code


def test_project_dispatches_by_topic_and_rejects_the_wrong_record():
    assert set(R.project("webhooks", "WebhookEvent", event())) == {"webhook_events", "session_files"}
    assert set(R.project("sessions", "SessionState", session_state())) == {"sessions"}
    with pytest.raises(R.UnprojectableRecord, match="SessionState record on the webhooks topic"):
        R.project("webhooks", "SessionState", session_state())
    with pytest.raises(R.UnprojectableRecord):
        R.project("webhooks", "WebhookEvent", {"event_id": "x"})


def test_as_lists_orders_columns():
    row, _ = R.webhook_event_rows(event())
    [values] = R.as_lists("webhook_events", [row])
    assert values == [row[c] for c in R.COLUMNS["webhook_events"]]
    assert values[0] == "e1" and values[-1] == row["raw"]


def finding(**overrides):
    base = {"finding_id": "f" * 32, "kind": "webhook_missing", "app_id": "app", "conf_num": "42", "room_id": "room",
            "missing_type": "transcoded", "source": "archive", "trans_date": T0 - 5_000,
            "urls": ["https://x/c.mp4", "https://x/d.mp4"], "archive_id": "a1", "found_at": T0}
    base.update(overrides)
    return base


def test_a_finding_is_a_reconcile_findings_row_and_its_files_marked_as_from_reconciliation():
    decoded = avro_roundtrip("ReconcileFinding", finding())
    out = R.project("reconcile", "ReconcileFinding", decoded)
    [row] = out["reconcile_findings"]
    assert set(row) == set(R.COLUMNS["reconcile_findings"])
    assert row["urls"] == ["https://x/c.mp4", "https://x/d.mp4"] and row["found_at"] == R.datetime_or_none(T0)
    assert row["trans_date"] == R.datetime_or_none(T0 - 5_000) and row["archive_id"] == "a1"
    files = out["session_files"]
    assert [f["url"] for f in files] == row["urls"]
    for f in files:
        assert set(f) == set(R.COLUMNS["session_files"])
        assert (f["event_id"], f["kind"], f["type"], f["source"]) == ("f" * 32, "transcoded", "transcoded", "reconcile")
        assert f["stage"] is None and f["size_bytes"] is None and f["trans_date"] == row["trans_date"]


def test_a_cdr_finding_has_no_files_and_webhook_files_say_so():
    out = R.project("reconcile", "ReconcileFinding", finding(kind="session_unknown", missing_type="roomdrop",
                                                             source="cdr", urls=[], trans_date=None))
    assert set(out) == {"reconcile_findings"} and out["reconcile_findings"][0]["trans_date"] is None
    assert {f["source"] for f in R.webhook_event_rows(event())[1]} == {"webhook"}
    with pytest.raises(R.UnprojectableRecord, match="ReconcileFinding without a usable"):
        R.project("reconcile", "ReconcileFinding", {"finding_id": "x"})
    with pytest.raises(R.UnprojectableRecord, match="WebhookEvent record on the reconcile topic"):
        R.project("reconcile", "WebhookEvent", event())
