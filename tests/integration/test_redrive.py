"""``enx-streams deadletters list|show|redrive`` against the real broker.

Ingest runs with ``ENX_ALLOWED_APP_IDS`` set, so another project's bodies get 403 and are dead-lettered;
the setting is then unset (as an operator relaxes the rule) and ``redrive`` puts those bodies in the log,
once, with the event id they would have had and an ``enx-redrive-of`` header. A second redrive adds nothing,
and neither does a redrive of a body that was meanwhile accepted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import watermark
from streams.avro import default_codec
from streams.broker.topics import contract_topics, ensure_topics
from streams.config import Settings
from streams.events import event_id_of
from streams.ingest.service import create_app

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = "app-ours"
OTHER = "app-theirs"
NOW = int(time.time())


def body(app_id: str, conf_num: str, kind: str = "roomdrop") -> dict:
    return {"type": kind, "app_id": app_id, "room_id": "r1", "conf_num": conf_num, "trans_date": NOW}


async def post_all(settings: Settings, bodies: list[bytes]) -> list[tuple[int, dict]]:
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        out = []
        async with ClientSession() as http:
            for raw in bodies:
                async with http.post(str(server.make_url("/webhooks/enablex")), data=raw) as r:
                    out.append((r.status, await r.json()))
        return out
    finally:
        await server.close()


async def read_log(settings: Settings) -> list:
    """Every webhook record of the log up to its end now (the writes are acknowledged: no waiting); the
    watermarks a running ingest writes every second are not webhooks, and are left out."""
    topic = settings.topic("webhooks")
    # earliest: with the default (latest) the reset that assign() starts can land after seek_to_beginning
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        got: list = []
        deadline = time.monotonic() + 60
        while any(position < ends[tp] for tp, position in [(tp, await consumer.position(tp)) for tp in tps]):
            assert time.monotonic() < deadline, "the log could not be read to its end"
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(r for r in records if not watermark.is_mark(default_codec().decode(r.value)))
        return got
    finally:
        await consumer.stop()


def cli(settings: Settings, *args: str, allowed: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENX_")}
    env.update(ENX_DATA_DIR=str(settings.data_dir), ENX_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
               ENX_TOPIC_PREFIX=settings.topic_prefix, ENX_PARTITIONS=str(settings.partitions))
    if allowed is not None:
        env["ENX_ALLOWED_APP_IDS"] = allowed
    result = subprocess.run([sys.executable, "-m", "streams.cli", "deadletters", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


async def test_redrive_appends_what_a_relaxed_rule_accepts_once(bootstrap: str, tmp_path: Path) -> None:
    strict = Settings(data_dir=tmp_path, kafka_bootstrap=bootstrap, topic_prefix=f"r{uuid.uuid4().hex[:10]}.",
                      partitions=2, allowed_app_ids=ALLOWED)
    relaxed = Settings(data_dir=tmp_path, kafka_bootstrap=bootstrap, topic_prefix=strict.topic_prefix,
                       partitions=2)
    await ensure_topics(bootstrap, contract_topics(strict))
    theirs = [body(OTHER, f"c{n}", kind) for n, kind in enumerate(["roomdrop", "recording", "transcoded"])]
    accepted_meanwhile = body(OTHER, "c9")
    posted = [json.dumps(b).encode() for b in [*theirs, body(ALLOWED, "c1"), accepted_meanwhile]]
    posted += [json.dumps(theirs[0], indent=2).encode(),  # EnableX retries: a second letter, the same event id
               b"{not json"]                               # still rejected after the change
    answers = await post_all(strict, posted)
    assert [status for status, _ in answers] == [403, 403, 403, 202, 403, 403, 400]
    letters = {a["deadletter_id"]: raw for (status, a), raw in zip(answers, posted) if status != 202}
    # the rule is relaxed; one rejected body comes again and is accepted
    assert [s for s, _ in await post_all(relaxed, [json.dumps(accepted_meanwhile).encode()])] == [202]
    before = await read_log(strict)
    assert len(before) == 2

    listed = cli(strict, "list", "--reason", "app_id_not_allowed", "--app-id", OTHER, "--format", "json",
                 allowed=ALLOWED)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(rows) == 5 and all(r["origin"] == "ingest" and r["redrive"] is None for r in rows), listed.stderr
    assert {r["id"] for r in rows} == {i for i, raw in letters.items() if raw != b"{not json"}

    # with the rule still in force, nothing parses; a dry run under the relaxed rule appends nothing
    assert "appended 0" in cli(strict, "redrive", allowed=ALLOWED).stdout
    dry = cli(strict, "redrive", "--dry-run", allowed=None)
    assert "would append 3" in dry.stdout and dry.stderr.count("would append ") == 3
    assert len(await read_log(strict)) == 2

    first = cli(strict, "redrive", allowed=None)
    assert "appended 3" in first.stdout and "already in the log 1" in first.stdout, first.stdout
    assert "duplicates 1" in first.stdout and "still rejected 1 (not_json 1)" in first.stdout, first.stdout
    assert "read " in first.stderr  # progress
    codec = default_codec()
    log = await read_log(strict)
    events = [(codec.decode(r.value), dict(r.headers)) for r in log]
    counts = Counter(e["event_id"] for e, _ in events)
    wanted = {event_id_of(b) for b in [*theirs, body(ALLOWED, "c1"), accepted_meanwhile]}
    assert set(counts) == wanted and all(n == 1 for n in counts.values()), counts
    redriven = {e["event_id"]: h["enx-redrive-of"].decode() for e, h in events if "enx-redrive-of" in h}
    assert set(redriven) == {event_id_of(b) for b in theirs}
    for event_id, letter_id in redriven.items():
        assert event_id == event_id_of(json.loads(letters[letter_id]))
    by_id = {e["event_id"]: (e, r) for (e, _), r in zip(events, log)}
    for b in theirs:  # the event it would have been: its session's key, its body, its type
        event, record = by_id[event_id_of(b)]
        assert record.key == f"{OTHER}/{b['conf_num']}".encode() and json.loads(event["raw"]) == b

    second = cli(strict, "redrive", allowed=None)
    assert "appended 0" in second.stdout and "redriven before 5" in second.stdout, second.stdout
    assert len(await read_log(strict)) == len(log)

    listed = cli(strict, "list", "--app-id", OTHER, allowed=None).stdout.splitlines()
    assert len(listed) == 5 and sum("[appended " in line for line in listed) == 3
    letter_id = next(iter(redriven.values()))
    shown = cli(strict, "show", letter_id, allowed=None).stdout
    assert f"id:          {letter_id}" in shown and "app_id_not_allowed" in shown and "redrive:     appended" in shown


def test_a_redrive_that_stops_after_the_append_and_before_its_ledger_is_not_repeated(
        bootstrap: str, tmp_path: Path, monkeypatch) -> None:
    """A crash between the acknowledged append and the ledger write: the next run finds the events in the
    log (by their event ids and ``enx-redrive-of``), appends nothing and records them."""
    import asyncio

    from streams.deadletters import redrive, topics
    from streams.deadletters.select import Filter

    strict = Settings(data_dir=tmp_path, kafka_bootstrap=bootstrap, topic_prefix=f"r{uuid.uuid4().hex[:10]}.",
                      partitions=2, allowed_app_ids=ALLOWED)
    relaxed = Settings(data_dir=tmp_path, kafka_bootstrap=bootstrap, topic_prefix=strict.topic_prefix,
                       partitions=2)
    asyncio.run(ensure_topics(bootstrap, contract_topics(strict)))
    theirs = [body(OTHER, f"k{n}") for n in range(2)]
    answers = asyncio.run(post_all(strict, [json.dumps(b).encode() for b in theirs]))
    assert [status for status, _ in answers] == [403, 403]

    real_send_all = topics.Appender.send_all

    async def dies_before_the_ledger(self, topic, records, timeout_s=60.0):
        if topic == topics.ledger_topic(relaxed):
            raise topics.BrokerUnavailable("killed before the ledger write")
        return await real_send_all(self, topic, records, timeout_s)

    monkeypatch.setattr(topics.Appender, "send_all", dies_before_the_ledger)
    try:
        redrive.run(relaxed, Filter(), dry_run=False, echo=lambda _m: None)
        raise AssertionError("the injected failure did not happen")
    except topics.BrokerUnavailable as exc:
        assert "killed before the ledger write" in str(exc)
    monkeypatch.setattr(topics.Appender, "send_all", real_send_all)
    assert len(asyncio.run(read_log(strict))) == 2
    assert asyncio.run(topics.read_ledger(relaxed)) == {}

    again = cli(strict, "redrive", allowed=None)
    assert "appended 0" in again.stdout and "already in the log 2" in again.stdout, again.stdout
    log = asyncio.run(read_log(strict))
    assert sorted(default_codec().decode(r.value)["event_id"] for r in log) == sorted(map(event_id_of, theirs))
    ledger = asyncio.run(topics.read_ledger(relaxed))
    assert {a["deadletter_id"] for _, a in answers} == set(ledger)
    assert {entry["outcome"] for entry in ledger.values()} == {redrive.IN_LOG}
    assert "redriven before 2" in cli(strict, "redrive", allowed=None).stdout
