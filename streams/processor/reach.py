"""Whether the broker answers this worker now: the clock of an ingest instance's lease (watermarks.py)
runs only while it does, so a broker outage is never taken for an ingest instance gone for good.

A consumer of its own (no group, nothing read): faust's consumer thread is not asked, so a request that
hangs while the broker is away holds up none of faust's fetches and commits.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger("streams.processor")
TIMEOUT_S = 1.5


class BrokerProbe:
    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._consumer: AIOKafkaConsumer | None = None

    async def answers(self, timeout_s: float = TIMEOUT_S) -> bool:
        """True if the broker gave the log's end offset of partition 0 within ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                if self._consumer is None:
                    consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                                group_id=None, request_timeout_ms=int(timeout_s * 1000) + 500)
                    try:
                        await consumer.start()
                    except BaseException:
                        await consumer.stop()
                        raise
                    self._consumer = consumer
                await self._consumer.end_offsets([TopicPartition(self.topic, 0)])
            return True
        except Exception as exc:  # noqa: BLE001 - any failure means: not answering now
            log.debug("the broker did not answer the probe: %r", exc)
            return False

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
