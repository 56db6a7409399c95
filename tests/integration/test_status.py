"""`enx-streams status` against the real pipeline: healthy with a broker, a worker and ingest running and
events posted (exit 0); degraded once the worker is stopped and events keep coming (the lag grows, the
verdict names the group, exit 1); and with the broker down, or a broker that accepts connections but never
answers, degraded within seconds, saying the broker is unreachable and what to do."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams import config
from tests.integration.test_ingest_http import is_watermark
from streams.broker.local import LocalKafka, free_port
from tests.polling import poll, stop_gracefully

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def report(self) -> dict:
        return json.loads(self.out)

    def check(self, name: str) -> dict:
        return next(c for c in self.report["checks"] if c["name"] == name)

    def group(self, role: str) -> dict:
        return next(g for g in self.report["facts"]["groups"] if g["role"] == role)


def watermarks_between(stack: Stack, before: list[dict], after: list[dict]) -> int:
    """How many of the log's records between two status reports' end offsets are ingest's watermarks."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    log = stack.prefix + "webhooks.v1"
    ranges = {b["partition"]: range(b["end"], a["end"]) for b in before for a in after
              if b["topic"] == a["topic"] == log and b["partition"] == a["partition"]}

    async def count() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=stack.env["ENX_KAFKA_BOOTSTRAP"], enable_auto_commit=False)
        await consumer.start()
        try:
            marks = 0
            for partition, offsets in ranges.items():
                if not offsets:
                    continue
                tp = TopicPartition(log, partition)
                consumer.assign([tp])
                consumer.seek(tp, offsets.start)
                seen, deadline = offsets.start, time.monotonic() + 30
                while seen < offsets.stop and time.monotonic() < deadline:
                    for r in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                        if r.offset in offsets:
                            marks += is_watermark(r.value)
                        seen = max(seen, r.offset + 1)
            return marks
        finally:
            await consumer.stop()

    return asyncio.run(count())


class Stack:
    """Ingest and a worker as real processes on the shared broker, with a data directory and topics of their own."""

    def __init__(self, bootstrap: str, tmp: Path) -> None:
        self.tmp = tmp
        self.prefix = f"st{uuid.uuid4().hex[:8]}."
        self.ingest_port = free_port()
        self.env = dict(os.environ, ENX_DATA_DIR=str(tmp / "data"), ENX_KAFKA_BOOTSTRAP=bootstrap,
                        ENX_TOPIC_PREFIX=self.prefix, ENX_PARTITIONS="2", ENX_INGEST_HOST="127.0.0.1",
                        ENX_INGEST_PORT=str(self.ingest_port), ENX_CACHE_DIR=str(config.default_cache_dir()))
        self.procs: dict[str, subprocess.Popen] = {}

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def start(self, name: str, *args: str) -> subprocess.Popen:
        with open(self.log(name), "ab") as out:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "streams.cli", *args], env=self.env, cwd=ROOT,
                                                stdout=out, stderr=subprocess.STDOUT)
        return self.procs[name]

    def stop(self, name: str) -> None:
        stop_gracefully([self.procs[name]], 45)

    def post(self, conf: str) -> str:
        body = json.dumps({"type": "roomdrop", "trans_date": int(time.time()), "app_id": "st-app", "room_id": "r",
                           "conf_num": conf}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.ingest_port}/webhooks/enablex", data=body,
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
            return json.loads(response.read())["event_id"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ingest_port}/readyz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def status(self, *args: str, env: dict | None = None) -> Run:
        return status(*args, env=env or self.env)


def status(*args: str, env: dict) -> Run:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "streams.cli", "status", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


