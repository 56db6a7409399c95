"""One of two processor workers killed with SIGKILL while they work through a log of 40,000 events.

Afterwards ClickHouse (``FINAL``) holds every event exactly once, every session's state equals the one a
clean replay of the log by the pure rules gives, and the alerts are exactly the expected ones.
The sink runs in a third process, the owner of the embedded ClickHouse.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer

from streams.avro import default_codec
from streams.processor.app import app_id
from tests.faults.pipeline import Pipeline, assert_replayed
from tests.faults.record import record_result
from tests.integration.test_processor import event
from tests.offsets import behind
from tests.polling import poll

SESSIONS = 10_000  # four events each: 40,000, so that two workers take longer than their first commit
SPACING_S = 1.5  # between sessions: the log spans about 5 h 10 min, all of it more than 50 minutes old


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
    pipeline = Pipeline(tmp_path, bootstrap)
    settings = pipeline.settings
    pipeline.provision()
    started = time.monotonic()
    log_events = build_log()
    try:
        pipeline.start_sink()
        # The whole log first, then the processors: its receive times are six hours old, and a processor
        # that catches up with a log still being written judges the rest by the wall clock (as it must
        # live), which would stall sessions whose composite is not written yet.
        asyncio.run(produce(bootstrap, settings.topic("webhooks"), log_events))
        for name in ("p0", "p1"):
            pipeline.start(name, "processor")
        # kill one worker while the two are working through the backlog: once the group has committed
        # something (a commit interval is a second)
        def uncommitted() -> int:
            try:
                return sum(asyncio.run(behind(bootstrap, app_id(settings), settings.topic("webhooks"), 4)).values())
            except Exception:  # noqa: BLE001 - no coordinator for the group yet: nothing committed
                return len(log_events)

        poll("the processors at work", lambda: uncommitted() < len(log_events), 90, pipeline.all_logs(),
             interval_s=0.1)
        left = uncommitted()
        pipeline.procs["p0"].send_signal(signal.SIGKILL)
        pipeline.procs["p0"].wait(timeout=10)
        assert left > 0, "the processors had committed the whole log before the kill: it tested no kill under load"
        now_ms = int(time.time() * 1000)
        figures = assert_replayed(settings, log_events, now_ms, pipeline.all_logs())
        record_result("worker killed", events=figures["events"], duration_s=round(time.monotonic() - started, 1),
                      lost=0, duplicated_after_final=0, alerts=figures["alerts"],
                      alert_rows_before_final=figures["alert_rows_before_final"],
                      detail="one of two processor workers SIGKILLed while working through the backlog")
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n{pipeline.task_dumps()}") from None
    finally:
        pipeline.stop()
