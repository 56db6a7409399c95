"""The reconciler end to end on the real broker and the real embedded ClickHouse, against the local stand-in
for EnableX's Server API (tests/enablex_api.py).

The log gets webhooks through the sink (as ingest would write them); the archive and the CDR hold a little
more: a lost roomdrop, a lost transcoded, a lost chatdata, an unknown conference, and a session present in
both. Passes run in-process with production parts (Kafka producer, ClickHouse through ``run_query``); the
CLI is run as a subprocess for its errors.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.avro import default_codec
from streams.broker.topics import contract_topics, ensure_topics
from streams.config import Secret, Settings
from streams.events import normalise
from streams.reconcile import cursor as C
from streams.reconcile.client import EnableXAuthError
from streams.reconcile.compare import finding_id
from streams.reconcile.log import clickhouse_query
from streams.reconcile.run import FindingProducer, reconcile_pass, run_once
from streams.sink.consumer import SinkOptions, run_sink
from streams.sink.query import run_query
from tests.enablex_api import FakeEnableX

ROOT = Path(__file__).resolve().parents[2]
APP = "test-app"
MAY1_10H = int(dt.datetime(2024, 5, 1, 10, tzinfo=dt.timezone.utc).timestamp())  # Unix seconds
NOW_MS = (MAY1_10H + 2 * 3600) * 1000  # May 1, 12:00: everything is older than the grace period
FAST = SinkOptions(max_rows=1000, max_age_s=0.2, backoff_initial_s=0.05, backoff_max_s=0.4, shutdown_flush_s=2.0,
                   poll_timeout_s=0.2)
DEADLINE_S = 60.0


def webhook_body(type_: str, conf: str, **files: Any) -> bytes:
    return json.dumps({"type": type_, "app_id": APP, "room_id": "room-1", "conf_num": conf,
                       "trans_date": MAY1_10H, **files}).encode()


LOG = {  # conf_num -> the webhooks that reached the log
    "both": ["roomdrop", "recording", "transcoded", "chatdata"],
    "lost-transcoded": ["roomdrop", "recording", "chatdata"],
    "lost-chatdata": ["roomdrop", "recording", "transcoded"],
    "lost-roomdrop": ["recording", "transcoded"],
}
FILES = {"recording": {"recording": [{"url": "https://files/r.mkv"}]},
         "transcoded": {"transcoded": [{"url": "https://files/c.mp4"}]},
         "chatdata": {"chatdata": [{"url": "https://files/chat.json"}]}, "roomdrop": {}}


def archive_entry(conf: str) -> dict:
    return {"_id": f"arch-{conf}", "trans_date": MAY1_10H + 600, "conf_num": conf, "app_id": APP, "room_id": "room-1",
            "recording": [{"url": f"https://enablex/{conf}/rec.mkv"}],
            "transcoded": [{"url": f"https://enablex/{conf}/composite.mp4"}],
            "chatdata": f"https://enablex/{conf}/chat.json", "metadata": f"https://enablex/{conf}/meta.json"}


def cdr_row(conf: str, user: str) -> dict:
    return {"trans_date": MAY1_10H, "conf_num": conf, "app_id": APP, "cdr_id": f"cdr-{conf}-{user}",
            "room": {"room_id": "room-1", "connect_dt": "2024-05-01T09:00:00Z",
                     "disconnect_dt": "2024-05-01T10:00:00Z" if user == "a" else "2024-05-01T09:30:00Z",
                     "duration": 3600},
            "user": {"role": "moderator" if user == "a" else "participant"}, "usage": {}}


@pytest.fixture
def api() -> Iterator[FakeEnableX]:
    with FakeEnableX(APP, "the-app-key") as fake:
        fake.archive += [archive_entry(c) for c in ("both", "lost-transcoded", "lost-chatdata")]
        fake.cdr += [cdr_row(c, u) for c in ("both", "lost-roomdrop", "unknown") for u in ("a", "b")]
        yield fake


@pytest.fixture
async def settings(bootstrap: str, tmp_path: Path, api: FakeEnableX) -> Settings:
    s = Settings(data_dir=tmp_path, kafka_bootstrap=bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
                 partitions=3, enablex_app_id=Secret(APP), enablex_app_key=Secret("the-app-key"),
                 enablex_api_url=api.url)
    await ensure_topics(bootstrap, contract_topics(s))
    return s


async def until(what: str, probe: Callable[[], Any], timeout_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.2)  # poll interval, bounded by the deadline
    raise AssertionError(f"{what}: not within {timeout_s} s (last {last!r})")


async def rows(settings: Settings, sql: str) -> list[dict]:
    out = await asyncio.to_thread(run_query, settings, sql, "JSONEachRow")
    return [json.loads(line) for line in out.decode().splitlines()]


@pytest.fixture
async def sink(settings: Settings) -> AsyncIterator[dict[str, int]]:
    """The sink running, the log's webhooks sunk; yields the log partition of each session key."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_sink(settings, stop, on_ready=ready.set, options=FAST))
    await asyncio.wait({asyncio.create_task(ready.wait()), task}, timeout=DEADLINE_S,
                       return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    partitions: dict[str, int] = {}
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for conf, types in LOG.items():
            for type_ in types:
                event = normalise(webhook_body(type_, conf, **FILES[type_]), NOW_MS - 3_600_000)
                meta = await producer.send_and_wait(settings.topic("webhooks"),
                                                    default_codec().encode("WebhookEvent", event),
                                                    key=f"{APP}/{conf}".encode())
                partitions[f"{APP}/{conf}"] = meta.partition
    finally:
        await producer.stop()
    total = sum(len(t) for t in LOG.values())

    async def sunk() -> bool:
        return (await rows(settings, "SELECT count() AS n FROM enablex.webhook_events FINAL"))[0]["n"] == total

    await until("the log's webhooks in ClickHouse", sunk)
    try:
        yield partitions
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=DEADLINE_S)


