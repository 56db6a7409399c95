"""`enx-streams rebuild` recomputes the projections from the event log, and the result equals the live one; it
refuses against a running worker and changes nothing then; under live traffic it finishes, loses no event,
keeps answering `enx-streams sql` from the old rows until its swap, and pages no alert twice."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.avro import default_codec
from streams.broker.local import free_port
from streams.broker.topics import contract_topics, ensure_topics
from streams.config import Settings
from streams.processor.rules import alert_id
from streams.sink.query import QueryError, run_query
from tests.integration.test_processor import APP, event, produce
from tests.polling import poll

ROOT = Path(__file__).resolve().parents[2]
TABLES = {
    "webhook_events": "SELECT event_id, type, app_id, conf_num, trans_date, file_count, total_bytes FROM "
                      "enablex.webhook_events FINAL ORDER BY event_id",
    "session_files": "SELECT event_id, kind, url FROM enablex.session_files FINAL ORDER BY event_id, url",
    "sessions": "SELECT * FROM enablex.sessions FINAL ORDER BY app_id, conf_num",
    # every column but detected_at: when an alert was raised (the wall clock live, the log's time in a replay)
    "sla_alerts": "SELECT * EXCEPT detected_at FROM enablex.sla_alerts FINAL ORDER BY alert_id",
}


def cli_env(settings: Settings) -> dict:
    return dict(os.environ, ENX_DATA_DIR=str(settings.data_dir), ENX_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
                ENX_TOPIC_PREFIX=settings.topic_prefix, ENX_PARTITIONS=str(settings.partitions))


def query(settings: Settings, sql: str) -> list[dict] | None:
    try:
        out = run_query(settings, sql, "JSONEachRow", open_unowned=False)  # through the owner only
    except QueryError:
        return None
    return [json.loads(line) for line in out.decode().splitlines()]


def snapshot(settings: Settings) -> dict[str, list[dict]]:
    return {name: query(settings, sql) or [] for name, sql in TABLES.items()}


def deployment(bootstrap: str, tmp_path: Path, tag: str) -> Settings:
    """A deployment of its own on the shared broker: its topic prefix, two partitions, its data directory."""
    settings = Settings(data_dir=tmp_path / "data", kafka_bootstrap=bootstrap,
                        topic_prefix=f"{tag}{uuid.uuid4().hex[:8]}.", partitions=2)
    asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))
    return settings


def started(argv: list[str], settings: Settings, log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "streams.cli", *argv], env=env or cli_env(settings), cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)


def test_rebuild_equals_live(bootstrap: str, tmp_path: Path) -> None:
    settings = deployment(bootstrap, tmp_path, "b")
    start = time.time() - 2 * 3600
    log_events = []
    for i in range(20):
        t = start + i * 90
        conf = f"c{i}"
        log_events += [event("roomdrop", conf, t, t), event("recording", conf, t + 30, t + 30)]
        if i % 5 == 1:
            continue  # never transcoded: stalled
        late = 3000 if i % 5 == 2 else 900  # 50 min (late: stalled, then recovered) or 15 min (met)
        log_events.append(event("transcoded", conf, t + late, t + late))
        log_events.append(event("chatdata", conf, t + 200, t + 200))
    log_events.sort(key=lambda e: e["received_at"])
    produce(settings, log_events)

    log = tmp_path / "worker.log"
    worker = started(["worker", "--roles", "processor,sink"], settings, log)
    try:
        expected_alerts = 4 + 4 * 2  # 4 never-transcoded stalls; 4 late ones stalled then recovered
        poll("the live projection", lambda: (s := query(settings, "SELECT count() AS n FROM enablex.sla_alerts "
                                                                  "FINAL")) and int(s[0]["n"]) == expected_alerts
             and int(query(settings, "SELECT count() AS n FROM enablex.webhook_events FINAL")[0]["n"])
             == len(log_events), 120, log)
        # settled: the same snapshot twice, a few seconds apart
        live = poll("a settled projection", lambda: (a := snapshot(settings)) == snapshot(settings) and a, 60, log)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=40)
    assert len(live["sessions"]) == 20
    assert sorted(r["sla_state"] for r in live["sessions"]) == sorted(
        ["breached"] * 4 + ["recovered"] * 4 + ["met"] * 12)

    rebuilt = subprocess.run([sys.executable, "-m", "streams.cli", "rebuild", "--yes"], env=cli_env(settings), cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert f"rebuilt from {len(log_events)} records of the event log" in rebuilt.stdout  # no ingest ran: no watermark

    # read the rebuilt projection through an owner again
    sink = started(["worker", "--roles", "sink"], settings, log)
    try:
        after = poll("the rebuilt projection", lambda: (a := snapshot(settings))["sessions"] and a, 60, log)
        for name in TABLES:
            assert after[name] == live[name], name
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=40)


# -- refused: nothing changes -----------------------------------------------------------------------

def table_counts(settings: Settings) -> dict[str, int] | None:
    """Every table of enablex (views aside) with its stored rows, read through the owner."""
    names = query(settings, "SELECT name FROM system.tables WHERE database = 'enablex' AND engine NOT LIKE '%View' "
                            "ORDER BY name")
    if names is None:
        return None
    out = {}
    for row in names:
        counted = query(settings, f"SELECT count() AS n FROM enablex.`{row['name']}`")
        if counted is None:
            return None
        out[row["name"]] = int(counted[0]["n"])
    return out


async def kafka_state(settings: Settings) -> tuple[set[str], dict]:
    """The topics of the deployment and the processor's committed offsets."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        topics = {t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)}
        offsets = await admin.list_consumer_group_offsets(f"{settings.topic_prefix}processor")
        return topics, {(tp.topic, tp.partition): m.offset for tp, m in offsets.items()}
    finally:
        await admin.close()


