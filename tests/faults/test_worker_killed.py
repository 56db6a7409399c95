"""One of two processor workers killed with SIGKILL while they work through a log of 40,000 events.

Afterwards ClickHouse (``FINAL``) holds every event exactly once, every session's state equals the one a
clean replay of the log by the pure rules gives, and the alerts are exactly the expected ones.
The sink runs in a third process, the owner of the embedded ClickHouse.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer

from streams.avro import default_codec
from streams.broker.topics import contract_topics, ensure_topics
from streams.config import Settings
from streams.processor import rules
from streams.processor.app import app_id
from streams.sink.query import QueryError, run_query
from tests.faults.record import record_result
from tests.integration.test_processor import event
from tests.offsets import behind
from tests.polling import poll, task_dumps

ROOT = Path(__file__).resolve().parents[2]
SESSIONS = 10_000  # four events each: 40,000, so that two workers take longer than their first commit
SPACING_S = 1.5  # between sessions: the log spans about 5 h 10 min, all of it more than 50 minutes old
SLA_S = 45 * 60


def build_log() -> list[dict]:
    start = time.time() - 6 * 3600
    out = []
    for i in range(SESSIONS):
        t = start + i * SPACING_S
        conf = f"k{i}"
        out += [event("roomdrop", conf, t, t), event("recording", conf, t + 20, t + 20),
                event("chatdata", conf, t + 60, t + 60)]
        if i % 10 == 3:
            out.append(event("file-transfer", conf, t + 70, t + 70))  # never transcoded: stalls
        else:
            late = 3600 if i % 10 == 5 else 1200  # late (stalled, recovered) or within the SLA
            out.append(event("transcoded", conf, t + late, t + late))
    out.sort(key=lambda e: e["received_at"])
    return out


def expected(log: list[dict], now_ms: int) -> tuple[dict[str, dict], set[str]]:
    """The clean replay by the pure rules: final states and alert ids."""
    states: dict[str, dict] = {}
    alerts: set[str] = set()
    for e in log:
        key = f"{e['app_id']}/{e['conf_num']}"
        states[key], raised = rules.step(states.get(key), e, SLA_S)
        alerts |= {a["alert_id"] for a in raised}
    for key, state in states.items():
        states[key], raised = rules.sweep_step(state, now_ms, SLA_S)
        alerts |= {a["alert_id"] for a in raised}
    return states, alerts


def q(settings: Settings, sql: str) -> list[dict] | None:
    try:
        return [json.loads(line) for line in run_query(settings, sql, "JSONEachRow").decode().splitlines()]
    except QueryError:
        return None


async def produce(bootstrap: str, topic: str, events: list[dict]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=10)
    await producer.start()
    try:
        codec = default_codec()
        for e in events:
            await producer.send(topic, codec.encode("WebhookEvent", e), key=f"{e['app_id']}/{e['conf_num']}".encode())
        await producer.flush()
    finally:
        await producer.stop()


def test_worker_killed_under_load(bootstrap: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", kafka_bootstrap=bootstrap,
                        topic_prefix=f"w{uuid.uuid4().hex[:8]}.", partitions=4)
    asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))
    env = dict(os.environ, ENX_DATA_DIR=str(settings.data_dir), ENX_KAFKA_BOOTSTRAP=bootstrap,
               ENX_TOPIC_PREFIX=settings.topic_prefix, ENX_PARTITIONS="4")
    logs = [tmp_path / f"{name}.log" for name in ("sink", "p0", "p1")]
    procs: list[subprocess.Popen] = []

    def start(log: Path, roles: str) -> None:
        with open(log, "ab") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--roles", roles, "--data-dir",
                 str(settings.data_dir if roles == "sink" else tmp_path / log.stem)],
                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))

    started = time.monotonic()
    log_events = build_log()
    start(logs[0], "sink")
    try:
        poll("the sink answering", lambda: q(settings, "SELECT 1 AS one") is not None, 60, logs)
        # The whole log first, then the processors: its receive times are six hours old, and a processor
        # that catches up with a log still being written judges the rest by the wall clock (as it must
        # live), which would stall sessions whose composite is not written yet.
        asyncio.run(produce(bootstrap, settings.topic("webhooks"), log_events))
        for log in logs[1:]:
            start(log, "processor")
        # kill one worker while the two are working through the backlog: once the group has committed
        # something (a commit interval is a second)
        def uncommitted() -> int:
            try:
                return sum(asyncio.run(behind(bootstrap, app_id(settings), settings.topic("webhooks"), 4)).values())
            except Exception:  # noqa: BLE001 - no coordinator for the group yet: nothing committed
                return len(log_events)

        poll("the processors at work", lambda: uncommitted() < len(log_events), 90, logs, interval_s=0.1)
        left = uncommitted()
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(timeout=10)
        assert left > 0, "the processors had committed the whole log before the kill: it tested no kill under load"
        now_ms = int(time.time() * 1000)
        states, alert_ids = expected(log_events, now_ms)

        poll("every event in ClickHouse", lambda: (r := q(settings, "SELECT count() AS n FROM "
                                                          "enablex.webhook_events FINAL")) and int(r[0]["n"])
             == len(log_events), 240, logs)
        poll("every alert", lambda: (r := q(settings, "SELECT count() AS n FROM enablex.sla_alerts FINAL"))
             and int(r[0]["n"]) >= len(alert_ids), 240, logs)

        def sessions_settled():
            rows = q(settings, "SELECT app_id, conf_num, version, sla_state, toUnixTimestamp64Milli(ended_at) AS e, "
                               "toUnixTimestamp64Milli(transcoded_at) AS t, toUnixTimestamp64Milli(sla_deadline) "
                               "AS d, recording_files, transcoded_files, delivered_files, chat_files "
                               "FROM enablex.sessions FINAL")
            got = {f"{r['app_id']}/{r['conf_num']}": r for r in rows or []}
            want = {k: {"app_id": s["app_id"], "conf_num": s["conf_num"], "version": s["version"],
                        "sla_state": s["sla_state"], "e": s["ended_at"], "t": s["transcoded_at"],
                        "d": s["sla_deadline"], "recording_files": s["recording_files"],
                        "transcoded_files": s["transcoded_files"], "delivered_files": s["delivered_files"],
                        "chat_files": s["chat_files"]} for k, s in states.items()}
            diff.clear()
            diff.extend((k, got.get(k), want[k]) for k in sorted(want) if got.get(k) != want[k])
            return got == want or None

        diff: list = []
        try:
            poll("session states equal to a clean replay", sessions_settled, 120, logs)
        except AssertionError:
            raise AssertionError(f"{len(diff)} sessions differ, e.g. {diff[:3]}") from None
        assert int(q(settings, "SELECT uniqExact(event_id) AS n FROM enablex.webhook_events")[0]["n"]) == len(
            log_events)
        got_alerts = {r["alert_id"] for r in q(settings, "SELECT alert_id FROM enablex.sla_alerts FINAL")}
        assert got_alerts == alert_ids
        rows_before_final = int(q(settings, "SELECT count() AS n FROM enablex.sla_alerts")[0]["n"])
        record_result("worker killed", events=len(log_events), duration_s=round(time.monotonic() - started, 1),
                      lost=0, duplicated_after_final=0, alerts=len(alert_ids),
                      alert_rows_before_final=rows_before_final,
                      detail="one of two processor workers SIGKILLed while working through the backlog")
    except AssertionError as failure:
        # where each surviving processor was waiting (the sink is no faust worker: SIGUSR1 would end it)
        raise AssertionError(f"{failure}\n{task_dumps(procs[1:], logs[1:])}") from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
