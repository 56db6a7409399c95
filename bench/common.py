"""What every benchmark needs: a real broker of its own, fresh topics, a load of events, percentiles, RSS.

Benchmarks measure; they do not assert. Each returns figures for ``bench/results/latest.json``."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from streams import config
from streams.avro import default_codec
from streams.broker.local import LocalKafka, free_port
from streams.broker.topics import contract_topics, ensure_topics
from streams.children import child_env
from streams.events import event_id_of

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by the nearest-rank method."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def wait_for(what: str, check: Callable[[], object], timeout_s: float, interval_s: float = 0.2) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval_s)  # poll interval, bounded by the deadline
    raise TimeoutError(f"{what}: not within {timeout_s} s")


@contextmanager
def broker(work: Path) -> Iterator[LocalKafka]:
    kafka = LocalKafka(work / "broker", config.default_cache_dir(), port=free_port())
    kafka.start(timeout_s=120, echo=lambda _m: None)
    try:
        yield kafka
    finally:
        kafka.stop()


def fresh_settings(bootstrap: str, work: Path, partitions: int = 4, **overrides: object) -> config.Settings:
    settings = config.Settings(data_dir=work / f"data-{uuid.uuid4().hex[:6]}", kafka_bootstrap=bootstrap,
                               topic_prefix=f"b{uuid.uuid4().hex[:8]}.", partitions=partitions,
                               ingest_port=free_port(), ingest_host="127.0.0.1", **overrides)  # type: ignore[arg-type]
    asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))
    return settings


def webhook(type_: str, app: str, conf: str, trans_ms: int, received_ms: int, n: int = 0) -> dict:
    """A ``WebhookEvent`` record as ingest writes it."""
    payload = {"type": type_, "app_id": app, "conf_num": conf, "trans_date": trans_ms // 1000, "n": n}
    files = [{"kind": type_, "url": f"https://f/{conf}/{type_}.mp4", "stage": None, "size_bytes": None}] \
        if type_ in ("recording", "transcoded") else []
    return {"event_id": event_id_of(payload), "received_at": received_ms, "type": type_, "app_id": app,
            "room_id": "room", "conf_num": conf, "trans_date": trans_ms, "files": files, "destination": None,
            "raw": json.dumps(payload), "source": None}


def session_log(sessions: int, start_ms: int, sla_s: float = 2700, step_ms: int = 50) -> Iterator[dict]:
    """Four events per session (roomdrop, recording, transcoded within the SLA, chatdata), in time order."""
    for i in range(sessions):
        t = start_ms + i * step_ms
        conf = f"s{i}"
        yield webhook("roomdrop", "bench", conf, t, t)
        yield webhook("recording", "bench", conf, t + 1000, t + 1000)
        yield webhook("transcoded", "bench", conf, t + int(sla_s * 500), t + 1500)
        yield webhook("chatdata", "bench", conf, t + 2000, t + 2000)


async def produce_all(settings: config.Settings, records: Iterable[dict], echo: Callable[[str], None] = print) -> int:
    """Encode and produce ``records`` to the webhook log, keyed by session; returns how many."""
    codec = default_codec()
    topic = settings.topic("webhooks")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    n = 0
    try:
        pending = []
        for record in records:
            pending.append(await producer.send(topic, codec.encode("WebhookEvent", record),
                                               key=f"{record['app_id']}/{record['conf_num']}".encode()))
            n += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
            if n % 200_000 == 0:
                echo(f"  produced {n}")
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return n


async def group_lag(bootstrap: str, group: str, topic: str, partitions: int) -> int | None:
    """Records of ``topic`` the group has not committed yet (None while it has committed nothing)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    except KafkaError:
        return None  # no coordinator for the group yet: it has committed nothing
    finally:
        await admin.close()
    mine = {tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == topic and meta.offset >= 0}
    if not mine:
        return None
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await consumer.stop()
    return sum(end - mine.get(tp.partition, 0) for tp, end in ends.items())


class Process:
    """An ``enx-streams`` role as a child process with its log in the work directory (or, with ``command``,
    another program given this command's settings the same way: ``args`` follow it); ``cwd``: another
    checkout of the repository runs its own ``streams`` (first on the module path)."""

    def __init__(self, settings: config.Settings, args: list[str], log: Path, env: dict[str, str] | None = None,
                 command: list[str] | None = None, cwd: Path = ROOT):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([*(command or [sys.executable, "-m", "streams.cli"]), *args],
                                         env={**child_env(settings), **(env or {})}, cwd=cwd, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.log.name} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def machine() -> dict[str, object]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "python": sys.version.split()[0]}
