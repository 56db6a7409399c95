"""A sink worker killed with SIGKILL mid-batch: after a restart every event is in ClickHouse exactly once.

The sink commits offsets only after the insert that carries them, so a kill loses nothing (the uncommitted
batch is consumed again) and doubles nothing visible (rows are keyed by event_id and collapse under FINAL).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer

from streams.avro import default_codec
from streams.broker.topics import contract_topics, ensure_topics
from streams.config import Settings
from streams.sink.query import QueryError, run_query
from tests.integration.test_sink import webhook
from tests.polling import poll, stop_gracefully

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 6000


def _count(settings: Settings, sql: str) -> int:
    try:
        out = run_query(settings, sql, "JSONEachRow")
    except QueryError:
        return -1
    return int(json.loads(out.decode().splitlines()[0])["n"])


def _start_sink(settings: Settings, log: Path) -> subprocess.Popen:
    env = dict(os.environ, ENX_DATA_DIR=str(settings.data_dir), ENX_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
               ENX_TOPIC_PREFIX=settings.topic_prefix, ENX_PARTITIONS=str(settings.partitions))
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--roles", "sink"], env=env,
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def test_sink_killed_mid_batch_loses_and_doubles_nothing(bootstrap: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=bootstrap, topic_prefix=f"k{uuid.uuid4().hex[:10]}.",
                        partitions=2)
    asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))
    log = tmp_path / "sink.log"
    sink = _start_sink(settings, log)
    try:
        poll("the sink answering queries", lambda: _count(settings, "SELECT count() AS n FROM "
                                                                     "enablex.webhook_events") >= 0, 60, log)

        async def produce(start: int, stop: int) -> None:
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                        linger_ms=20)
            await producer.start()
            try:
                futures = []
                for i in range(start, stop):
                    record = webhook(f"kill-{i:06d}", "recording", conf_num=str(i % 50),
                                     files=[{"kind": "recording", "url": f"https://f/{i}.mkv", "stage": None,
                                             "size_bytes": i}])
                    futures.append(await producer.send(settings.topic("webhooks"),
                                                       default_codec().encode("WebhookEvent", record),
                                                       key=f"app/{i % 50}".encode()))
                await asyncio.gather(*futures)
            finally:
                await producer.stop()

        asyncio.run(produce(0, EVENTS // 2))
        poll("the first rows", lambda: _count(settings, "SELECT count() AS n FROM enablex.webhook_events") > 0,
              60, log)
        # the second half lands while the sink is running; it batches for about a second, so a kill right
        # after the produce hits it with a batch consumed but not yet inserted and committed
        asyncio.run(produce(EVENTS // 2, EVENTS))
        sink.send_signal(signal.SIGKILL)
        sink.wait(timeout=30)
        sink = _start_sink(settings, log)
        poll("every event in ClickHouse", lambda: _count(
            settings, "SELECT count() AS n FROM enablex.webhook_events FINAL") == EVENTS, 120, log)
        assert _count(settings, "SELECT uniqExact(event_id) AS n FROM enablex.webhook_events") == EVENTS
        assert _count(settings, "SELECT count() AS n FROM enablex.session_files FINAL") == EVENTS
    finally:
        stop_gracefully([sink], 30)
