"""The test that chose the pinned Kafka version (see streams/broker/pom.xml).

aiokafka produces with acks=all and an idempotent producer and consumes back, and a faust-streaming
worker with a changelog-backed table runs against the broker. Kafka 4 removed old protocol versions;
these are the clients the product uses, so they must pass on the pinned broker.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.broker.local import LocalKafka, pinned_kafka_version

ROOT = Path(__file__).resolve().parents[2]


async def _create(bootstrap: str, *names: str, partitions: int = 2) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def _consume(bootstrap: str, topic: str, until, timeout_s: float) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"compat-{uuid.uuid4().hex}", enable_auto_commit=False)
    await consumer.start()
    got: list = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not until(got):
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                got.extend(records)
    finally:
        await consumer.stop()
    return got


def test_pinned_version_is_what_runs(kafka_broker: LocalKafka) -> None:
    assert kafka_broker.status().running
    assert kafka_broker.version == pinned_kafka_version() == "4.4.0"


def test_aiokafka_produces_and_consumes(bootstrap: str) -> None:
    topic = f"compat-aiokafka-{uuid.uuid4().hex[:8]}"

    async def run() -> list:
        await _create(bootstrap, topic)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for i in range(50):
                await producer.send_and_wait(topic, key=f"k{i % 5}".encode(), value=f"v{i}".encode())
        finally:
            await producer.stop()
        return await _consume(bootstrap, topic, lambda got: len(got) >= 50, timeout_s=30)

    records = asyncio.run(run())
    assert sorted(r.value.decode() for r in records) == sorted(f"v{i}" for i in range(50))


def test_faust_worker_with_table(bootstrap: str, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic_in, topic_out = f"compat-in-{suffix}", f"compat-out-{suffix}"
    asyncio.run(_create(bootstrap, topic_in, topic_out))
    env = dict(os.environ, COMPAT_APP_ID=f"compat-{suffix}", COMPAT_BOOTSTRAP=bootstrap,
               COMPAT_DATADIR=str(tmp_path / "faust"), COMPAT_IN=topic_in, COMPAT_OUT=topic_out,
               PYTHONPATH=str(ROOT))
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "tests.integration.faust_compat_app", "worker", "-l", "info"],
                              env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        async def run() -> list:
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
            await producer.start()
            try:
                for key in ["a", "b", "a", "a", "b"]:
                    await producer.send_and_wait(topic_in, key=key.encode(), value=b"x")
            finally:
                await producer.stop()
            want = {("a", "3"), ("b", "2")}
            return await _consume(
                bootstrap, topic_out,
                lambda got: want <= {(r.key.decode(), r.value.decode().strip('"')) for r in got},
                timeout_s=90)

        records = asyncio.run(run())
        pairs = [(r.key.decode(), r.value.decode().strip('"')) for r in records]
        assert sorted(pairs) == [("a", "1"), ("a", "2"), ("a", "3"), ("b", "1"), ("b", "2")], (
            (tmp_path / "worker.log").read_text()[-3000:])
        assert worker.poll() is None, "the faust worker died"
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