@pytest.fixture
def stack(bootstrap: str, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(bootstrap, tmp_path)
    yield s
    for name in list(s.procs):
        s.stop(name)


def test_status_is_healthy_with_the_pipeline_running_then_names_the_group_a_stopped_worker_leaves(
        stack: Stack) -> None:
    worker = stack.start("worker", "worker", "--roles", "processor,sink")
    stack.start("ingest", "ingest")
    logs = [stack.log("worker"), stack.log("ingest")]
    poll("ingest ready", stack.ready, 120, logs)
    posted_at = time.time()
    for i in range(5):
        stack.post(f"c{i}")
    posted_until = time.time()

    def healthy_with_the_events() -> Run | None:
        # and ingest's watermarks (one a second on every partition) newer than the events: the log's newest
        # event must still be the last webhook
        if time.time() < posted_until + 3:
            return None
        run = stack.status("--format", "json")
        newest = json.loads(run.out)["facts"]["clickhouse"]["newest"]["event_ms"] if run.out else None
        return run if run.code == 0 and newest else None

    run = poll("status healthy, the events in ClickHouse", healthy_with_the_events, 120, logs, interval_s=1.0)
    report = run.report
    assert report["verdict"] == "healthy" and report["problems"] == []
    facts = report["facts"]
    assert facts["broker"]["reachable"] and facts["ingest"]["ready_by"] == "kafka"
    assert facts["owner"]["pid"] == worker.pid
    assert facts["clickhouse"]["newest"]["event_ms"] >= int(posted_at * 1000) - 1000
    assert int(posted_at * 1000) - 1000 <= facts["log"]["event_ms"] <= int(posted_until * 1000) + 1000
    names = {"processor": f"{stack.prefix}processor", "sink": f"enx-streams-sink.{stack.prefix.rstrip('.')}"}
    for role, name in names.items():
        group = run.group(role)
        assert group["name"] == name and group["members"] >= 1
        assert stack.prefix + "webhooks.v1" in {p["topic"] for p in group["partitions"]}
    text = stack.status()
    assert text.code == 0, text.out + text.err
    lines = text.out.splitlines()
    assert lines[0] == "healthy"
    assert [line.split()[0] for line in lines[2:]] == ["broker", "processor", "sink", "ingest", "spool",
                                                       "clickhouse", "owner", "newest"]

    stack.stop("worker")
    processor = f"{stack.prefix}processor"

    def webhook_lag(run: Run) -> int:
        return sum(p["lag"] for p in run.group("processor")["partitions"] if p["topic"] == stack.prefix + "webhooks.v1")

    for i in range(3):
        stack.post(f"after{i}")
    stopped = poll("status degraded with the processor's lag", lambda: (r := stack.status("--format", "json")).code
                   and webhook_lag(r) >= 3 and r, 60, logs, interval_s=1.0)
    assert stopped.code == 1
    check = stopped.check("processor")
    assert check["level"] == "degraded" and check["why"].startswith(f"consumer group {processor} has no live member "
                                                                    f"and ")
    assert "enx-streams worker --roles processor" in check["do"]
    assert stopped.group("processor")["members"] == 0
    # the embedded directory nobody owns now is reported, not opened (a probe never holds it)
    assert stopped.check("clickhouse")["why"].startswith("no process owns the embedded ClickHouse")

    for i in range(2):
        stack.post(f"later{i}")
    grown = stack.status("--format", "json")
    # nothing consumes: it grows by what was appended, the 2 webhooks and ingest's watermarks (one a second a
    # partition while it delivers)
    assert grown.code == 1 and webhook_lag(grown) == webhook_lag(stopped) + 2 + watermarks_between(
        stack, stopped.group("processor")["partitions"], grown.group("processor")["partitions"])
    text = stack.status()
    assert text.code == 1
    assert text.out.splitlines()[0].startswith(f"degraded: consumer group {processor} has no live member and ")


def test_status_says_the_broker_is_down_and_what_to_do_within_seconds_and_shows_the_spool(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "broker", config.default_cache_dir(), port=free_port())
    broker.start(timeout_s=90)
    stack = Stack(broker.bootstrap, tmp_path)
    try:
        stack.start("ingest", "ingest")
        poll("ingest ready", stack.ready, 120, stack.log("ingest"))
        up = stack.status("--format", "json")
        assert up.check("broker")["level"] == "ok", up.out + up.err
        broker.stop()
        for i in range(3):  # answered from the spool
            stack.post(f"spooled{i}")

        down = stack.status()
        assert down.code == 1 and down.seconds < 8, (down.seconds, down.out, down.err)
        first = down.out.splitlines()[0]
        assert first.startswith(f"degraded: Kafka is unreachable at {broker.bootstrap}")
        assert "`enx-streams kafka start`" in first
        as_json = stack.status("--format", "json")
        assert as_json.code == 1 and as_json.report["problems"][0]["check"] == "broker"
        assert {as_json.check(role)["level"] for role in ("processor", "sink")} == {"unknown"}
        assert as_json.check("ingest")["level"] == "ok"  # it spools: the broker is the one reason
        spool = as_json.report["facts"]["spool"]
        assert (spool["source"], spool["frames"]) == ("ingest", 3) and spool["bytes"] > 0, spool

        stack.stop("ingest")  # its spool stays for the next ingest: read from the data directory
        left = stack.status("--format", "json", "--max-age", "0")
        spool = left.report["facts"]["spool"]
        assert (spool["source"], spool["frames"]) == ("directory", 3) and spool["oldest_age_s"] > 0, spool
        assert left.check("spool")["level"] == "degraded" and "bring Kafka back" in left.check("spool")["do"]
        assert left.check("ingest")["level"] == "degraded"
    finally:
        for name in list(stack.procs):
            stack.stop(name)
        broker.stop()


def test_status_does_not_hang_on_a_broker_that_never_answers(tmp_path: Path) -> None:
    """A listener that accepts connections and never answers (a hung broker, a black-holing proxy)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    env = dict(os.environ, ENX_DATA_DIR=str(tmp_path / "data"),
               ENX_KAFKA_BOOTSTRAP=f"127.0.0.1:{listener.getsockname()[1]}", ENX_INGEST_PORT=str(free_port()))
    try:
        run = status("--timeout", "2", env=env)
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()
    assert accepted, "status never connected to the listener"
    assert run.code == 1 and run.seconds < 7, (run.seconds, run.out, run.err)
    assert run.out.splitlines()[0].startswith("degraded: Kafka is unreachable at 127.0.0.1:")
