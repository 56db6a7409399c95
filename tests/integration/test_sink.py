"""The sink worker on the real broker and the real embedded ClickHouse (chdb in a fresh directory per test).

Every test has its own topic prefix (so its own topics and consumer group) and its own data directory.
ClickHouse is read the way users read it: `run_query`, through the sink's own query socket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.avro import default_codec
from streams.broker.topics import contract_topics, ensure_topics
from streams.config import Settings
from streams.sink import migrations
from streams.sink.clickhouse import OwnerError, connect
from streams.sink.consumer import SinkOptions, run_sink, sink_group
from streams.sink.query import run_query

T0 = 1_714_559_415_250  # 2024-05-01 10:30:15.250 UTC
FAST = SinkOptions(max_rows=1000, max_age_s=0.2, backoff_initial_s=0.05, backoff_max_s=0.4, shutdown_flush_s=2.0,
                   poll_timeout_s=0.2)
DEADLINE_S = 30.0


@pytest.fixture
async def settings(bootstrap: str, tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path, kafka_bootstrap=bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
                 partitions=2)
    await ensure_topics(bootstrap, contract_topics(s))
    return s


@pytest.fixture
async def producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


class Running:
    def __init__(self, settings: Settings, options: SinkOptions = FAST) -> None:
        self.settings = settings
        self.options = options
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def start(self) -> Running:
        self.task = asyncio.create_task(run_sink(self.settings, self.stop, on_ready=self.ready.set, options=self.options))
        ready = asyncio.create_task(self.ready.wait())
        await asyncio.wait({ready, self.task}, timeout=DEADLINE_S, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            self.task.result()  # raises what stopped it
        assert self.ready.is_set(), "the sink did not get ready in time"
        return self

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, timeout=DEADLINE_S)


@pytest.fixture
async def sink(settings: Settings) -> AsyncIterator[Running]:
    running = await Running(settings).start()
    try:
        yield running
    finally:
        await running.close()


# -- helpers ----------------------------------------------------------------------------------------

def webhook(event_id: str, type_: str, conf_num: str = "42", files: list | None = None, **extra: Any) -> dict:
    return {"event_id": event_id, "received_at": T0, "type": type_, "app_id": "app", "room_id": "room",
            "conf_num": conf_num, "trans_date": T0 - 1000, "files": files or [], "destination": None,
            "raw": json.dumps({"type": type_, "app_id": "app", "conf_num": conf_num}), "source": "127.0.0.1",
            **extra}


def session(version: int, sla_state: str, conf_num: str = "42") -> dict:
    return {"app_id": "app", "conf_num": conf_num, "room_id": "room", "version": version,
            "event_ids": [f"e{i}" for i in range(version)], "ended_at": T0, "recording_at": T0 + 1000,
            "transcoded_at": None, "delivered_at": None, "chat_at": None, "recording_files": 1,
            "transcoded_files": 0, "delivered_files": 0, "chat_files": 0, "recording_latency_s": 1.0,
            "transcode_latency_s": None, "delivery_latency_s": None, "chat_latency_s": None,
            "sla_deadline": T0 + 2_700_000, "sla_state": sla_state, "stalled_at": None, "last_event_at": T0 + 1000}


def alert(alert_id: str, kind: str = "transcode_stalled", conf_num: str = "42") -> dict:
    return {"alert_id": alert_id, "kind": kind, "app_id": "app", "conf_num": conf_num, "room_id": "room",
            "deadline": T0 + 2_700_000, "detected_at": T0 + 2_710_000, "overdue_s": None}


class Log:
    """What was produced: the next offset per partition, to compare with the group's commits."""

    def __init__(self) -> None:
        self.ends: dict[TopicPartition, int] = {}

    async def send(self, producer: AIOKafkaProducer, topic: str, value: bytes | None, key: bytes = b"app/42") -> None:
        meta = await producer.send_and_wait(topic, value, key=key)
        tp = TopicPartition(meta.topic, meta.partition)
        self.ends[tp] = max(self.ends.get(tp, 0), meta.offset + 1)


async def produce(producer: AIOKafkaProducer, log: Log, settings: Settings, short: str, name: str, record: dict,
                  key: bytes = b"app/42") -> None:
    await log.send(producer, settings.topic(short), default_codec().encode(name, record), key)


async def rows(settings: Settings, sql: str) -> list[dict]:
    out = await asyncio.to_thread(run_query, settings, sql, "JSONEachRow")
    return [json.loads(line) for line in out.decode().splitlines()]