async def a_pass(settings: Settings, now_ms: int = NOW_MS, **kw: Any):
    from streams.reconcile.run import client_of

    api = client_of(settings, backoff_initial_s=0.01)
    producer = FindingProducer(settings)
    await producer.start()
    try:
        return await reconcile_pass(settings, api, clickhouse_query(settings), producer, now_ms=now_ms,
                                    echo=lambda m: None, **kw)
    finally:
        await producer.stop()
        await api.close()


async def topic_records(settings: Settings) -> list[tuple[str, int, dict]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        topic = settings.topic("reconcile")
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        out = []
        deadline = time.monotonic() + DEADLINE_S

        async def behind() -> bool:
            return any([(await consumer.position(tp)) < ends[tp] for tp in tps])

        while await behind():
            assert time.monotonic() < deadline, "could not read the reconcile topic to its end"
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out += [(r.key.decode(), r.partition, default_codec().decode(r.value)) for r in records]
        return out
    finally:
        await consumer.stop()


EXPECTED = {  # (conf_num, missing_type) -> kind
    ("lost-chatdata", "chatdata"): "webhook_missing",
    ("lost-roomdrop", "roomdrop"): "webhook_missing",
    ("lost-transcoded", "transcoded"): "webhook_missing",
    ("unknown", "roomdrop"): "session_unknown",
}


async def test_a_pass_finds_what_the_log_lacks_once_and_the_sink_marks_it(settings: Settings, sink: dict,
                                                                         api: FakeEnableX) -> None:
    first = await a_pass(settings)
    assert {(f.conf_num, f.missing_type): f.kind for f in first.findings} == EXPECTED  # nothing for "both"
    assert first.by_kind() == {"webhook_missing": 3, "session_unknown": 1}
    assert (first.since, first.until, first.archive_entries, first.cdr_rows) == \
        (dt.date(2024, 4, 30), dt.date(2024, 5, 1), 3, 6)
    assert "4 new findings (webhook_missing 3, session_unknown 1)" in first.describe()
    assert api.requests[:2] == ["/video/v2/archive/period/2024-04-30/2024-04-30",
                                "/video/v2/cdr/period/2024-04-30/2024-04-30"]

    # on the topic: keyed and partitioned like the session's webhooks in the log
    records = await topic_records(settings)
    assert len(records) == 4
    for key, partition, record in records:
        assert key == f"{record['app_id']}/{record['conf_num']}"
        assert record["finding_id"] == finding_id(APP, record["conf_num"], record["missing_type"])
        if key in sink:
            assert partition == sink[key]
    lost = next(r for _, _, r in records if r["missing_type"] == "transcoded")
    assert lost["urls"] == ["https://enablex/lost-transcoded/composite.mp4"] and lost["source"] == "archive"
    assert lost["archive_id"] == "arch-lost-transcoded" and lost["trans_date"] == (MAY1_10H + 600) * 1000
    unknown = next(r for _, _, r in records if r["kind"] == "session_unknown")
    assert (unknown["source"], unknown["archive_id"], unknown["urls"]) == ("cdr", "cdr-unknown-a", [])
    assert unknown["trans_date"] == MAY1_10H * 1000  # the last disconnect

    async def sunk() -> list[dict]:
        found = await rows(settings, "SELECT conf_num, missing_type, kind FROM enablex.reconcile_findings FINAL "
                                     "ORDER BY conf_num, missing_type")
        return found if len(found) == 4 else []

    found = await until("the findings in reconcile_findings", sunk)
    assert {(r["conf_num"], r["missing_type"]): r["kind"] for r in found} == EXPECTED
    files = await rows(settings, "SELECT conf_num, kind, url, source, event_id FROM enablex.session_files FINAL "
                                 "WHERE source = 'reconcile' ORDER BY conf_num")
    assert [(r["conf_num"], r["kind"], r["url"]) for r in files] == [
        ("lost-chatdata", "chatdata", "https://enablex/lost-chatdata/chat.json"),
        ("lost-transcoded", "transcoded", "https://enablex/lost-transcoded/composite.mp4")]
    assert files[1]["event_id"] == finding_id(APP, "lost-transcoded", "transcoded")
    webhook_files = await rows(settings, "SELECT DISTINCT source FROM enablex.session_files FINAL "
                                         "WHERE source != 'reconcile'")
    assert webhook_files == [{"source": "webhook"}]

    # the same pass twice: nothing twice
    again = await a_pass(settings)
    assert again.findings == [] and again.already_known == 4
    assert len(await topic_records(settings)) == 4

    # a restart two days later resumes at the cursor's day and moves it on
    assert C.load(C.cursor_path(settings)).day == dt.date(2024, 4, 30)
    api.requests.clear()
    later = await a_pass(settings, now_ms=NOW_MS + 2 * 86_400_000)
    assert (later.since, later.until, later.findings) == (dt.date(2024, 4, 30), dt.date(2024, 5, 3), [])
    assert api.requests[0] == "/video/v2/archive/period/2024-04-30/2024-04-30" and len(api.requests) == 8
    assert C.load(C.cursor_path(settings)).day == dt.date(2024, 5, 2)

    # the cursor lost: reconcile_findings still knows what was produced
    C.cursor_path(settings).unlink()
    manual = await a_pass(settings, since=dt.date(2024, 5, 1), until=dt.date(2024, 5, 1))
    assert manual.findings == [] and manual.already_known == 4
    assert C.load(C.cursor_path(settings)).day is None  # an explicit period does not move the cursor
    assert len(await topic_records(settings)) == 4


async def test_a_room_pass_reads_only_that_room_and_young_items_wait(settings: Settings, sink: dict,
                                                                    api: FakeEnableX) -> None:
    api.archive.append({**archive_entry("other"), "room_id": "room-2"})
    early = await a_pass(settings, now_ms=(MAY1_10H + 300) * 1000, room="room-2")
    assert early.findings == [] and early.archive_entries == 1  # ten minutes of grace not over yet
    assert all("/room/room-2/" in path for path in api.requests)
    done = await a_pass(settings, room="room-2")
    assert [(f.conf_num, f.missing_type) for f in done.findings] == [
        ("other", "recording"), ("other", "transcoded"), ("other", "chatdata")]


async def test_retries_through_429_and_5xx_then_refuses_wrong_credentials(settings: Settings, sink: dict,
                                                                         api: FakeEnableX) -> None:
    api.then(429, {"result": 429, "error": "slow down"}, headers={"Retry-After": "0"}).then(503, {})
    summary = await a_pass(settings)
    assert len(summary.findings) == 4
    with pytest.raises(EnableXAuthError, match="401"):
        await run_once(settings.with_overrides(enablex_app_key="wrong"), echo=lambda m: None)


def cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ENX_")}
    environ.update({"ENX_DATA_DIR": str(settings.data_dir), "ENX_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                    "ENX_TOPIC_PREFIX": settings.topic_prefix, "ENX_PARTITIONS": str(settings.partitions),
                    "ENX_ENABLEX_API_URL": settings.enablex_api_url, **env})
    return subprocess.run([sys.executable, "-m", "streams.cli", "reconcile", *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=120)


def test_the_cli_says_what_is_wrong(settings: Settings, api: FakeEnableX) -> None:
    missing = cli(settings)
    assert missing.returncode == 2 and "set ENX_ENABLEX_APP_ID and ENX_ENABLEX_APP_KEY" in missing.stderr
    refused = cli(settings, ENX_ENABLEX_APP_ID=APP, ENX_ENABLEX_APP_KEY="not-the-key-s3cr3t")
    assert refused.returncode == 1, refused.stderr
    assert "401" in refused.stderr and "check ENX_ENABLEX_APP_ID and ENX_ENABLEX_APP_KEY" in refused.stderr
    assert "not-the-key-s3cr3t" not in refused.stderr + refused.stdout
    api.then(200, {"result": 1001, "error": "Invalid App ID"})
    bad = cli(settings, ENX_ENABLEX_APP_ID=APP, ENX_ENABLEX_APP_KEY="the-app-key")
    assert bad.returncode == 1 and "result 1001, error 'Invalid App ID'" in bad.stderr
    date = cli(settings, "--since", "May 1", ENX_ENABLEX_APP_ID=APP, ENX_ENABLEX_APP_KEY="the-app-key")
    assert date.returncode == 2 and "give YYYY-MM-DD" in date.stderr


def test_the_worker_role_refuses_without_credentials(settings: Settings) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ENX_")}
    environ.update({"ENX_DATA_DIR": str(settings.data_dir), "ENX_KAFKA_BOOTSTRAP": settings.kafka_bootstrap})
    done = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "--roles", "sink,reconciler"], cwd=ROOT,
                          env=environ, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "reconciler role needs" in done.stderr and "ENX_ENABLEX_APP_KEY" in done.stderr


async def _later_than(settings: Settings, day: dt.date):
    from streams.reconcile import cursor as C

    loaded = C.load(C.cursor_path(settings))
    return loaded if loaded.day is not None and loaded.day >= day else None


def test_the_worker_role_reconciles_beside_the_sink(settings: Settings, api: FakeEnableX) -> None:
    """``worker --roles sink,reconciler``: the pass asks ClickHouse through the sink of its own process."""
    from streams.children import child_env

    from streams.reconcile import cursor as C

    # a reconciler that stopped on the fixtures' day resumes there: its first pass reads May 1 to today
    C.save(C.cursor_path(settings), C.Cursor(day=dt.date(2024, 5, 1)))
    log_path = settings.data_dir / "worker.log"
    env = child_env(settings.with_overrides(reconcile_interval_s="1", reconcile_grace_s="1"))
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--roles", "sink,reconciler"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        async def findings() -> list[dict]:
            try:
                found = await rows(settings, "SELECT kind, conf_num, missing_type FROM enablex.reconcile_findings "
                                             "FINAL ORDER BY conf_num, missing_type")
            except Exception:  # noqa: BLE001 - the worker is still starting
                return []
            return found if len(found) >= 9 else []

        # the log is empty: everything the fixtures hold is a finding
        found = asyncio.run(until("findings of the worker's reconciler", findings, timeout_s=120))
        assert {(r["conf_num"], r["missing_type"]): r["kind"] for r in found if r["missing_type"] == "roomdrop"} \
            == {c: "session_unknown" for c in [("both", "roomdrop"), ("lost-roomdrop", "roomdrop"),
                                                ("unknown", "roomdrop")]}
        assert len(found) == 12  # 3 conferences + 3 archive entries x 3 files
        moved = asyncio.run(until("the cursor past May 1", lambda: _later_than(settings, dt.date(2024, 5, 2)),
                                  timeout_s=60))
        assert moved.day >= dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=2)
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    assert "the-app-key" not in log_path.read_text()
