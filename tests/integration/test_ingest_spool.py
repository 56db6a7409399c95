"""Durability of a 202: the broker stopped, events answered from the fsynced spool, replayed exactly once;
and ingest killed with SIGKILL after such 202s, its spool delivered by the next ingest.

These tests run a broker of their own (``own_broker``: the shared one must stay up for the others)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import watermark
from streams.avro import default_codec
from streams.broker.local import LocalKafka, free_port

ROOT = Path(__file__).resolve().parents[2]
N = 40


def body(i: int, tag: str) -> bytes:
    return json.dumps({"type": "recording", "trans_date": 1764000000 + i, "app_id": f"app-{tag}", "room_id": "r",
                       "conf_num": str(i % 7), "recording": [f"http://f/{tag}/{i}.mkv"]}).encode()


def post(url: str, data: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def poll(what: str, check, timeout_s: float, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.2)  # poll interval
    raise AssertionError(f"{what} not within {timeout_s} s" + (f"; log:\n{log.read_text()[-3000:]}" if log else ""))


def event_ids_in_log(bootstrap: str, topic: str, expect: int, timeout_s: float = 60) -> list[str]:
    async def run() -> list[str]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=f"read-{uuid.uuid4().hex}")
        await consumer.start()
        ids: list[str] = []
        try:
            deadline = time.monotonic() + timeout_s
            quiet_until = None
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=300)
                for records in batch.values():
                    decoded = (default_codec().decode(r.value) for r in records)
                    ids += [e["event_id"] for e in decoded if not watermark.is_mark(e)]  # webhooks only
                if len(ids) >= expect:
                    # keep reading briefly past the expected count: a duplicate would show up here
                    quiet_until = quiet_until or time.monotonic() + 2
                    if time.monotonic() >= quiet_until:
                        break
        finally:
            await consumer.stop()
        return ids

    return asyncio.run(run())


def marks_hold(bootstrap: str, topic: str, partitions: int = 2) -> int:
    """Every watermark of the log holds: no webhook after it in its partition was received before its time (a
    webhook received earlier is in the partition before it). Returns the newest watermark's time (0: none)."""
    async def run() -> list:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]  # Ingest's ENX_PARTITIONS
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            got: list = []
            deadline = time.monotonic() + 30
            while len(got) < sum(ends.values()) and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=300)).values():
                    got += [r for r in records if r.offset < ends[TopicPartition(topic, r.partition)]]
            return got
        finally:
            await consumer.stop()

    newest_mark: dict[int, int] = {}
    for r in sorted(asyncio.run(run()), key=lambda r: (r.partition, r.offset)):
        event = default_codec().decode(r.value)
        if watermark.is_mark(event):
            newest_mark[r.partition] = max(newest_mark.get(r.partition, 0), event["received_at"])
        else:
            assert event["received_at"] >= newest_mark.get(r.partition, 0), \
                f"{r.partition}/{r.offset} received at {event['received_at']}, after a watermark of " \
                f"{newest_mark[r.partition]}"
    return max(newest_mark.values(), default=0)


