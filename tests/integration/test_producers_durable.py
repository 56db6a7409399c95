"""Every producer of the project is idempotent with ``acks=all`` (design.md, "Kafka topics"): ingest's, the
processor's (faust's own producer, idempotent by itself only inside a transaction), redrive's and the
reconciler's, each as its role builds it, started against the real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka import AIOKafkaProducer

from streams.config import Settings


def durable(producer: AIOKafkaProducer) -> bool:
    """acks=all (-1) and an idempotent producer (aiokafka gives one a transaction manager for its producer id)."""
    return producer._sender._acks == -1 and producer._txn_manager is not None


def test_every_producer_is_idempotent_with_acks_all(bootstrap: str, tmp_path: Path) -> None:
    from streams.deadletters.topics import Appender
    from streams.ingest.metrics import IngestMetrics
    from streams.ingest.producer import DurableProducer
    from streams.processor.app import create_app
    from streams.reconcile.run import FindingProducer

    settings = Settings(data_dir=tmp_path, kafka_bootstrap=bootstrap)

    async def check() -> dict[str, bool]:
        found = {}
        ingest = DurableProducer(bootstrap, tmp_path / "spool", IngestMetrics())
        assert await ingest._connect()
        found["ingest"] = durable(ingest.producer)
        await ingest.producer.stop()
        async with Appender(settings) as redrive:
            found["redrive"] = durable(redrive.producer)
        reconciler = FindingProducer(settings)
        await reconciler.start()
        found["reconciler"] = durable(reconciler._producer)
        await reconciler._producer.stop()
        processor = create_app(settings).producer._new_producer()
        await processor.start()
        found["processor"] = durable(processor)
        await processor.stop()
        return found

    assert asyncio.run(check()) == {"ingest": True, "redrive": True, "reconciler": True, "processor": True}