async def until(what: str, probe: Callable[[], Any], timeout_s: float = DEADLINE_S) -> Any:
    """Poll ``probe`` (async) until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.1)  # poll interval, bounded by the deadline
    raise AssertionError(f"timed out waiting for {what}; last saw {last!r}")


async def committed(settings: Settings) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(sink_group(settings))
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def _at_least(n: int, rows_coro: Any) -> list | None:
    """The rows, once there are at least ``n`` of them (None before)."""
    found = await rows_coro
    return found if len(found) >= n else None


async def count(settings: Settings, sql: str) -> int:
    return int((await rows(settings, sql))[0]["n"])


# -- tests ------------------------------------------------------------------------------------------

async def test_all_four_topics_reach_clickhouse_and_duplicates_collapse(settings, producer, sink):
    log = Log()
    recording = webhook("ev-rec", "recording", files=[{"kind": "recording", "url": "https://f/a.mkv", "stage": None,
                                                        "size_bytes": 100},
                                                       {"kind": "recording", "url": "https://f/b.mkv", "stage": None,
                                                        "size_bytes": 50}])
    transfer = webhook("ev-ft", "file-transfer", files=[{"kind": "transferred", "url": "s3://b/c.mp4", "stage": "1",
                                                          "size_bytes": 7}],
                       destination={"name": "awss3", "host": None, "account": None})
    for record in (recording, transfer, recording):  # the recording delivered twice
        await produce(producer, log, settings, "webhooks", "WebhookEvent", record)
    await produce(producer, log, settings, "webhooks", "WebhookEvent", webhook("ev-other", "roomdrop", conf_num="7"),
                  key=b"app/7")
    for version, state in ((1, "not_applicable"), (3, "pending"), (2, "pending"), (3, "pending")):
        await produce(producer, log, settings, "sessions", "SessionState", session(version, state))
    await log.send(producer, settings.topic("sessions"), None, key=b"app/old")  # a tombstone: skipped
    for _ in range(2):
        await produce(producer, log, settings, "alerts", "SlaAlert", alert("al-1"))
    await produce(producer, log, settings, "deadletter", "DeadLetter",
                  {"id": "dl-1", "received_at": T0, "reason": "not_json: Expecting value", "raw": b"\xe2\x80\x9c{",
                   "headers": {"content-type": "application/json"}, "source": "10.1.1.1"})

    events = await until("the three webhook events", lambda: _at_least(3, rows(
        settings, "SELECT event_id, type, conf_num, file_count, total_bytes, destination "
                  "FROM enablex.webhook_events FINAL ORDER BY event_id")))
    assert events == [
        {"event_id": "ev-ft", "type": "file-transfer", "conf_num": "42", "file_count": 1, "total_bytes": 7,
         "destination": "awss3"},
        {"event_id": "ev-other", "type": "roomdrop", "conf_num": "7", "file_count": 0, "total_bytes": 0,
         "destination": ""},
        {"event_id": "ev-rec", "type": "recording", "conf_num": "42", "file_count": 2, "total_bytes": 150,
         "destination": ""}]

    async def everything_committed() -> bool:
        return await committed(settings) == log.ends

    await until("every offset committed", everything_committed)
    files = await rows(settings, "SELECT event_id, kind, url, size_bytes, destination FROM enablex.session_files "
                                 "FINAL ORDER BY url")
    assert files == [
        {"event_id": "ev-rec", "kind": "recording", "url": "https://f/a.mkv", "size_bytes": 100, "destination": ""},
        {"event_id": "ev-rec", "kind": "recording", "url": "https://f/b.mkv", "size_bytes": 50, "destination": ""},
        {"event_id": "ev-ft", "kind": "transferred", "url": "s3://b/c.mp4", "size_bytes": 7, "destination": "awss3"}]
    assert await rows(settings, "SELECT app_id, conf_num, version, sla_state, sla_deadline FROM enablex.sessions "
                                "FINAL") == [{"app_id": "app", "conf_num": "42", "version": 3,
                                              "sla_state": "pending", "sla_deadline": "2024-05-01 11:15:15.250"}]
    assert await rows(settings, "SELECT alert_id, kind FROM enablex.sla_alerts FINAL") == \
        [{"alert_id": "al-1", "kind": "transcode_stalled"}]
    assert await rows(settings, "SELECT id, reason_code, hex(raw) AS raw, headers FROM enablex.dead_letters FINAL") == \
        [{"id": "dl-1", "reason_code": "not_json", "raw": "E2809C7B", "headers": {"content-type": "application/json"}}]
    # the redelivered event collapses (within one insert already; across inserts under FINAL)
    assert await count(settings, "SELECT count() AS n FROM enablex.webhook_events FINAL "
                                 "WHERE event_id = 'ev-rec'") == 1
    # one embedded data directory, one owner: a second sink refuses to start
    second = asyncio.Event()
    with pytest.raises(OwnerError, match="several sink workers need a ClickHouse server"):
        await asyncio.wait_for(run_sink(settings, second, options=FAST), timeout=DEADLINE_S)


async def test_an_undecodable_record_becomes_a_dead_letter(settings, producer, sink):
    log = Log()
    await log.send(producer, settings.topic("webhooks"), b"not avro at all", key=b"app/9")
    await produce(producer, log, settings, "webhooks", "SessionState", session(1, "pending"))  # wrong record type
    await log.send(producer, settings.topic("alerts"), None)  # no tombstones on a log kept forever
    await produce(producer, log, settings, "webhooks", "WebhookEvent", webhook("ev-ok", "roomdrop"))

    letters = await until("three dead letters", lambda: _at_least(3, rows(
        settings, "SELECT id, reason_code, reason, if(isValidUTF8(raw), raw, hex(raw)) AS raw, source, headers "
                  "FROM enablex.dead_letters FINAL ORDER BY source")))
    by_reason = {letter["reason"].split(":")[0]: letter for letter in letters}
    assert set(by_reason) == {"undecodable", "unprojectable"} and len(letters) == 3
    garbage = next(letter for letter in letters if letter["raw"] == "not avro at all")
    assert garbage["reason"].startswith("undecodable: not Avro single-object encoding")
    assert garbage["source"].startswith(settings.topic("webhooks") + "/")
    assert garbage["headers"] == {"kafka_key": "app/9"}
    wrong = [letter for letter in letters if letter["reason_code"] == "unprojectable"]
    assert len(wrong) == 1 and "SessionState record on the webhooks topic" in wrong[0]["reason"]
    assert any(letter["source"].startswith(settings.topic("alerts") + "/") for letter in letters)
    # the good record after them was not held up, and everything was committed
    assert await until("the good event", lambda: rows(settings, "SELECT event_id FROM enablex.webhook_events FINAL")) \
        == [{"event_id": "ev-ok"}]

    async def everything_committed() -> bool:
        return await committed(settings) == log.ends

    await until("every offset committed", everything_committed)


async def test_a_failing_insert_is_retried_and_nothing_past_it_is_committed(settings, producer, caplog):
    caplog.set_level(logging.WARNING, logger="streams.sink")
    log = Log()
    # one batch of exactly four rows (due by size, never by age), so the test knows what it carries
    by_size = dataclasses.replace(FAST, max_rows=4, max_age_s=600.0)
    running = await Running(settings, by_size).start()
    admin_client = await asyncio.to_thread(connect, settings)  # same process, same engine as the sink
    try:
        # A real failure: a table the batch needs is gone.
        await asyncio.to_thread(admin_client.command, "DROP TABLE enablex.sla_alerts")
        await produce(producer, log, settings, "webhooks", "WebhookEvent", webhook("ev-during", "recording"))
        for i in range(3):
            await produce(producer, log, settings, "alerts", "SlaAlert", alert(f"al-{i}", conf_num=str(10 + i)),
                          key=f"app/{10 + i}".encode())

        def failures() -> int:
            return sum("insert into enablex.sla_alerts failed" in r.getMessage() for r in caplog.records)

        async def failed_a_few_times() -> bool:
            return failures() >= 3

        await until("the insert to fail and be retried", failed_a_few_times)
        # the batch's other table is in, but no offset of the batch is committed
        assert await count(settings, "SELECT count() AS n FROM enablex.webhook_events") == 1
        assert await committed(settings) == {}
        retried = failures()

        # ClickHouse is usable again: the same batch gets in, then its offsets are committed
        for migration in migrations.discover():  # the table as the migrations make it (002, then its columns)
            for statement in migration.statements():
                if statement.startswith(("CREATE TABLE IF NOT EXISTS enablex.sla_alerts",
                                         "ALTER TABLE enablex.sla_alerts")):
                    await asyncio.to_thread(admin_client.command, statement)

        found = await until("the alerts after the failure", lambda: _at_least(3, rows(
            settings, "SELECT alert_id FROM enablex.sla_alerts FINAL ORDER BY alert_id")))
        assert found == [{"alert_id": "al-0"}, {"alert_id": "al-1"}, {"alert_id": "al-2"}]

        async def everything_committed() -> bool:
            return await committed(settings) == log.ends

        await until("every offset committed", everything_committed)
        assert retried >= 3
        # the table that succeeded was not inserted again by the retries
        assert await count(settings, "SELECT count() AS n FROM enablex.webhook_events") == 1
    finally:
        await asyncio.to_thread(admin_client.close)
        await running.close()


async def test_stopping_flushes_and_commits_what_was_consumed(settings, producer):
    log = Log()
    for i in range(5):
        await produce(producer, log, settings, "webhooks", "WebhookEvent", webhook(f"ev-{i}", "chatdata"),
                      key=f"app/{i}".encode())
    held = SinkOptions(max_rows=1000, max_age_s=600.0, poll_timeout_s=0.2)  # no flush by age or size
    stop = asyncio.Event()
    sinks: list = []
    task = asyncio.create_task(run_sink(settings, stop, options=held, on_sink=sinks.append))
    try:
        async def all_consumed() -> bool:
            return bool(sinks) and sinks[0].stats.records == 5

        await until("the sink to consume the five records", all_consumed)
        assert await committed(settings) == {}
        assert await count(settings, "SELECT count() AS n FROM enablex.webhook_events") == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=DEADLINE_S)
    # run_sink returned: the batch it held was inserted, then its offsets committed
    assert await committed(settings) == log.ends
    assert sinks[0].stats.rows_inserted == 5 and sinks[0].stats.commits >= 1
    restarted = await Running(settings).start()
    try:
        assert await count(settings, "SELECT count() AS n FROM enablex.webhook_events") == 5
    finally:
        await restarted.close()
