"""How far a consumer group's commits are behind the end of a topic, read from the real broker."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


async def behind(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """Per partition of ``topic``, the records past ``group``'s committed offset (all of them if none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        committed = {tp.partition: m.offset for tp, m in (await admin.list_consumer_group_offsets(group)).items()
                     if tp.topic == topic and m.offset >= 0}
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return {tp.partition: end - committed.get(tp.partition, 0) for tp, end in ends.items()}
    finally:
        await consumer.stop()
        await admin.close()
