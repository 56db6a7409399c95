"""Topic provisioning against the real broker, configurations read back through the admin API."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams import config
from streams.broker.topics import TopicConflict, contract_topics, describe_topic_configs, ensure_topics
from tests.topic_configs import alter_topic_configs


def _settings(bootstrap: str, partitions: int = 3) -> config.Settings:
    return config.Settings(kafka_bootstrap=bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
                           partitions=partitions)


def test_creates_the_contract_topics_with_their_configs(bootstrap: str) -> None:
    settings = _settings(bootstrap)
    report = asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))
    names = [settings.topic(n) for n in ("webhooks", "deadletter", "sessions", "alerts", "reconcile")]
    assert [line.split()[:2] for line in report] == [["created", n] for n in names]

    configs = asyncio.run(describe_topic_configs(bootstrap, names))
    for short in ("webhooks", "deadletter", "alerts", "reconcile"):
        assert configs[settings.topic(short)]["retention.ms"] == "-1"
        assert configs[settings.topic(short)]["cleanup.policy"] == "delete"
    assert configs[settings.topic("sessions")]["cleanup.policy"] == "compact"

    async def partitions() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
        finally:
            await admin.close()

    assert asyncio.run(partitions()) == {n: 3 for n in names}


def test_is_idempotent(bootstrap: str) -> None:
    settings = _settings(bootstrap)
    asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))
    again = asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))
    assert all(line.startswith("checked ") for line in again) and len(again) == 5


def test_contradicting_topic_is_reported_not_used(bootstrap: str) -> None:
    settings = _settings(bootstrap)
    asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))

    asyncio.run(alter_topic_configs(bootstrap, settings.topic("webhooks"), {"retention.ms": "3600000"},
                                    lambda c: c.get("retention.ms") == "3600000"))
    with pytest.raises(TopicConflict, match=r"webhooks\.v1 has retention\.ms=3600000.*retention\.ms=-1"):
        asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))


def test_partition_count_of_the_event_log_must_match(bootstrap: str) -> None:
    settings = _settings(bootstrap, partitions=2)
    asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))
    with pytest.raises(TopicConflict, match="has 2 partitions, the deployment expects 4") as err:
        asyncio.run(ensure_topics(bootstrap, contract_topics(settings.with_overrides(partitions=4))))
    # the processor consumes the reconciler's findings beside the log: co-partitioned too
    assert f"{settings.topic('reconcile')} has 2 partitions" in str(err.value)
    assert f"{settings.topic('alerts')} has" not in str(err.value)


def test_a_log_from_before_the_size_budget_is_used_with_a_warning(bootstrap: str) -> None:
    """Topics created without ``max.message.bytes`` (an earlier version: the broker's 1 MiB) keep working;
    provisioning says how to raise the limit. One above the contract's is fine as it is."""
    from streams.broker.topics import TopicSpec

    settings = _settings(bootstrap)
    older = [TopicSpec(s.name, s.partitions, {k: v for k, v in s.configs.items() if k != "max.message.bytes"},
                       s.partitions_must_match) for s in contract_topics(settings)]
    asyncio.run(ensure_topics(bootstrap, older))
    asyncio.run(alter_topic_configs(bootstrap, settings.topic("deadletter"),
                                    {"retention.ms": "-1", "cleanup.policy": "delete", "max.message.bytes": "20000000"},
                                    lambda c: c.get("max.message.bytes") == "20000000"))
    report = asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))
    warnings = [line for line in report if line.startswith("warning")]
    assert len(warnings) == 1 and settings.topic("webhooks") in warnings[0]
    assert "--add-config max.message.bytes=8388608" in warnings[0]
    assert sum(line.startswith("checked ") for line in report) == 5