def test_a_rebuild_refused_against_a_running_worker_changes_nothing(bootstrap: str, tmp_path: Path) -> None:
    settings = deployment(bootstrap, tmp_path, "r")
    start = time.time() - 2 * 3600
    events = [e for i in range(6) for e in (event("roomdrop", f"c{i}", start + i, start + i),
                                            event("recording", f"c{i}", start + i + 30, start + i + 30))]
    produce(settings, events)
    log = tmp_path / "worker.log"
    worker = started(["worker", "--roles", "processor,sink"], settings, log)
    try:
        poll("the live projection", lambda: (s := query(settings, "SELECT count() AS n FROM enablex.sla_alerts "
                                                                  "FINAL")) and int(s[0]["n"]) == 6, 120, log)
        before = poll("a settled projection", lambda: (a := table_counts(settings)) == table_counts(settings) and a,
                      60, log)
        kafka_before = asyncio.run(kafka_state(settings))
        refused = subprocess.run([sys.executable, "-m", "streams.cli", "rebuild", "--yes"], env=cli_env(settings),
                                 cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "the rebuild changed nothing" in refused.stdout
        assert f"consumer group {settings.topic_prefix}processor has 1 running member" in refused.stdout
        assert f"enx-streams-sink.{settings.topic_prefix.rstrip('.')} has 1 running member" in refused.stdout
        assert "is owned by pid" in refused.stdout
        assert table_counts(settings) == before  # every table, every row
        assert before["webhook_events"] == len(events) and before["sla_alerts"] >= 6
        assert query(settings, "SELECT name FROM system.databases WHERE name LIKE 'enablex_%'") == []
        topics, offsets = asyncio.run(kafka_state(settings))
        assert topics == kafka_before[0] and offsets == kafka_before[1]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=40)
    # stopped, but asked by no one (no terminal) and without --yes: refused too, nothing changed
    unasked = subprocess.run([sys.executable, "-m", "streams.cli", "rebuild"], env=cli_env(settings), cwd=ROOT,
                             capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert unasked.returncode == 2, unasked.stdout + unasked.stderr
    assert "webhook_events (12 rows)" in unasked.stdout and "--yes" in unasked.stdout
    # asked in a terminal, answered no: nothing changed either
    terminal, typed = pty.openpty()
    try:
        answered = subprocess.Popen([sys.executable, "-m", "streams.cli", "rebuild"], env=cli_env(settings),
                                    cwd=ROOT, stdin=typed, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        os.write(terminal, b"n\n")
        out, _ = answered.communicate(timeout=120)
    finally:
        os.close(terminal)
        os.close(typed)
    assert answered.returncode == 1 and b"Replace them?" in out and b"nothing changed" in out, out
    assert asyncio.run(kafka_state(settings)) == kafka_before


# -- under live traffic -------------------------------------------------------------------------------

class Traffic:
    """Webhooks posted to a running ingest, session by session, remembering every event id it accepted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.accepted: list[str] = []
        self.stalled: list[str] = []  # sessions that never get their composite (deadline long past)
        self.confs: list[str] = []
        self.sessions = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def post(self, body: dict) -> None:
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 202
            self.accepted.append(json.loads(response.read())["event_id"])

    def session(self, tag: str) -> None:
        i = self.sessions
        self.sessions += 1
        conf = f"{tag}{i}"
        self.confs.append(conf)
        t = time.time() - 2 * 3600 + i  # ended two hours ago: the SLA is past whatever comes
        head = {"app_id": APP, "room_id": "room", "conf_num": conf}
        self.post({**head, "type": "roomdrop", "trans_date": t})
        self.post({**head, "type": "recording", "trans_date": t + 60, "recording": [f"http://f/{conf}/r.mkv"]})
        if i % 3 == 0:
            self.stalled.append(conf)
        else:
            self.post({**head, "type": "transcoded", "trans_date": t + 900,
                       "transcoded": [{"url": f"http://f/{conf}/c.mp4"}]})

    def start(self, tag: str) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.session(tag)
                self._stop.wait(0.1)  # about ten sessions a second, for as long as the test lets it run

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)


async def _alert_ids_on(settings: Settings) -> list[str]:
    """Every alert id on the alerts topic, in the order read, repeats included."""
    codec = default_codec()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic("alerts"), p) for p in range(settings.partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp, start in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, start)  # explicit: seek_to_beginning is lazy and may lose to the reset on assign
        ids: list[str] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                ids += [codec.decode(r.value)["alert_id"] for r in records]
        return ids
    finally:
        await consumer.stop()


def test_a_rebuild_under_live_traffic_loses_nothing_keeps_answering_and_pages_once(bootstrap: str,
                                                                                   tmp_path: Path) -> None:
    settings = deployment(bootstrap, tmp_path, "t")
    port = free_port()
    ingest_env = dict(cli_env(settings), ENX_DATA_DIR=str(tmp_path / "ingest"), ENX_INGEST_PORT=str(port))
    logs = [tmp_path / "ingest.log", tmp_path / "worker.log", tmp_path / "rebuild.log"]
    ingest = started(["ingest"], settings, logs[0], ingest_env)
    worker = started(["worker", "--roles", "processor,sink"], settings, logs[1])
    rebuild = None
    traffic = Traffic(f"http://127.0.0.1:{port}/webhooks/enablex")
    try:
        def ready() -> bool:
            assert ingest.poll() is None, logs[0].read_text()
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
            except OSError:
                return False

        poll("ingest ready", ready, 60, logs[0])

        def count(sql: str) -> int | None:
            rows = query(settings, sql)
            return None if rows is None else int(rows[0]["n"])

        for _ in range(30):
            traffic.session("a")
        poll("the live projection", lambda: count("SELECT count() AS n FROM enablex.webhook_events FINAL")
             == len(traffic.accepted) and (count("SELECT count() AS n FROM enablex.sla_alerts FINAL "
                                                 "WHERE kind = 'transcode_stalled'") or 0) >= len(traffic.stalled)
             and count("SELECT count() AS n FROM enablex.sessions FINAL WHERE sla_state = 'pending'") == 0,
             120, logs)
        old = len(traffic.accepted)
        paged_live = asyncio.run(_alert_ids_on(settings))
        assert len(paged_live) == len(set(paged_live)) >= len(traffic.stalled) == 10
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0

        traffic.start("b")  # webhooks keep coming, before, during and after the rebuild
        poll("webhooks arriving", lambda: traffic.sessions > 35, 30, logs)
        swapped = threading.Event()
        output: list[str] = []
        rebuild = subprocess.Popen([sys.executable, "-m", "streams.cli", "rebuild", "--yes"], env=cli_env(settings),
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def read_output() -> None:
            for line in rebuild.stdout:
                output.append(line)
                if "swapped the rebuilt tables" in line:
                    swapped.set()

        reader = threading.Thread(target=read_output, daemon=True)
        reader.start()
        answers: list[int | None] = []  # what `enx-streams sql` answered through the owner until the swap
        while rebuild.poll() is None and not swapped.is_set():
            n = count("SELECT count() AS n FROM enablex.webhook_events FINAL")
            if not swapped.is_set():
                answers.append(n)
            time.sleep(0.2)  # poll interval of the reader
        assert rebuild.wait(timeout=600) == 0, "".join(output)
        reader.join(timeout=10)
        text = "".join(output)
        logs[2].write_text(text)
        # answered from the moment the rebuild held the directory (before: nobody owned it) to its swap, with the
        # old rows every time (the live tables are never emptied nor written meanwhile), then perhaps, for a query
        # that raced the swap's message, the rebuilt rows: more than the old, never fewer
        answered = answers[next(i for i, a in enumerate(answers) if a is not None):]
        before_swap = answered[:next((i for i, a in enumerate(answered) if a != old), len(answered))]
        assert len(before_swap) > 5 and None not in answered, answers
        assert all(a > old for a in answered[len(before_swap):]), answers
        assert traffic._thread is not None and traffic._thread.is_alive()  # it finished under live traffic
        assert "rebuilt from" in text and "new and published" in text

        worker = started(["worker", "--roles", "processor,sink"], settings, logs[1])
        during = traffic.sessions
        poll("more webhooks after the rebuild", lambda: traffic.sessions > during + 10, 60, logs)
        traffic.stop()
        posted = list(traffic.accepted)

        def every_event_once() -> list[dict] | None:
            rows = query(settings, "SELECT event_id FROM enablex.webhook_events FINAL")
            return rows if rows is not None and len(rows) >= len(set(posted)) else None

        rows = poll("every posted event in ClickHouse", every_event_once, 180, logs)
        ids = [r["event_id"] for r in rows]
        assert len(ids) == len(set(ids)) and set(ids) == set(posted)  # none lost, none twice under FINAL
        expected = {alert_id(f"{APP}/{conf}", "transcode_stalled") for conf in traffic.stalled}
        paged = poll("every stall paged", lambda: (a := asyncio.run(_alert_ids_on(settings))) and expected <= set(a)
                     and a, 120, logs)
        twice = [a for a in set(paged) if paged.count(a) > 1]
        names = {alert_id(f"{APP}/{conf}", kind): f"{conf} {kind}" for conf in traffic.confs
                 for kind in ("transcode_stalled", "transcode_recovered")}
        assert not twice, (f"alerts twice on alerts.v1: {sorted(names.get(a, a) for a in twice)}\n--- rebuild:\n{text}"
                           f"\n--- live worker:\n{logs[1].read_text()[-4000:]}")  # no alert twice
        # a session whose composite came a moment after its (long past) deadline may have been paged and closed:
        # those alerts are legitimate, once each
        possible = {alert_id(f"{APP}/{conf}", kind) for conf in traffic.confs
                    for kind in ("transcode_stalled", "transcode_recovered")}
        assert set(paged_live) <= set(paged) <= possible
        in_clickhouse = poll("every alert in ClickHouse", lambda: (rows := query(
            settings, "SELECT alert_id FROM enablex.sla_alerts FINAL")) is not None and len(rows) >= len(set(paged))
            and rows, 60, logs)
        assert sorted(r["alert_id"] for r in in_clickhouse) == sorted(set(paged))
    finally:
        traffic.stop()
        for proc in (rebuild, worker, ingest):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
