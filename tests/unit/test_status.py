"""``enx-streams status``'s judgement, from gathered facts to checks and a verdict, case by case; how it is
shown; and the read-only view of a spool directory it falls back on when no ingest answers."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from streams.avro import default_codec
from streams.config import Settings
from streams.ingest.spool import Spool, peek
from streams.status import render
from streams.status.facts import (Broker, ClickHouse, Facts, Group, Ingest, Newest, Owner, PartitionLag,
                                  Spool as SpoolFacts)
from streams.status.gather import ingest_url, spool_of
from streams.status.judge import DEGRADED, INFO, OK, UNKNOWN, Limits, age, judge, lagging, size

NOW = 1_800_000_000_000
LOG = "enablex.webhooks.v1"


def parts(*lags: int, topic: str = LOG) -> tuple[PartitionLag, ...]:
    return tuple(PartitionLag(topic, i, end=100, committed=100 - lag) for i, lag in enumerate(lags))


def healthy(**changes) -> Facts:
    facts = Facts(
        now_ms=NOW,
        broker=Broker("localhost:9092", True),
        groups=(Group("processor", "enablex.processor", members=1, state="Stable", partitions=parts(0, 0)),
                Group("sink", "enx-streams-sink.enablex", members=1, state="Stable", partitions=parts(0, 1))),
        ingest=Ingest("http://127.0.0.1:8080/readyz", answered=True, ready=True, ready_by="kafka", kafka=True),
        spool=SpoolFacts("ingest", "/d/spool", bytes=0, frames=0),
        owner=Owner(True, "/d/clickhouse", pid=42, command="enx-streams worker --roles processor,sink",
                    since_ms=NOW - 3_600_000),
        clickhouse=ClickHouse("chdb:///d/clickhouse", True, newest=Newest(event_ms=NOW - 5_000)),
        log=Newest(event_ms=NOW - 4_000, alert_ms=NOW - 600_000, alert="transcode_stalled app/c1"),
    )
    return dataclasses.replace(facts, **changes)


def group(facts: Facts, role: str, **changes) -> Facts:
    return dataclasses.replace(facts, groups=tuple(dataclasses.replace(g, **changes) if g.role == role else g
                                                   for g in facts.groups))


def check(facts: Facts, name: str, limits: Limits = Limits()):
    return next(c for c in judge(facts, limits).checks if c.name == name)


def problems(facts: Facts, limits: Limits = Limits()) -> list[str]:
    return [c.name for c in judge(facts, limits).problems]


# -- the whole report ------------------------------------------------------------------------------

def test_a_healthy_pipeline_is_healthy_and_exits_0() -> None:
    report = judge(healthy())
    assert report.healthy and report.exit_code == 0 and report.verdict == "healthy"
    assert [c.name for c in report.checks] == ["broker", "processor", "sink", "ingest", "spool", "clickhouse",
                                               "owner", "newest"]
    assert {c.level for c in report.checks} <= {OK, INFO}


def test_a_degraded_report_exits_1_and_its_verdict_says_why_and_what_to_do() -> None:
    report = judge(group(healthy(), "sink", members=0))
    assert report.exit_code == 1
    assert report.verdict.startswith("degraded: consumer group enx-streams-sink.enablex has no live member")
    assert ", do start a worker: `enx-streams worker --roles sink`" in report.verdict


# -- broker ------------------------------------------------------------------------------------------

def test_an_unreachable_broker_is_the_one_reason_and_the_groups_are_unknown() -> None:
    facts = healthy(broker=Broker("localhost:9092", False, "no connection to any bootstrap server"),
                    ingest=Ingest("u", answered=True, ready=True, ready_by="spool", kafka=False))
    assert problems(facts) == ["broker"]
    broker = check(facts, "broker")
    assert "unreachable at localhost:9092" in broker.why and "enx-streams kafka start" in broker.do
    assert check(facts, "processor").level == check(facts, "sink").level == UNKNOWN


# -- consumer groups -------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["processor", "sink"])
def test_a_group_without_a_live_member_and_records_waiting_is_degraded_naming_it(role: str) -> None:
    facts = group(healthy(), role, members=0, state="Empty", partitions=parts(2, 3))
    c = check(facts, role)
    assert c.level == DEGRADED and problems(facts) == [role]
    name = dict((g.role, g.name) for g in facts.groups)[role]
    assert c.why == f"consumer group {name} has no live member and 5 record(s) wait, more with every webhook"
    assert f"`enx-streams worker --roles {role}`" in c.do
    assert f"lag 5 ({LOG} p1 3, p0 2)" in c.detail


def test_the_lagging_partitions_are_named_by_topic_the_largest_first_at_most_six() -> None:
    g = Group("sink", "s", members=1, partitions=parts(1, 0, 9) + parts(2, 2, topic="enablex.alerts.v1")
              + parts(*range(1, 6), topic="enablex.sessions.v1"))
    assert lagging(g) == ("enablex.webhooks.v1 p2 9; enablex.sessions.v1 p4 5, p3 4, p2 3; "
                          "enablex.alerts.v1 p0 2, p1 2; 3 more partition(s)")


def test_a_group_without_a_live_member_is_degraded_even_with_nothing_waiting() -> None:
    c = check(group(healthy(), "processor", members=0, partitions=parts(0)), "processor")
    assert c.level == DEGRADED and "no live member: no SLA watch runs" in c.why


def test_a_group_that_could_not_be_read_is_degraded() -> None:
    c = check(group(healthy(), "sink", error="CoordinatorNotAvailableError"), "sink")
    assert c.level == DEGRADED and "could not be read (CoordinatorNotAvailableError)" in c.why


def test_lag_over_the_limit_is_degraded_and_at_the_limit_is_not() -> None:
    facts = group(healthy(), "processor", partitions=parts(6, 4))
    assert check(facts, "processor", Limits(max_lag=10)).level == OK
    c = check(facts, "processor", Limits(max_lag=9))
    assert c.level == DEGRADED and "is 10 records behind (over 9)" in c.why


def test_lag_counts_from_the_log_start_when_nothing_is_committed_or_the_commit_is_gone() -> None:
    assert PartitionLag(LOG, 0, end=50, committed=None, start=0).lag == 50
    assert PartitionLag(LOG, 0, end=50, committed=None, start=20).lag == 30
    assert PartitionLag(LOG, 0, end=50, committed=10, start=20).lag == 30
    assert PartitionLag(LOG, 0, end=50, committed=50, start=20).lag == 0
    assert PartitionLag(LOG, 0, end=50, committed=60).lag == 0


def test_a_processor_leaving_a_webhook_waiting_too_long_is_degraded() -> None:
    facts = group(healthy(), "processor", partitions=parts(1), oldest_waiting_ms=NOW - 121_000)
    c = check(facts, "processor")
    assert c.level == DEGRADED and "waiting 121 s (over 120 s)" in c.why
    assert check(facts, "processor", Limits(max_age_s=200)).level == OK


def test_a_lagging_sink_within_the_limits_is_ok() -> None:
    facts = group(healthy(), "sink", partitions=parts(3), oldest_waiting_ms=NOW - 10_000)
    assert judge(facts).healthy


# -- ingest and spool ------------------------------------------------------------------------------

def test_ingest_not_answering_is_degraded_and_says_how_to_start_it() -> None:
    facts = healthy(ingest=Ingest("http://127.0.0.1:8080/readyz", answered=False, error="connection refused"),
                    spool=SpoolFacts("none", "/d/spool"))
    c = check(facts, "ingest")
    assert problems(facts) == ["ingest"]
    assert "does not answer at http://127.0.0.1:8080/readyz (connection refused)" in c.why
    assert "enx-streams ingest" in c.do and "ENX_INGEST_PORT" in c.do


def test_ingest_refusing_webhooks_is_degraded() -> None:
    facts = healthy(ingest=Ingest("u", answered=True, ready=False, ready_by=None, kafka=False))
    assert "refuses webhooks with 503" in check(facts, "ingest").why


def test_ingest_not_reaching_a_broker_that_status_reaches_is_degraded() -> None:
    facts = healthy(ingest=Ingest("u", answered=True, ready=True, ready_by="spool", kafka=False))
    c = check(facts, "ingest")
    assert c.level == DEGRADED and "does not reach Kafka" in c.why and "ENX_KAFKA_BOOTSTRAP" in c.do


@pytest.mark.parametrize("spool, level", [
    (SpoolFacts("none", "/d/spool"), OK),
    (SpoolFacts("directory", "/d/spool", bytes=0, frames=0), OK),
    (SpoolFacts("ingest", "/d/spool", bytes=500, frames=3, oldest_age_s=120.0), OK),
    (SpoolFacts("ingest", "/d/spool", bytes=500, frames=3, oldest_age_s=None), OK),
    (SpoolFacts("directory", "/d/spool", error="permission denied"), UNKNOWN),
    (SpoolFacts("ingest", "/d/spool", bytes=500, frames=3, oldest_age_s=121.0), DEGRADED),
])
def test_the_spool_is_degraded_only_holding_a_frame_older_than_the_limit(spool: SpoolFacts, level: str) -> None:
    assert check(healthy(spool=spool), "spool").level == level


@pytest.mark.parametrize("broker_up, source, do", [
    (False, "ingest", "bring Kafka back"),
    (True, "ingest", "see ingest's log"),
    (True, "directory", "start ingest with this data directory"),
])
def test_an_old_spool_says_what_drains_it(broker_up: bool, source: str, do: str) -> None:
    facts = healthy(broker=Broker("b", broker_up, None if broker_up else "down"),
                    spool=SpoolFacts(source, "/d/spool", bytes=2048, frames=2, oldest_age_s=600.0))
    c = check(facts, "spool")
    assert c.why == "the spool holds 2 webhook(s) not yet in Kafka, the oldest 10 min old (over 120 s)"
    assert c.do.startswith(do)
    assert "2 frame(s), 2.0 KiB, oldest 10 min" in c.detail


# -- ClickHouse and its owner ----------------------------------------------------------------------

def test_clickhouse_not_answering_for_want_of_an_owner_says_to_start_the_sink() -> None:
    facts = healthy(owner=Owner(True, "/d/clickhouse"), clickhouse=ClickHouse("chdb:///d/clickhouse", False,
                                                                              error="no process owns ..."))
    c = check(facts, "clickhouse")
    assert c.level == DEGRADED and "no process owns the embedded ClickHouse at /d/clickhouse" in c.why
    assert "enx-streams worker --roles sink" in c.do
    assert check(facts, "owner").detail == "no process owns /d/clickhouse"


def test_a_clickhouse_server_not_answering_is_degraded_with_its_error() -> None:
    facts = healthy(owner=Owner(False, "http://u:***@ch:8123/enablex"),
                    clickhouse=ClickHouse("http://u:***@ch:8123/enablex", False, error="connection refused"))
    c = check(facts, "clickhouse")
    assert c.why == "ClickHouse does not answer (connection refused)" and "ENX_CLICKHOUSE_DSN" in c.do
    assert "a ClickHouse server (http://u:***@ch:8123/enablex)" in check(facts, "owner").detail


def test_clickhouse_is_stale_when_the_sink_leaves_a_webhook_out_longer_than_the_limit() -> None:
    facts = group(healthy(), "sink", partitions=parts(4), oldest_waiting_ms=NOW - 300_000)
    assert problems(facts) == ["clickhouse"]
    c = check(facts, "clickhouse")
    assert c.why == "ClickHouse is stale: a webhook received 5 min ago is not in it yet (over 120 s)"
    assert check(facts, "clickhouse", Limits(max_age_s=301)).level == OK


def test_an_empty_clickhouse_is_fine_and_says_so() -> None:
    facts = healthy(clickhouse=ClickHouse("chdb:///d/clickhouse", True, newest=Newest()), log=Newest())
    assert check(facts, "clickhouse").detail == "chdb:///d/clickhouse: newest row none (no events)"
    assert check(facts, "newest").detail == "no event, no alert"
    assert judge(facts).healthy


def test_the_owner_is_named_with_its_pid_and_how_long_it_holds_the_directory() -> None:
    assert check(healthy(), "owner").detail == ("pid 42 (enx-streams worker --roles processor,sink) owns "
                                                "/d/clickhouse since 2027-01-15 07:00:00Z (60 min)")
    unknown_since = healthy(owner=Owner(True, "/d/clickhouse", pid=42, command="enx-streams dev"))
    assert check(unknown_since, "owner").detail == "pid 42 (enx-streams dev) owns /d/clickhouse"


def test_the_newest_event_and_alert_come_from_the_log_else_from_clickhouse() -> None:
    assert check(healthy(), "newest").detail == "event 4 s ago, alert transcode_stalled app/c1 10 min ago"
    from_ch = healthy(log=Newest(error="not read"), clickhouse=ClickHouse("c", True, newest=Newest(
        event_ms=NOW - 7_000, alert_ms=NOW - 8_000, alert="transcode_recovered app/c2")))
    assert check(from_ch, "newest").detail == "event 7 s ago, alert transcode_recovered app/c2 8 s ago"


# -- showing it --------------------------------------------------------------------------------------

def test_the_table_puts_the_verdict_first_then_aligned_rows() -> None:
    facts = group(healthy(ingest=Ingest("u", answered=False, error="refused")), "sink", members=0)
    lines = render.table(judge(facts)).splitlines()
    assert lines[0].startswith("degraded: consumer group enx-streams-sink.enablex has no live member")
    assert lines[1].startswith("    also: ingest does not answer at u (refused), do ")
    assert lines[2] == ""
    rows = lines[3:]
    assert [r.split()[0] for r in rows] == ["broker", "processor", "sink", "ingest", "spool", "clickhouse",
                                            "owner", "newest"]
    assert len({r.index(r.split()[1], len(r.split()[0])) for r in rows}) == 1  # the states start in one column
    assert render.table(judge(healthy())).splitlines()[0] == "healthy"


def test_the_json_holds_the_verdict_the_problems_and_every_lag() -> None:
    facts = group(healthy(), "processor", members=0, partitions=parts(2, 0))
    out = json.loads(render.as_json(judge(facts), facts))
    assert out["verdict"] == "degraded"
    assert [p["check"] for p in out["problems"]] == ["processor"] and out["problems"][0]["do"]
    processor = out["facts"]["groups"][0]
    assert processor["lag"] == 2 and [p["lag"] for p in processor["partitions"]] == [2, 0]
    assert json.loads(render.as_json(judge(healthy()), healthy()))["verdict"] == "healthy"


@pytest.mark.parametrize("seconds, text", [(None, "?"), (-3, "0 s"), (42.4, "42 s"), (119, "119 s"),
                                           (299, "299 s"), (300, "5 min"), (7199, "120 min"), (7200, "2.0 h"),
                                           (172800, "2.0 d")])
def test_ages_read_as_people_say_them(seconds: float | None, text: str) -> None:
    assert age(seconds) == text


def test_sizes_read_as_people_say_them() -> None:
    assert [size(n) for n in (None, 0, 1023, 1024, 5 * 1024 ** 2, 3 * 1024 ** 3)] == [
        "?", "0 B", "1023 B", "1.0 KiB", "5.0 MiB", "3.0 GiB"]


# -- what gather reads without I/O to anything but a folder ------------------------------------------

@pytest.mark.parametrize("host, url", [("127.0.0.1", "http://127.0.0.1:8080/readyz"),
                                       ("0.0.0.0", "http://127.0.0.1:8080/readyz"),
                                       ("::", "http://[::1]:8080/readyz"),
                                       ("ingest.internal", "http://ingest.internal:8080/readyz")])
def test_ingest_is_asked_where_it_listens_a_wildcard_on_loopback(host: str, url: str) -> None:
    assert ingest_url(Settings(ingest_host=host)) == url


def _event(received_at_ms: int) -> bytes:
    return default_codec().encode("WebhookEvent", {
        "event_id": "e", "received_at": received_at_ms, "type": "roomdrop", "app_id": "a", "room_id": None,
        "conf_num": "c", "trans_date": None, "files": [], "destination": None, "raw": "{}", "source": None})


def test_the_spool_directory_is_read_as_it_stands_without_changing_it(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    assert peek(directory) is None and not directory.exists()  # nothing created
    spool = Spool(directory)
    now_ms = int(time.time() * 1000)
    for i in range(3):
        spool.append(LOG, b"a/c", _event(now_ms - (300 - i) * 1000))
    first = spool.pending(1)[0]
    spool.ack(first.end)
    spool.close()
    with open(directory / "spool.log", "ab") as f:
        f.write(b"\x00\x00\x01\x00torn")  # a torn last frame: not counted
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    view = peek(directory)
    assert view is not None and view.pending_frames == 2
    assert view.pending_bytes == (directory / "spool.log").stat().st_size - first.end
    assert default_codec().decode(view.oldest.value)["received_at"] == now_ms - 299_000
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    facts = spool_of(Settings(data_dir=tmp_path), None, now_ms)
    assert (facts.source, facts.frames, facts.oldest_age_s) == ("directory", 2, 299.0)


def test_ingest_s_answer_is_the_spool_when_it_gives_one(tmp_path: Path) -> None:
    readyz = {"kafka": False, "spool_bytes": 900, "spool_frames": 4, "spool_oldest_s": 12.5}
    assert spool_of(Settings(data_dir=tmp_path), readyz, NOW) == SpoolFacts(
        "ingest", str(tmp_path / "spool"), bytes=900, frames=4, oldest_age_s=12.5)
    assert spool_of(Settings(data_dir=tmp_path), None, NOW).source == "none"
