"""Processor events per second through the tables, beside raw aiokafka consume and decode.

A log of N webhook events (four per session, every composite within its SLA) is produced once. The raw
figure is one aiokafka consumer reading and Avro-decoding all of it. The processor figure is one real
``enx-streams worker --roles processor`` (a new consumer group) working through the same log: the rate
at which its committed offsets advance, from its first commit to the end (start-up excluded). Beside
them, the ceiling faust itself sets (bench/faust_bare.py: a faust agent that takes the same log's events and
does nothing, once as faust ships, once consuming the way the processor does), so that the processor's
figure can be read against what its framework allows."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import ROOT, Process, fresh_settings, group_lag, produce_all, session_log
from streams.avro import default_codec
from streams.config import Settings
from streams.rebuild import processor_group


async def raw_consume_eps(settings: Settings, expect: int) -> float:
    codec = default_codec()
    topic = settings.topic("webhooks")
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                max_poll_records=5000, fetch_max_bytes=64 * 1024 * 1024)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n = 0
        started = time.monotonic()
        while n < expect:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    codec.decode(r.value, "WebhookEvent")
                n += len(records)
        return n / (time.monotonic() - started)
    finally:
        await consumer.stop()


def faust_bare_eps(settings: Settings, expect: int, mode: str = "shipped", timeout_s: float = 600) -> float:
    """Events per second of a faust agent that only takes the log's events (its first to its last); ``mode``:
    faust as shipped, or consuming the way the processor does (bench/faust_bare.py)."""
    env = {**os.environ, "BENCH_MODE": mode,
           "BENCH_BOOTSTRAP": settings.kafka_bootstrap, "BENCH_TOPIC": settings.topic("webhooks"),
           "BENCH_PARTITIONS": str(settings.partitions), "BENCH_EVENTS": str(expect),
           "BENCH_APP_ID": f"bench-faust-bare-{uuid.uuid4().hex[:8]}"}
    done = subprocess.run([sys.executable, "-m", "bench.faust_bare"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout_s)
    found = re.search(r"faust_bare_eps=([0-9.]+)", done.stdout + done.stderr)
    if found is None:
        raise RuntimeError(f"bench.faust_bare printed no figure (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return float(found.group(1))


def processor_eps(settings: Settings, expect: int, work: Path, timeout_s: float = 1800) -> tuple[float, float]:
    """(events per second, seconds from the worker's start to its first commit)."""
    worker = Process(settings, ["worker", "--roles", "processor"], work / "logs" / "bench-processor.log")
    topic, group = settings.topic("webhooks"), processor_group(settings)
    started = time.monotonic()
    first: tuple[float, int] | None = None
    try:
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            worker.check()
            lag = asyncio.run(group_lag(settings.kafka_bootstrap, group, topic, settings.partitions))
            now = time.monotonic()
            if lag is not None and first is None:
                first = (now, lag)
            if lag == 0 and first is not None:
                done = first[1]  # what was left at the first commit has been processed since
                return (done / (now - first[0]) if now > first[0] and done else float("nan")), first[0] - started
            time.sleep(0.5)  # progress poll interval
        raise TimeoutError(f"the processor did not finish {expect} events within {timeout_s} s")
    finally:
        worker.stop()


def run(bootstrap: str, work: Path, events: int = 200_000) -> dict[str, float]:
    settings = fresh_settings(bootstrap, work)
    n = asyncio.run(produce_all(settings, session_log(events // 4, int(time.time() * 1000) - 86_400_000)))
    raw = asyncio.run(raw_consume_eps(settings, n))
    bare = faust_bare_eps(settings, n)
    lean = faust_bare_eps(settings, n, mode="lean")
    eps, startup = processor_eps(settings, n, work)
    return {"processor_eps": round(eps, 1), "raw_consume_eps": round(raw, 1),
            "processor_vs_raw_ratio": round(eps / raw, 3), "processor_events": n,
            "faust_bare_eps": round(bare, 1), "faust_bare_vs_raw_ratio": round(bare / raw, 3),
            "processor_vs_faust_bare_ratio": round(eps / bare, 3),
            "faust_lean_bare_eps": round(lean, 1), "faust_lean_bare_vs_raw_ratio": round(lean / raw, 3),
            "processor_vs_faust_lean_bare_ratio": round(eps / lean, 3),
            "processor_startup_s": round(startup, 1)}
