"""`enx-streams rebuild` recomputes the projections from the event log, and the result equals the live one."""

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

from streams.broker.topics import contract_topics, ensure_topics
from streams.config import Settings
from streams.sink.query import QueryError, run_query
from tests.integration.test_processor import event, produce
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
        out = run_query(settings, sql, "JSONEachRow")
    except QueryError:
        return None
    return [json.loads(line) for line in out.decode().splitlines()]


def snapshot(settings: Settings) -> dict[str, list[dict]]:
    return {name: query(settings, sql) or [] for name, sql in TABLES.items()}


def test_rebuild_equals_live(bootstrap: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", kafka_bootstrap=bootstrap,
                        topic_prefix=f"b{uuid.uuid4().hex[:8]}.", partitions=2)
    asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))
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
    with open(log, "ab") as out:
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--roles", "processor,sink"],
                                  env=cli_env(settings), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
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
    assert f"rebuilt from {len(log_events)} webhook events" in rebuilt.stdout

    # read the rebuilt projection through an owner again
    with open(log, "ab") as out:
        sink = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--roles", "sink"],
                                env=cli_env(settings), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        after = poll("the rebuilt projection", lambda: (a := snapshot(settings))["sessions"] and a, 60, log)
        for name in TABLES:
            assert after[name] == live[name], name
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=40)