class Ingest:
    def __init__(self, tmp: Path, bootstrap: str, prefix: str | None = None, partitions: int = 2) -> None:
        self.port = free_port()
        self.prefix = prefix or f"s{uuid.uuid4().hex[:8]}."
        self.log = tmp / "ingest.log"
        self.env = dict(os.environ, ENX_DATA_DIR=str(tmp / "ingest"), ENX_KAFKA_BOOTSTRAP=bootstrap,
                        ENX_INGEST_PORT=str(self.port), ENX_INGEST_HOST="127.0.0.1", ENX_PARTITIONS=str(partitions),
                        ENX_TOPIC_PREFIX=self.prefix)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/enablex"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "ingest"], env=self.env, cwd=ROOT,
                                         stdout=out, stderr=subprocess.STDOUT)
        poll("ingest /healthz", lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{self.port}/healthz", timeout=2).status == 200, 30, self.log)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


def test_broker_down_then_back_every_event_once(own_broker: LocalKafka, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path, own_broker.bootstrap)
    ingest.start()
    try:
        ids = []
        for i in range(N // 2):
            status, answer = post(ingest.url, body(i, "a"))
            assert status == 202
            ids.append(answer["event_id"])
        own_broker.stop()
        for i in range(N // 2, N):
            status, answer = post(ingest.url, body(i, "a"))  # 202 from the spool
            assert status == 202
            ids.append(answer["event_id"])
        ready = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ingest.port}/readyz", timeout=5).read())
        assert ready["ready_by"] == "spool" and ready["spool_bytes"] > 0 and ready["spool_frames"] == N - N // 2
        assert ready["spool_oldest_s"] is not None and ready["spool_oldest_s"] >= 0
        own_broker.start()
        back_ms = int(time.time() * 1000)
        found = event_ids_in_log(own_broker.bootstrap, f"{ingest.prefix}webhooks.v1", N)
        assert sorted(found) == sorted(ids), f"lost {set(ids) - set(found)}, log has {len(found)} for {N}"
        poll("the spool drained", lambda: json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{ingest.port}/readyz", timeout=5).read())["ready_by"] == "kafka", 30, ingest.log)
        drained = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ingest.port}/readyz", timeout=5).read())
        assert (drained["spool_frames"], drained["spool_bytes"], drained["spool_oldest_s"]) == (0, 0, None)
        # ingest's watermarks went on once the spool had drained, and none passed a spooled record
        poll("a watermark after the outage", lambda: marks_hold(own_broker.bootstrap, f"{ingest.prefix}webhooks.v1")
             >= back_ms, 30, ingest.log)
        assert ingest.stop() == 0
    finally:
        if ingest.proc and ingest.proc.poll() is None:
            ingest.proc.kill()


def test_sigkill_after_spooled_202s_delivers_after_restart(own_broker: LocalKafka, tmp_path: Path) -> None:
    own_broker.stop()
    ingest = Ingest(tmp_path, own_broker.bootstrap)
    ingest.start()
    try:
        ids = []
        for i in range(N):
            status, answer = post(ingest.url, body(i, "k"))
            assert status == 202
            ids.append(answer["event_id"])
        ingest.stop(signal.SIGKILL)
        own_broker.start()
        ingest.start()
        found = event_ids_in_log(own_broker.bootstrap, f"{ingest.prefix}webhooks.v1", N)
        assert sorted(found) == sorted(ids), f"lost {set(ids) - set(found)}, log has {len(found)} for {N}"
        assert ingest.stop() == 0
    finally:
        if ingest.proc and ingest.proc.poll() is None:
            ingest.proc.kill()


def test_a_spool_frame_corrupted_while_kafka_is_away_is_moved_aside_and_the_rest_delivered(
        own_broker: LocalKafka, tmp_path: Path) -> None:
    """A bad block under a running ingest's spool: the replay moves the frame aside (quarantine/) and delivers
    every other spooled record, without a restart (until 2026-12-04 it stood at the frame until one)."""
    ingest = Ingest(tmp_path, own_broker.bootstrap)
    ingest.start()
    try:
        own_broker.stop()
        ids = [post(ingest.url, body(i, "c"))[1]["event_id"] for i in range(N)]  # all 202 from the spool
        spool = tmp_path / "ingest" / "spool" / "spool.log"
        data = spool.read_bytes()
        victim = data.index(b"/c/7.mkv")  # inside the eighth record's frame
        with open(spool, "r+b") as f:
            f.seek(victim)
            f.write(b"X")
        own_broker.start()
        found = event_ids_in_log(own_broker.bootstrap, f"{ingest.prefix}webhooks.v1", N - 1)
        assert sorted(found) == sorted(ids[:7] + ids[8:]), f"log has {len(found)} of the {N - 1} intact"
        poll("the spool drained", lambda: json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{ingest.port}/readyz", timeout=5).read())["ready_by"] == "kafka", 30, ingest.log)
        (moved,) = (tmp_path / "ingest" / "spool" / "quarantine").iterdir()
        assert b"1764000007" in moved.read_bytes() and b"http://fXc/7.mkv" in moved.read_bytes()  # whole
        assert "corrupt (a bad block?) while ingest runs" in ingest.log.read_text()
        assert ingest.stop() == 0
    finally:
        if ingest.proc and ingest.proc.poll() is None:
            ingest.proc.kill()
