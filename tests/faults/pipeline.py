"""The whole pipeline for the fault tests, and the checks each ends with.

:class:`Pipeline` runs the real ``enx-streams`` processes on one deployment's settings: a sink worker (the owner
of the embedded ClickHouse), processor workers, and ingest when a test posts webhooks. :func:`assert_replayed`
is what every such test ends with: every event exactly once in ClickHouse under ``FINAL``, every session's
state equal to a clean replay of the log by the pure rules, and exactly the expected alert ids.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import watermark
from streams.avro import default_codec
from streams.broker.topics import contract_topics, ensure_topics
from streams.config import Settings
from streams.processor import rules
from streams.sink.query import QueryError, run_query
from tests.polling import poll, stop_gracefully, task_dumps

ROOT = Path(__file__).resolve().parents[2]
SLA_S = 45 * 60


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


def read_log(bootstrap: str, topic: str, partitions: int, timeout_s: float = 60) -> list[dict]:
    """Every webhook of the log, decoded, partition after partition in offset order (a session's events
    share a partition, so each session's are in log order), up to the end offsets when called; ingest's
    watermarks (streams/watermark.py) are not webhooks and are left out."""

    async def run() -> list[dict]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.start()
        try:
            ends = await consumer.end_offsets(tps)
            got: dict[int, list[dict]] = {p: [] for p in range(partitions)}
            deadline = time.monotonic() + timeout_s
            async def behind() -> bool:
                return any([await consumer.position(tp) < ends[tp] for tp in tps])

            while await behind():
                assert time.monotonic() < deadline, f"{topic} not read to its end within {timeout_s} s"
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    got[tp.partition] += [default_codec().decode(r.value) for r in records]
            return [e for p in range(partitions) for e in got[p] if not watermark.is_mark(e)]
        finally:
            await consumer.stop()

    return asyncio.run(run())


class Pipeline:
    """One deployment's processes under test (a topic prefix of its own), their logs under ``tmp``."""

    def __init__(self, tmp: Path, bootstrap: str, partitions: int = 4) -> None:
        self.tmp = tmp
        self.settings = Settings(data_dir=tmp / "data", kafka_bootstrap=bootstrap,
                                 topic_prefix=f"w{uuid.uuid4().hex[:8]}.", partitions=partitions)
        self.env = dict(os.environ, ENX_DATA_DIR=str(self.settings.data_dir), ENX_KAFKA_BOOTSTRAP=bootstrap,
                        ENX_TOPIC_PREFIX=self.settings.topic_prefix, ENX_PARTITIONS=str(partitions))
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def provision(self) -> None:
        asyncio.run(ensure_topics(self.settings.kafka_bootstrap, contract_topics(self.settings)))

    def start(self, name: str, roles: str) -> subprocess.Popen:
        """``enx-streams worker --roles <roles>``; the sink in the deployment's data dir, a processor in its own."""
        log = self.logs[name] = self.tmp / f"{name}.log"
        data_dir = self.settings.data_dir if roles == "sink" else self.tmp / name
        with open(log, "ab") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--roles", roles, "--data-dir", str(data_dir)],
                env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        return self.procs[name]

    def start_sink(self) -> None:
        self.start("sink", "sink")
        self.wait_sink()

    def wait_sink(self) -> None:
        poll("the sink answering", lambda: q(self.settings, "SELECT 1 AS one") is not None, 60, self.all_logs())

    def all_logs(self, *extra: Path) -> list[Path]:
        return [*self.logs.values(), *extra]

    def processors(self) -> list[str]:
        return [name for name in self.procs if name != "sink"]

    def task_dumps(self) -> str:
        """Where each live processor was waiting (the sink is no faust worker: SIGUSR1 would end it)."""
        names = self.processors()
        return task_dumps([self.procs[n] for n in names], [self.logs[n] for n in names])

    def stop(self) -> None:
        stop_gracefully(self.procs.values(), 40)


def assert_replayed(settings: Settings, log_events: list[dict], now_ms: int, logs: list[Path],
                    timeout_s: float = 240) -> dict[str, int]:
    """Every event of ``log_events`` exactly once in ClickHouse under FINAL, every session's state equal to a clean
    replay of them by the pure rules (stalls judged at ``now_ms``), exactly the expected alert ids. Returns the
    figures to record."""
    events = len({e["event_id"] for e in log_events})
    states, alert_ids = expected(log_events, now_ms)
    poll("every event in ClickHouse", lambda: (r := q(settings, "SELECT count() AS n FROM enablex.webhook_events "
                                                      "FINAL")) and int(r[0]["n"]) == events, timeout_s, logs)
    poll("every alert", lambda: (r := q(settings, "SELECT count() AS n FROM enablex.sla_alerts FINAL"))
         and int(r[0]["n"]) >= len(alert_ids), timeout_s, logs)

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
    assert int(q(settings, "SELECT uniqExact(event_id) AS n FROM enablex.webhook_events")[0]["n"]) == events
    got_alerts = {r["alert_id"] for r in q(settings, "SELECT alert_id FROM enablex.sla_alerts FINAL")}
    assert got_alerts == alert_ids, (f"{len(alert_ids - got_alerts)} alerts missing, "
                                     f"{len(got_alerts - alert_ids)} unexpected")
    rows_before_final = int(q(settings, "SELECT count() AS n FROM enablex.sla_alerts")[0]["n"])
    return {"events": events, "sessions": len(states), "alerts": len(alert_ids),
            "alert_rows_before_final": rows_before_final}
