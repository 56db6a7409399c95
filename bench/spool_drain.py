"""Spool drain: a spool of N frames (what a long Kafka outage leaves) handed to the broker by ingest's
durable producer while new webhooks keep arriving (about 200 a second, each made durable by the same
producer, behind the spool), for N = 50,000 and 200,000. Frames/s for each, and the ratio of the two drain
times: linear draining makes it about 4 (the goal: at most 4.5); a drain that reread the spool per batch
was quadratic.

The spool file is written in the spool's own format (the frames ingest would have fsynced one by one), so
the figure is the replay's alone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.common import fresh_settings, webhook
from streams.avro import default_codec
from streams.ingest.metrics import IngestMetrics
from streams.ingest.producer import DurableProducer
from streams.ingest.spool import encode_frame

NEW_TRAFFIC_INTERVAL_S = 0.005  # new webhooks during the drain: about 200 a second


def write_spool(directory: Path, topic: str, frames: int) -> int:
    """A spool file of ``frames`` WebhookEvent records (1,000 sessions' worth at a time); its size."""
    codec = default_codec()
    directory.mkdir(parents=True, exist_ok=True)
    now = int(time.time() * 1000)
    size = 0
    with open(directory / "spool.log", "wb") as f:
        for i in range(frames):
            record = webhook("recording", "bench", f"spool{i % 1000}", now, now, n=i)
            frame = encode_frame(topic, f"bench/spool{i % 1000}".encode(), codec.encode("WebhookEvent", record))
            f.write(frame)
            size += len(frame)
    return size


async def _drain(settings, frames: int) -> dict[str, float]:
    spool_dir = settings.data_dir / "spool"
    size = write_spool(spool_dir, settings.topic("webhooks"), frames)
    producer = DurableProducer(settings.kafka_bootstrap, spool_dir, IngestMetrics())
    codec = default_codec()
    new = 0
    started = time.monotonic()
    await producer.start()

    async def traffic() -> None:
        nonlocal new
        while True:
            now = int(time.time() * 1000)
            record = webhook("recording", "bench", f"new{new % 100}", now, now, n=new)
            await producer.deliver(settings.topic("webhooks"), f"bench/new{new % 100}".encode(),
                                   codec.encode("WebhookEvent", record))
            new += 1
            await asyncio.sleep(NEW_TRAFFIC_INTERVAL_S)  # the arrival rate of new webhooks, not a wait for a result

    flowing = asyncio.create_task(traffic())
    try:
        deadline = started + 1800
        while producer.spool.pending_bytes() > 0 or not producer.kafka_ok:
            assert time.monotonic() < deadline, f"the spool of {frames} frames did not drain in 30 minutes"
            await asyncio.sleep(0.05)  # poll interval, bounded by the deadline
        elapsed = time.monotonic() - started
    finally:
        flowing.cancel()
        await producer.flush()
    return {"frames": frames, "spool_mb": round(size / 1e6, 1), "seconds": round(elapsed, 2),
            "new_during_drain": new, "frames_per_s": round(frames / elapsed, 1)}


def run(bootstrap: str, work: Path, sizes: tuple[int, int] = (50_000, 200_000)) -> dict[str, object]:
    asyncio.run(_drain(fresh_settings(bootstrap, work, partitions=4), 2_000))  # warm-up: broker, producer, JIT
    small, large = (asyncio.run(_drain(fresh_settings(bootstrap, work, partitions=4), n)) for n in sizes)
    return {"spool_drain_small": small, "spool_drain_large": large,
            "spool_drain_small_fps": small["frames_per_s"], "spool_drain_large_fps": large["frames_per_s"],
            "spool_drain_time_ratio": round(large["seconds"] / small["seconds"], 2),
            "spool_drain_size_ratio": round(sizes[1] / sizes[0], 2)}
