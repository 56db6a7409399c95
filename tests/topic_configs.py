"""Changing a topic's configuration on the real broker, and waiting until the broker reports the change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.broker.topics import describe_topic_configs


async def alter_topic_configs(bootstrap: str, topic: str, configs: Mapping[str, str],
                              applied: Callable[[dict[str, str]], bool], timeout_s: float = 30) -> None:
    """Replace ``topic``'s dynamic configs with ``configs`` (those not named return to their defaults), until
    ``applied(configs as described)`` holds. The change reaches the brokers through the metadata log, and a
    topic created just before may not be known yet: the request is repeated (it is idempotent) until then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        while True:
            responses = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                                  configs=dict(configs))])
            errors = [res for resp in responses for res in resp.resources if res[0] != 0]
            described = (await describe_topic_configs(bootstrap, [topic])).get(topic, {})
            if not errors and applied(described):
                return
            assert loop.time() < deadline, f"{topic}: configs {dict(configs)} not applied: {errors or described}"
            await asyncio.sleep(0.2)  # metadata propagation poll, bounded by the deadline
    finally:
        await admin.close()
