"""The size budget end to end (streams/broker/limits.py), on the real broker and the embedded ClickHouse:
a body that gets 202 fits the log and reaches ClickHouse whole, one whose record would not fit gets 413 and
stores nothing, an unusable body of any accepted size is a dead letter whole, and a spool frame Kafka can
never take is moved aside while every frame behind it reaches the log."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from streams.avro import default_codec
from streams.broker.limits import MAX_MESSAGE_BYTES
from streams.broker.topics import contract_topics, describe_topic_configs, ensure_topics
from streams.config import Settings
from streams.ingest.spool import Spool, read_frames
from streams.ingest.service import create_app
from tests.integration.test_ingest_http import read_topic
from tests.integration.test_sink import Running, rows, until

MIB = 1024 * 1024
NOW = int(time.time())
codec = default_codec()


def recording_of_size(size: int, conf: str) -> bytes:
    """A valid ``recording`` of exactly ``size`` bytes: one long URL, so the record holds it twice."""
    def body(pad: int) -> bytes:
        return json.dumps({"type": "recording", "trans_date": NOW, "app_id": "size", "room_id": "r",
                           "conf_num": conf, "recording": ["http://files.example/" + "a" * pad]}).encode()

    out = body(size - len(body(0)))
    assert len(out) == size
    return out


def unusable_of_size(size: int) -> bytes:
    """Not JSON, exactly ``size`` bytes."""
    return b"{not json " + b"x" * (size - 10)


async def serve(settings: Settings) -> TestServer:
    await ensure_topics(settings.kafka_bootstrap, contract_topics(settings))
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
def settings(bootstrap: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, kafka_bootstrap=bootstrap, topic_prefix=f"z{uuid.uuid4().hex[:10]}.",
                    partitions=2)


async def test_provisioning_sizes_the_log_and_the_dead_letter_topic(settings: Settings) -> None:
    await ensure_topics(settings.kafka_bootstrap, contract_topics(settings))
    names = [settings.topic("webhooks"), settings.topic("deadletter")]
    configs = await describe_topic_configs(settings.kafka_bootstrap, names)
    assert {n: configs[n]["max.message.bytes"] for n in names} == {n: str(MAX_MESSAGE_BYTES) for n in names}


async def test_bodies_at_the_limit_are_in_clickhouse_whole_and_over_it_413(settings: Settings) -> None:
    limit = settings.max_body_bytes  # 1 MiB, the default
    server = await serve(settings)
    sink = await Running(settings).start()
    url = str(server.make_url("/webhooks/enablex"))
    sent: dict[str, bytes] = {}
    try:
        async with ClientSession() as http:
            for i, size in enumerate((limit - 1, limit)):
                body = recording_of_size(size, f"c{i}")
                async with http.post(url, data=body) as r:
                    assert r.status == 202, await r.text()
                    sent[(await r.json())["event_id"]] = body
            async with http.post(url, data=recording_of_size(limit + 1, "over")) as r:
                assert r.status == 413
            letters = []
            for size in (limit - 1, limit):
                async with http.post(url, data=unusable_of_size(size)) as r:
                    assert r.status == 400
                    letters.append(((await r.json())["deadletter_id"], size))
            # the log was not jammed: a small one after them goes straight through
            async with http.post(url, data=recording_of_size(2000, "after")) as r:
                assert r.status == 202
                sent[(await r.json())["event_id"]] = recording_of_size(2000, "after")

        async def stored() -> list[dict]:
            found = await rows(settings, "SELECT event_id, length(raw) AS n, raw = '' AS empty "
                                         "FROM enablex.webhook_events FINAL")
            return found if len(found) >= len(sent) else []

        found = await until("the accepted bodies in ClickHouse", stored, 120)
        assert {r["event_id"]: int(r["n"]) for r in found} == {k: len(v) for k, v in sent.items()}
        log = [codec.decode(r.value) for r in await read_topic(settings, "webhooks", len(sent))]
        assert {e["event_id"]: e["raw"].encode() for e in log} == sent  # nothing else in the log, each body whole

        dead = {d["id"]: d for d in (codec.decode(r.value) for r in await read_topic(settings, "deadletter", 2))}
        assert {i: len(dead[i]["raw"]) for i, _ in letters} == {i: size for i, size in letters}
        assert all(dead[i]["raw"] == unusable_of_size(size) for i, size in letters)
    finally:
        await sink.close()
        await server.close()


async def test_a_record_over_the_log_limit_is_413_and_stores_nothing(settings: Settings) -> None:
    """With a body limit of 5 MiB a body of 3 MiB is accepted (a 6 MiB record) and one of 5 MiB, whose
    record would be 10 MiB, is refused before anything is acknowledged."""
    settings = settings.with_overrides(max_body_bytes=str(5 * MIB))
    server = await serve(settings)
    url = str(server.make_url("/webhooks/enablex"))
    try:
        async with ClientSession() as http:
            async with http.post(url, data=recording_of_size(5 * MIB, "huge")) as r:
                assert r.status == 413
                assert "over the log's limit" in (await r.json())["error"]
            async with http.post(url, data=recording_of_size(3 * MIB, "big")) as r:
                assert r.status == 202, await r.text()
                big = (await r.json())["event_id"]
            async with http.post(url, data=recording_of_size(500, "small")) as r:
                assert r.status == 202
                small = (await r.json())["event_id"]
            async with http.get(server.make_url("/readyz")) as r:
                ready = await r.json()
        assert ready["ready_by"] == "kafka" and ready["spool_bytes"] == 0  # nothing went to the spool
        log = [codec.decode(r.value) for r in await read_topic(settings, "webhooks", 2)]
        assert sorted(e["event_id"] for e in log) == sorted([big, small])
        assert {e["conf_num"] for e in log} == {"big", "small"}
    finally:
        await server.close()


async def test_a_poisoned_spool_frame_is_moved_aside_and_the_rest_reaches_the_log(settings: Settings) -> None:
    """A frame no retry can deliver (a record over the producer's limit: found there by an older version,
    or a changed limit) sits in the spool before good ones; ingest starts, quarantines it whole, writes a
    dead letter naming the file, and every frame behind it and every new webhook reaches the log."""
    settings = settings.with_overrides(partitions="1")  # one partition: the log's order is the arrival order
    spool_dir = settings.data_dir / "spool"
    spool = Spool(spool_dir)
    poison = b"\x00" * (MAX_MESSAGE_BYTES + 1)
    spool.append(settings.topic("webhooks"), b"size/poison", poison)
    queued = []
    for i in range(3):
        body = recording_of_size(300, f"queued{i}")
        from streams.events import normalise

        event = normalise(body, int(time.time() * 1000), "127.0.0.1")
        queued.append(event["event_id"])
        spool.append(settings.topic("webhooks"), f"size/queued{i}".encode(), codec.encode("WebhookEvent", event))
    spool.close()

    server = await serve(settings)
    url = str(server.make_url("/webhooks/enablex"))
    try:
        async with ClientSession() as http:
            async with http.post(url, data=recording_of_size(400, "new")) as r:
                assert r.status == 202
                new = (await r.json())["event_id"]
        log = [codec.decode(r.value)["event_id"] for r in await read_topic(settings, "webhooks", 4, 60)]
        assert log == [*queued, new]  # in arrival order, the poisoned frame out of the way

        (quarantined,) = (spool_dir / "quarantine").iterdir()
        with open(quarantined, "rb") as f:
            (frame,), _ = read_frames(f, 0)
        assert (frame.topic, frame.key, frame.value) == (settings.topic("webhooks"), b"size/poison", poison)
        (letter,) = [codec.decode(r.value) for r in await read_topic(settings, "deadletter", 1)]
        assert letter["reason"].startswith("spool_undeliverable: record_too_large")
        assert letter["headers"]["x-enx-quarantine-file"] == str(quarantined)
    finally:
        await server.close()
