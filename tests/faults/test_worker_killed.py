"""One of two processor workers killed with SIGKILL while they work through a log of 80,000 events.

Afterwards ClickHouse (``FINAL``) holds every event exactly once, every session's state equals the one a
clean replay of the log by the pure rules gives, and the alerts are exactly the expected ones.
The sink runs in a third process, the owner of the embedded ClickHouse. The log and the kill under load are
shared with test_worker_killed_restoring.py, which then kills the survivor while it restores its tables.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from aiokafka import AIOKafkaProducer

from streams.avro import default_codec
from streams.processor.app import app_id
from tests.faults.pipeline import Pipeline, assert_replayed
from tests.faults.record import record_result
from tests.integration.test_processor import event
from tests.offsets import behind
from tests.polling import poll

SESSIONS = 20_000  # four events each: 80,000, so that two workers take longer than their first commit
# between sessions: the sessions start over 4 h 10 min from six hours ago and the late composites come an hour
# after their session, so the log spans about 5 h 10 min, all of it more than 50 minutes old
SPACING_S = 0.75


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


def start_and_kill_one(pipeline: Pipeline, log_events: list[dict], victim: str = "p0",
                       before_kill: Callable[[], None] = lambda: None) -> int:
    """The sink, the whole log, then two processor workers (``p0``, ``p1``); ``victim`` SIGKILLed as soon as the
    group has committed part of the log (a commit interval is a second), ``before_kill`` called just before.
    Returns the records still uncommitted at the kill, asserting there were some (a kill under load)."""
    settings = pipeline.settings
    pipeline.start_sink()
    # The whole log first, then the processors: its receive times are six hours old, and a processor
    # that catches up with a log still being written judges the rest by the wall clock (as it must
    # live), which would stall sessions whose composite is not written yet.
    asyncio.run(produce(settings.kafka_bootstrap, settings.topic("webhooks"), log_events))
    for name in ("p0", "p1"):
        pipeline.start(name, "processor")

    def uncommitted() -> int:
        try:
            return sum(asyncio.run(behind(settings.kafka_bootstrap, app_id(settings), settings.topic("webhooks"),
                                          settings.partitions)).values())
        except Exception:  # noqa: BLE001 - no coordinator for the group yet: nothing committed
            return len(log_events)

    poll("the processors at work", lambda: uncommitted() < len(log_events), 90, pipeline.all_logs(),
         interval_s=0.1)
    left = uncommitted()
    before_kill()
    pipeline.procs[victim].send_signal(signal.SIGKILL)
    pipeline.procs[victim].wait(timeout=10)
    assert left > 0, "the processors had committed the whole log before the kill: it tested no kill under load"
    return left


@contextmanager
def one_killed_under_load(tmp_path: Path, bootstrap: str, before_kill: Callable[[], None] = lambda: None
                          ) -> Iterator[tuple[Pipeline, list[dict], int]]:
    """A deployment of its own through :func:`build_log`'s log, ``p0`` killed under load (:func:`start_and_kill_one`):
    the pipeline, the log and the records uncommitted at the kill. A failure inside shows where each live worker
    was waiting; every process is stopped at the end."""
    pipeline = Pipeline(tmp_path, bootstrap)
    pipeline.provision()
    log_events = build_log()
    try:
        yield pipeline, log_events, start_and_kill_one(pipeline, log_events, before_kill=before_kill)
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n{pipeline.task_dumps()}") from None
    finally:
        pipeline.stop()


def test_worker_killed_under_load(bootstrap: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with one_killed_under_load(tmp_path, bootstrap) as (pipeline, log_events, left):
        now_ms = int(time.time() * 1000)
        figures = assert_replayed(pipeline.settings, log_events, now_ms, pipeline.all_logs())
        record_result("worker killed", events=figures["events"], duration_s=round(time.monotonic() - started, 1),
                      lost=0, duplicated_after_final=0, alerts=figures["alerts"], uncommitted_at_kill=left,
                      alert_rows_before_final=figures["alert_rows_before_final"],
                      detail="one of two processor workers SIGKILLed while working through the backlog")
