"""The processor on the real broker with 1, 2 and 3 real worker processes.

Live SLA: with a 6-second SLA, each recorded session without a composite gets exactly one
``transcode_stalled`` alert soon after its deadline, with no other traffic, whatever the number of workers
(one of them killed with SIGKILL before the deadline); a later composite gives exactly one
``transcode_recovered``. Replay: a log whose composites came within their SLA, consumed at full speed by a
new consumer group, raises no alert. Retention: with the clock moved past the retention, finished sessions
leave the table with a tombstone on the compacted sessions topic.

Alerts are counted by ``alert_id`` per session and kind (the alerts log is at-least-once; every id is
deterministic, so ClickHouse and any consumer see one alert).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.avro import default_codec
from streams.broker.topics import contract_topics, ensure_topics
from streams.config import Settings
from streams.events import event_id_of

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4


def make_settings(bootstrap: str, tmp: Path) -> Settings:
    return Settings(data_dir=tmp, kafka_bootstrap=bootstrap, topic_prefix=f"p{uuid.uuid4().hex[:8]}.",
                    partitions=PARTITIONS)


def event(type_: str, conf: str, trans_s: float, received_s: float, app: str = "app") -> dict:
    payload = {"type": type_, "app_id": app, "conf_num": conf, "trans_date": trans_s, "n": uuid.uuid4().hex}
    files = []
    if type_ in ("recording", "transcoded"):
        files = [{"kind": type_, "url": f"http://f/{conf}/{type_}", "stage": None, "size_bytes": None}]
    return {"event_id": event_id_of(payload), "received_at": int(received_s * 1000), "type": type_, "app_id": app,
            "room_id": "room", "conf_num": conf, "trans_date": int(trans_s * 1000), "files": files,
            "destination": None, "raw": "{}", "source": None}


async def produce(settings: Settings, events: list[dict]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for e in events:
            await producer.send_and_wait(settings.topic("webhooks"), default_codec().encode("WebhookEvent", e),
                                         key=f"{e['app_id']}/{e['conf_num']}".encode())
    finally:
        await producer.stop()


async def read_all(settings: Settings, short: str, until, timeout_s: float) -> list:
    consumer = AIOKafkaConsumer(settings.topic(short), bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                group_id=f"read-{uuid.uuid4().hex}")
    await consumer.start()
    got: list = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not until(got):
            for records in (await consumer.getmany(timeout_ms=300)).values():
                got.extend(records)
    finally:
        await consumer.stop()
    return got


def alerts_by_session(records: list) -> dict[tuple[str, str], set[str]]:
    """(session, kind) -> the distinct alert ids seen."""
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in records:
        alert = default_codec().decode(r.value)
        out[(alert["conf_num"], alert["kind"])].add(alert["alert_id"])
    return out


class Workers:
    def __init__(self, settings: Settings, tmp: Path, sla_minutes: str = "0.1", extra_env: dict | None = None):
        self.settings = settings
        self.tmp = tmp
        self.sla = sla_minutes
        self.env = dict(os.environ, **(extra_env or {}))
        self.procs: list[subprocess.Popen] = []

    def start(self, n: int) -> None:
        for i in range(n):
            log = open(self.tmp / f"worker-{len(self.procs)}.log", "ab")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--roles", "processor",
                 "--kafka-bootstrap", self.settings.kafka_bootstrap, "--topic-prefix", self.settings.topic_prefix,
                 "--partitions", str(PARTITIONS), "--data-dir", str(self.tmp / f"w{len(self.procs)}"),
                 "--transcode-sla-minutes", self.sla],
                env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))

    def logs(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in sorted(self.tmp.glob("worker-*.log")))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _ready(settings: Settings, workers: Workers, timeout_s: float = 90) -> None:
    """Wait until the processor has handled a probe session (so every worker has joined and recovered)."""
    probe = f"probe-{uuid.uuid4().hex[:6]}"
    now = time.time()
    asyncio.run(produce(settings, [event("roomdrop", probe, now, now)]))
    def seen_or_dead(got: list) -> bool:
        assert all(p.poll() is None for p in workers.procs if p.returncode != -signal.SIGKILL), workers.logs()
        return any(r.key == f"app/{probe}".encode() for r in got)

    found = asyncio.run(read_all(settings, "sessions", seen_or_dead, timeout_s))
    assert any(r.key == f"app/{probe}".encode() for r in found), workers.logs()


@pytest.mark.parametrize("workers_n, kill_one", [(1, False), (2, True), (3, False)])
def test_live_sla_exact_alerts(bootstrap: str, tmp_path: Path, workers_n: int, kill_one: bool) -> None:
    settings = make_settings(bootstrap, tmp_path)
    asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))
    workers = Workers(settings, tmp_path)
    workers.start(workers_n)
    try:
        _ready(settings, workers)
        sessions = [f"s{i}" for i in range(12)]
        on_time, stalled = sessions[:6], sessions[6:]
        now = time.time()
        batch = [event("roomdrop", s, now, now) for s in sessions]
        batch += [event("recording", s, now + 0.5, now) for s in sessions]
        batch += [event("transcoded", s, now + 2, now) for s in on_time]
        asyncio.run(produce(settings, batch))
        deadline = now + 6
        if kill_one:
            workers.procs[0].send_signal(signal.SIGKILL)  # before the deadline: the others take over
            workers.procs[0].wait(timeout=10)

        def stalled_seen(got: list) -> bool:
            by = alerts_by_session(got)
            return all(by.get((s, "transcode_stalled")) for s in stalled)

        got = asyncio.run(read_all(settings, "alerts", stalled_seen, 60))
        assert stalled_seen(got), workers.logs()
        first_seen = time.time()
        # within 30 s of the deadline (generous for a rebalance after the kill, on 2 cores)
        assert first_seen - deadline < 30 + (20 if kill_one else 0)

        late = time.time()
        asyncio.run(produce(settings, [event("transcoded", s, late, late) for s in stalled]))

        def recovered_seen(got: list) -> bool:
            by = alerts_by_session(got)
            return all(by.get((s, "transcode_recovered")) for s in stalled)

        got = asyncio.run(read_all(settings, "alerts", recovered_seen, 60))
        assert recovered_seen(got), workers.logs()
        # a few sweeps later nothing more has been raised
        _ready(settings, workers)
        got = asyncio.run(read_all(settings, "alerts", lambda g: False, 4))
        by = alerts_by_session(got)
        expected = {(s, "transcode_stalled") for s in stalled} | {(s, "transcode_recovered") for s in stalled}
        assert set(by) == expected, sorted(by)
        assert all(len(ids) == 1 for ids in by.values())
        for r in got:
            alert = default_codec().decode(r.value)
            if alert["kind"] == "transcode_recovered":
                assert alert["overdue_s"] > 0
    finally:
        workers.stop()


def test_replay_of_a_log_within_sla_raises_nothing_and_retention_leaves_tombstones(
        bootstrap: str, tmp_path: Path) -> None:
    settings = make_settings(bootstrap, tmp_path)
    asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))
    start = time.time() - 3 * 3600  # three hours ago, at event time and at receive time
    batch = []
    for i in range(30):
        t = start + i * 60
        conf = f"r{i}"
        batch += [event("roomdrop", conf, t, t), event("recording", conf, t + 60, t + 60)]
        if i != 7:  # session r7's composite never comes: exactly one stall
            batch.append(event("transcoded", conf, t + 1800, t + 1800))  # 30 min: within the 45-min SLA
    batch.sort(key=lambda e: e["received_at"])
    asyncio.run(produce(settings, batch))
    # a new consumer group over the whole log at full speed, with the clock 8 days ahead so that finished
    # sessions (last event over 7 days "ago") leave the tables
    workers = Workers(settings, tmp_path, sla_minutes="45", extra_env={"ENXTEST_CLOCK_OFFSET_S": str(8 * 86400)})
    workers.start(1)
    try:
        def tombstones(got: list) -> int:
            return sum(1 for r in got if r.value is None)

        got = asyncio.run(read_all(settings, "sessions", lambda g: tombstones(g) >= 29, 90))
        assert tombstones(got) == 29, workers.logs()  # every finished session; r7 is breached, kept
        gone = {r.key for r in got if r.value is None}
        assert b"app/r7" not in gone
        alerts = alerts_by_session(asyncio.run(read_all(settings, "alerts", lambda g: False, 3)))
        assert dict(alerts) == {("r7", "transcode_stalled"): alerts[("r7", "transcode_stalled")]}
        assert len(alerts[("r7", "transcode_stalled")]) == 1
        states = Counter(default_codec().decode(r.value)["sla_state"] for r in got
                         if r.value is not None and r.key != b"app/r7")
        assert states["met"] >= 29 and "breached" not in states
    finally:
        workers.stop()
