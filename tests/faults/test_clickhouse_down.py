"""ClickHouse unavailable for a minute under a steady stream: the sink backs off, commits nothing past its
last successful insert, and catches up afterwards with nothing lost or doubled.

The outage is real: the `enablex` database is detached from the engine the sink writes to (every insert
fails with "database does not exist") and attached again FAULTS_OUTAGE_S later (60 s by default).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer

from streams.avro import default_codec
from streams.broker.topics import contract_topics, ensure_topics
from streams.config import Settings
from streams.sink.clickhouse import connect
from streams.sink.consumer import SinkOptions
from tests.faults.record import record_result
from tests.integration.test_sink import Log, Running, committed, count, until, webhook

OUTAGE_S = float(os.environ.get("FAULTS_OUTAGE_S", "60"))
RATE_PER_S = 50
OPTIONS = SinkOptions(max_rows=5000, max_age_s=0.5, backoff_initial_s=0.2, backoff_max_s=5.0,
                      shutdown_flush_s=5.0, poll_timeout_s=0.2)


async def test_clickhouse_down_for_a_minute(bootstrap: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=bootstrap, topic_prefix=f"f{uuid.uuid4().hex[:10]}.",
                        partitions=2)
    await ensure_topics(bootstrap, contract_topics(settings))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    sink = await Running(settings, OPTIONS).start()
    admin = await asyncio.to_thread(connect, settings)  # a second client of the owner process, same engine
    log = Log()
    sent = 0
    started = time.monotonic()
    try:
        async def send(n: int) -> None:
            nonlocal sent
            for _ in range(n):
                record = webhook(f"ev-{sent:06d}", "roomdrop", conf_num=str(sent % 97))
                await log.send(producer, settings.topic("webhooks"), default_codec().encode("WebhookEvent", record),
                               key=f"app/{sent % 97}".encode())
                sent += 1

        async def steady(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                tick = time.monotonic()
                await send(RATE_PER_S // 10)
                await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))  # pacing the load, not syncing

        await steady(3)
        await until("the first events inserted", lambda: _count_at_least(settings, 1))
        await until("the first offsets committed", lambda: committed(settings))

        await asyncio.to_thread(admin.command, "DETACH DATABASE enablex")
        outage_started = time.monotonic()
        before = await committed(settings)
        inserted_before = sent
        await steady(OUTAGE_S)
        # nothing committed past the last insert that succeeded before the outage
        during = await committed(settings)
        assert all(during.get(tp, 0) <= before.get(tp, 0) for tp in during), (before, during)
        await asyncio.to_thread(admin.command, "ATTACH DATABASE enablex")
        outage = time.monotonic() - outage_started

        await steady(3)

        async def caught_up() -> bool:
            return await committed(settings) == log.ends

        await until("the sink caught up and committed everything", caught_up, timeout_s=120)
        assert await count(settings, "SELECT count() AS n FROM enablex.webhook_events FINAL") == sent
        assert await count(settings, "SELECT uniqExact(event_id) AS n FROM enablex.webhook_events") == sent
        duplicated = await count(settings, "SELECT count() - uniqExact(event_id) AS n FROM enablex.webhook_events")
        record_result("clickhouse down", events=sent, duration_s=time.monotonic() - started, lost=0,
                      duplicated_before_final=duplicated,
                      detail=f"{OUTAGE_S:.0f} s outage ({outage:.0f} s measured) at {RATE_PER_S} events/s; "
                             f"{sent - inserted_before} events arrived during or after it; nothing committed "
                             f"during it; all {sent} present exactly once under FINAL")
    finally:
        await sink.close()
        await asyncio.to_thread(admin.close)
        await producer.stop()


async def _count_at_least(settings: Settings, n: int) -> bool:
    return await count(settings, "SELECT count() AS n FROM enablex.webhook_events") >= n
