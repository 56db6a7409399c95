"""The HTTP contract against the real broker: every case posted, the topics read back and decoded."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaConsumer

from streams import watermark
from streams.avro import AvroError, default_codec
from streams.broker.topics import contract_topics, ensure_topics
from streams.config import Secret, Settings
from streams.ingest.service import create_app

TOKEN = "s3cr3t-token-for-tests"
NOW = int(time.time())

ACCEPTED = [
    ({"type": "roomdrop", "trans_date": NOW, "app_id": "app1", "room_id": "r1", "conf_num": "c1"}, 0),
    ({"type": "recording", "trans_date": str(NOW), "app_id": "app1", "room_id": "r1", "conf_num": "c1",
      "recording": ["http://f/a.mkv", "http://f/b.mkv"]}, 2),
    ({"type": "transcoded", "trans_date": NOW * 1000, "app_id": "app1", "room_id": "r1", "conf_num": "c1",
      "recording": "http://f/c.mp4", "stage": "1", "file_size": "2048"}, 1),
    ({"type": "file-transfer", "trans_date": NOW, "app_id": "app1", "room_id": "r1", "conf_num": "c1",
      "destination": {"name": "awss3", "host": "", "account": "acct"}, "files": [{"url": "s3://b/c.mp4"}]}, 1),
    ({"type": "recording", "trans_date": "2026-11-24 10:00:00", "app_id": "app2", "room_id": "r2", "conf_num": "c2",
      "recording": [{"url": "http://f/x.mkv"}]}, 1),
    ({"type": "transcoded", "trans_date": "2026-11-24T10:30:00Z", "app_id": "app2", "room_id": "r2",
      "conf_num": "c2", "transcoded": [{"url": "http://f/x.mp4"}]}, 1),
    ({"type": "chatdata", "trans_date": "2026-11-24 10:05:00", "app_id": "app2", "room_id": "r2", "conf_num": "c2",
      "chatdata": [{"url": "http://f/chat.txt"}], "extra_field": {"kept": True}}, 1),
    ({"type": "whiteboard", "app_id": "app2", "conf_num": "c2", "trans_date": NOW}, 0),
]

REJECTED = [
    ("{“type”: “roomdrop”, “app_id”: “a”, “conf_num”: “1”}".encode(), "not_json"),
    (b"[1, 2]", "not_object"),
    (b'{"type": "roomdrop", "app_id": "\\ud800", "conf_num": "1"}', "bad_unicode"),  # found by the fuzz test
    (b'{"app_id": "a", "conf_num": "1"}', "missing_field"),
    (b'{"type": "roomdrop", "conf_num": "1"}', "missing_field"),
    (b'{"type": "recording", "app_id": "a"}', "missing_field"),
    (b'{"type": "recording", "app_id": "a", "conf_num": "1", "recording": [42]}', "wrong_type"),
    (b'{"type": "roomdrop", "app_id": "a", "conf_num": "1", "trans_date": "Unix Timestamp"}', "bad_trans_date"),
    (b"\xff\xfe not utf-8", "not_utf8"),
]


@pytest.fixture
async def ingest(bootstrap: str, tmp_path: Path) -> AsyncIterator[tuple[Settings, str]]:
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=bootstrap, topic_prefix=f"i{uuid.uuid4().hex[:10]}.",
                        partitions=2, ingest_token=Secret(TOKEN), max_body_bytes=4096)
    await ensure_topics(bootstrap, contract_topics(settings))
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        yield settings, str(server.make_url("/webhooks/enablex"))
    finally:
        await server.close()


async def read_topic(settings: Settings, short: str, count: int, timeout_s: float = 30) -> list:
    consumer = AIOKafkaConsumer(settings.topic(short), bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                group_id=f"read-{uuid.uuid4().hex}")
    await consumer.start()
    got: list = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(got) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                got.extend(r for r in records if not is_watermark(r.value))  # ingest's, every second: not webhooks
    finally:
        await consumer.stop()
    return got


def is_watermark(value: bytes | None) -> bool:
    try:
        return value is not None and watermark.is_mark(default_codec().decode(value))
    except AvroError:
        return False


async def test_every_case(ingest: tuple[Settings, str]) -> None:
    settings, url = ingest
    ids = []
    async with ClientSession() as http:
        for body, _files in ACCEPTED:
            async with http.post(f"{url}/{TOKEN}", data=json.dumps(body)) as r:
                assert r.status == 202, await r.text()
                answer = await r.json()
                assert answer["status"] == "accepted"
                ids.append(answer["event_id"])
        async with http.post(f"{url}/{TOKEN}", data=json.dumps(ACCEPTED[0][0], indent=2)) as r:
            assert (await r.json())["event_id"] == ids[0]  # same payload, same id
        rejected = {}
        for raw, code in REJECTED:
            async with http.post(f"{url}/{TOKEN}", data=raw, headers={"Authorization": "Bearer x"}) as r:
                assert r.status == 400, (raw, await r.text())
                answer = await r.json()
                assert answer["error"].startswith(code + ":"), answer
                rejected[answer["deadletter_id"]] = (raw, code)
        async with http.post(url, data=json.dumps(ACCEPTED[0][0])) as r:
            assert r.status == 401
        async with http.post(f"{url}/wrong-token", data=json.dumps(ACCEPTED[0][0])) as r:
            assert r.status == 401
        async with http.post(f"{url}/{TOKEN}", data=b"x" * 5000) as r:
            assert r.status == 413

        async def chunked():
            for _ in range(10):
                yield b"y" * 1000

        async with http.post(f"{url}/{TOKEN}", data=chunked()) as r:
            assert r.status == 413
        async with http.get(url.replace("/webhooks/enablex", "/metrics")) as r:
            metrics = await r.text()
        async with http.get(url.replace("/webhooks/enablex", "/readyz")) as r:
            assert r.status == 200 and (await r.json())["ready_by"] == "kafka"

    assert 'enx_ingest_accepted_total{type="recording"} 2.0' in metrics
    assert "enx_ingest_kafka_up 1.0" in metrics and "enx_ingest_spool_frames 0.0" in metrics
    assert 'enx_ingest_accepted_total{type="other"} 1.0' in metrics
    assert 'enx_ingest_rejected_total{reason="unauthorized"} 2.0' in metrics
    assert 'enx_ingest_rejected_total{reason="too_large"} 2.0' in metrics
    assert 'enx_ingest_rejected_total{reason="missing_field"} 3.0' in metrics
    assert "enx_ingest_produce_seconds_bucket" in metrics

    codec = default_codec()
    records = await read_topic(settings, "webhooks", len(ACCEPTED) + 1)
    assert len(records) == len(ACCEPTED) + 1  # the repeated delivery is in the log too, with the same id
    events = [codec.decode(r.value) for r in records]
    assert sorted({e["event_id"] for e in events}) == sorted(ids)
    for record, event in zip(records, events):
        assert record.key == f"{event['app_id']}/{event['conf_num']}".encode()
    by_id = {e["event_id"]: e for e in events}
    for (body, files), event_id in zip(ACCEPTED, ids):
        event = by_id[event_id]
        assert event["type"] == body["type"] and len(event["files"]) == files
        assert json.loads(event["raw"]) == body
    transcoded = by_id[ids[2]]
    assert transcoded["files"] == [{"kind": "transcoded", "url": "http://f/c.mp4", "stage": "1", "size_bytes": 2048}]
    assert transcoded["trans_date"] == NOW * 1000
    assert by_id[ids[3]]["destination"] == {"name": "awss3", "host": None, "account": "acct"}
    assert by_id[ids[5]]["trans_date"] == int(dt.datetime(2026, 11, 24, 10, 30, tzinfo=dt.timezone.utc).timestamp()) * 1000

    letters = [codec.decode(r.value) for r in await read_topic(settings, "deadletter", len(REJECTED))]
    assert {dl["id"]: (dl["raw"], dl["reason"].split(":")[0]) for dl in letters} == rejected
    for dl in letters:
        assert "authorization" not in dl["headers"] and dl["source"] == "127.0.0.1"
        assert TOKEN not in json.dumps(dl["headers"])
    # nothing from the 401s and 413s was stored
    assert not any(TOKEN.encode() in r.value for r in records)


async def test_ready_from_the_spool_when_kafka_is_unreachable(tmp_path: Path) -> None:
    from streams.broker.local import free_port

    settings = Settings(data_dir=tmp_path, kafka_bootstrap=f"localhost:{free_port()}", partitions=2)
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as http:
            async with http.get(server.make_url("/readyz")) as r:
                body = await r.json()
            assert r.status == 200 and body["ready_by"] == "spool" and body["kafka"] is False
            assert (body["spool_frames"], body["spool_bytes"], body["spool_oldest_s"]) == (0, 0, None)
            posted = time.time()
            for i in range(3):
                async with http.post(server.make_url("/webhooks/enablex"),
                                     data=json.dumps(dict(ACCEPTED[0][0], conf_num=f"w{i}"))) as r:
                    assert r.status == 202
            async with http.get(server.make_url("/readyz")) as r:
                body = await r.json()
            assert r.status == 200 and body["ready_by"] == "spool" and body["spool_frames"] == 3
            assert 0 <= body["spool_oldest_s"] <= time.time() - posted + 1 and body["spool_bytes"] > 0
            async with http.get(server.make_url("/metrics")) as r:
                exported = await r.text()
            assert "enx_ingest_kafka_up 0.0" in exported and "enx_ingest_spool_frames 3.0" in exported
            assert f"enx_ingest_spool_bytes {float(body['spool_bytes'])}" in exported
            assert "enx_ingest_spool_oldest_seconds" in exported
        assert (tmp_path / "spool" / "spool.log").stat().st_size > 0
    finally:
        await asyncio.wait_for(server.close(), timeout=30)


async def test_a_full_spool_answers_503_with_retry_after_and_stores_nothing(tmp_path: Path) -> None:
    from streams.broker.local import free_port
    from streams.ingest.spool import Spool

    settings = Settings(data_dir=tmp_path, kafka_bootstrap=f"localhost:{free_port()}", partitions=2,
                        spool_max_bytes=4000)
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    accepted, answers = [], []
    try:
        async with ClientSession() as http:
            for i in range(40):  # a few hundred bytes each: the 4,000 bytes are reached well before the end
                body = dict(ACCEPTED[1][0], conf_num=f"full-{i}")
                async with http.post(server.make_url("/webhooks/enablex"), data=json.dumps(body)) as r:
                    answers.append(r.status)
                    if r.status == 202:
                        accepted.append((await r.json())["event_id"])
                    else:
                        assert r.status == 503 and r.headers["Retry-After"] == "30", await r.text()
                        assert "spool is full" in (await r.json())["error"]
            async with http.get(server.make_url("/readyz")) as r:
                ready = await r.json()
                assert r.status == 503 and ready["ready_by"] is None and ready["kafka"] is False
    finally:
        await asyncio.wait_for(server.close(), timeout=30)
    first_refusal = answers.index(503)
    assert 0 < first_refusal and set(answers[first_refusal:]) == {503}  # once full, it stays full (no Kafka)
    spool = Spool(tmp_path / "spool")
    try:
        assert spool.size() <= 4000
        codec = default_codec()
        assert [codec.decode(f.value)["event_id"] for f in spool.pending(1000)] == accepted  # every 202, no other
    finally:
        spool.close()


async def test_the_spool_leaves_the_disk_its_free_space(tmp_path: Path) -> None:
    from streams.broker.local import free_port

    settings = Settings(data_dir=tmp_path, kafka_bootstrap=f"localhost:{free_port()}", partitions=2,
                        spool_min_free_bytes=2 ** 60)  # more than any disk: the floor is always reached
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as http:
            async with http.get(server.make_url("/readyz")) as r:
                assert r.status == 503 and (await r.json())["ready"] is False
            async with http.post(server.make_url("/webhooks/enablex"), data=json.dumps(ACCEPTED[0][0])) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "30"
    finally:
        await asyncio.wait_for(server.close(), timeout=30)
    assert (tmp_path / "spool" / "spool.log").stat().st_size == 0
