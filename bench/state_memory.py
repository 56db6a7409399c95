"""Worker RSS with many open sessions, and how soon a worker restarted with them works again.

Memory: N sessions that each have a recording and await their composite (``pending``: nothing may leave the
tables), processed by one real processor worker; its resident memory is sampled against the number of events
it has committed. With fewer than a million sessions the one-million figure is extrapolated from the slope of
those samples (and marked so).

Restart: that worker is stopped (SIGTERM) and a new one started on the same data directory; right after its
start one webhook is posted, a recording of a new session whose deadline is already past. Two times from the
new worker's start: until the webhook is processed (its session's snapshot is on the sessions topic:
``worker_restart_ready_s_1m_sessions``), and until the SLA watch has stalled it (its ``transcode_stalled`` on
the alerts topic: the watch sweeps only once it has indexed the partitions' sessions again,
``worker_restart_watch_s_1m_sessions``). Then the same once more after a SIGKILL of that worker
(``worker_killed_*``: it restores the changelog tail its databases lack)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import Process, fresh_settings, group_lag, produce_all, rss_mb, webhook
from streams.avro import default_codec
from streams.config import Settings
from streams.rebuild import processor_group

MILLION = 1_000_000
SLA_MS = 45 * 60 * 1000


def open_sessions(n: int, now_ms: int):
    for i in range(n):
        yield webhook("recording", "mem", f"m{i}", now_ms - 60_000, now_ms)


async def _ends(settings: Settings, short: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic(short), p) for p in range(settings.partitions)]
        return {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def _seen(settings: Settings, short: str, key: bytes, start: dict[int, int], started: float,
                worker: Process, timeout_s: float, want: str | None = None) -> float:
    """Seconds from ``started`` (monotonic) until a record of ``key`` (an alert of kind ``want``) is on the
    topic after ``start``."""
    codec = default_codec()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic(short), p) for p in range(settings.partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start[tp.partition])
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            worker.check()
            for records in (await consumer.getmany(timeout_ms=100)).values():
                for r in records:
                    if r.key == key and (want is None or codec.decode(r.value)["kind"] == want):
                        return time.monotonic() - started
        raise TimeoutError(f"{key!r} not on {short} within {timeout_s} s of the worker's start")
    finally:
        await consumer.stop()


def restart(settings: Settings, work: Path, name: str, timeout_s: float = 600) -> tuple[Process, float, float]:
    """A new worker on the settings' data directory, a late recording posted right after its start; (the
    worker, seconds until the recording was processed, seconds until the watch stalled it)."""
    sessions, alerts = asyncio.run(_ends(settings, "sessions")), asyncio.run(_ends(settings, "alerts"))
    started = time.monotonic()
    worker = Process(settings, ["worker", "--roles", "processor"], work / "logs" / f"bench-memory-{name}.log")
    now_ms = int(time.time() * 1000)
    late = webhook("recording", "mem", f"late-{name}", now_ms - SLA_MS - 60_000, now_ms)
    asyncio.run(produce_all(settings, [late], echo=lambda _m: None))
    key = f"mem/late-{name}".encode()
    ready = asyncio.run(_seen(settings, "sessions", key, sessions, started, worker, timeout_s))
    watch = asyncio.run(_seen(settings, "alerts", key, alerts, started, worker, timeout_s, "transcode_stalled"))
    return worker, ready, watch


def run(bootstrap: str, work: Path, sessions: int = MILLION, timeout_s: float = 3600) -> dict[str, object]:
    settings = fresh_settings(bootstrap, work)
    n = asyncio.run(produce_all(settings, open_sessions(sessions, int(time.time() * 1000))))
    worker = Process(settings, ["worker", "--roles", "processor"], work / "logs" / "bench-memory.log")
    samples: list[tuple[int, float]] = []
    try:
        time.sleep(3)  # the worker starting up before its first sample (a benchmark: no assertion rests on it)
        base = rss_mb(worker.pid)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            worker.check()
            lag = asyncio.run(group_lag(settings.kafka_bootstrap, processor_group(settings), settings.topic("webhooks"),
                                        settings.partitions))
            if lag is not None:
                samples.append((n - lag, rss_mb(worker.pid)))
                if lag == 0:
                    break
            time.sleep(1.0)  # sampling interval
        else:
            raise TimeoutError(f"{n} sessions not processed within {timeout_s} s")
        final = rss_mb(worker.pid)
    finally:
        worker.stop()
    if n >= MILLION:
        figure, extrapolated = final, False
    else:
        (x0, y0), (x1, y1) = samples[len(samples) // 4], samples[-1]
        slope = (y1 - y0) / (x1 - x0) if x1 > x0 else 0.0
        figure, extrapolated = final + slope * (MILLION - n), True
    worker, ready, watch = restart(settings, work, "restarted")
    try:
        restarted_rss = rss_mb(worker.pid)
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait()
    finally:
        worker.stop()
    worker, killed_ready, killed_watch = restart(settings, work, "after-kill")
    worker.stop()
    suffix = "" if n >= MILLION else f"_{n}_sessions"
    return {"worker_rss_mb_1m_sessions": round(figure, 1), "worker_rss_extrapolated": extrapolated,
            "worker_rss_sessions_measured": n, "worker_rss_mb_measured": round(final, 1),
            "worker_rss_mb_at_start": round(base, 1),
            f"worker_restart_ready_s_1m_sessions{suffix}": round(ready, 1),
            f"worker_restart_watch_s_1m_sessions{suffix}": round(watch, 1),
            "worker_restart_rss_mb": round(restarted_rss, 1),
            f"worker_killed_ready_s_1m_sessions{suffix}": round(killed_ready, 1),
            f"worker_killed_watch_s_1m_sessions{suffix}": round(killed_watch, 1)}
