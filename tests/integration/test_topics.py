"""Topic provisioning against the real broker, configurations read back through the admin API."""

from __future__ import annotations

import asyncio
import json
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


async def _replicas_and_isr(bootstrap: str, names: list[str]) -> dict[str, tuple[set[int], str]]:
    """Each topic's replica counts (one per partition) and its min.insync.replicas, as the cluster reports them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    configs = await describe_topic_configs(bootstrap, names)
    return {t["topic"]: ({len(p["replicas"]) for p in t["partitions"]}, configs[t["topic"]]["min.insync.replicas"])
            for t in described}


def test_on_a_cluster_every_topic_has_three_replicas_and_two_in_sync(kafka_cluster) -> None:
    """design.md, "Kafka topics": min(3, brokers) replicas and min.insync.replicas one less, for the contract
    topics, the processor's changelogs and command topic (worker provisioning), and Kafka's internal topics (the
    local cluster's broker settings)."""
    from streams.processor.app import internal_topics

    bootstrap = kafka_cluster.bootstrap
    settings = _settings(bootstrap)
    specs = contract_topics(settings) + internal_topics(settings)
    report = asyncio.run(ensure_topics(bootstrap, specs))
    assert all(line.startswith("created ") and "3 replicas" in line and "min.insync.replicas=2" in line
               for line in report), report

    async def commit_once() -> None:  # creates __consumer_offsets, with the brokers' settings
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"g{uuid.uuid4().hex[:6]}",
                                    enable_auto_commit=False)
        tp = TopicPartition(settings.topic("webhooks"), 0)
        consumer.assign([tp])
        await consumer.start()
        try:
            await consumer.commit({tp: 0})
        finally:
            await consumer.stop()

    asyncio.run(commit_once())
    names = [s.name for s in specs] + ["__consumer_offsets"]
    assert asyncio.run(_replicas_and_isr(bootstrap, names)) == {n: ({3}, "2") for n in names}
    # and they are checked again without a word
    assert all(line.startswith("checked ") for line in asyncio.run(ensure_topics(bootstrap, specs)))


def test_replication_can_be_overridden_and_a_short_one_is_reported_with_its_fix(kafka_cluster) -> None:
    """ENX_KAFKA_REPLICATION=2: two replicas, one in sync. Checked later with the cluster's three, the topics are
    used, with a warning giving the reassignment plan and the min.insync.replicas command."""
    bootstrap = kafka_cluster.bootstrap
    settings = _settings(bootstrap).with_overrides(kafka_replication="2")
    assert settings.kafka_replication == 2
    asyncio.run(ensure_topics(bootstrap, contract_topics(settings), settings.kafka_replication))
    names = [s.name for s in contract_topics(settings)]
    assert asyncio.run(_replicas_and_isr(bootstrap, names)) == {n: ({2}, "1") for n in names}

    report = asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))
    warnings = [line for line in report if line.startswith("warning")]
    log = settings.topic("webhooks")
    assert len(warnings) == 5 and sum(line.startswith("checked ") for line in report) == 5
    [about_log] = [w for w in warnings if f"topic {log} " in w]
    assert "has 2 replica(s), the deployment expects 3" in about_log
    assert "kafka-reassign-partitions.sh --bootstrap-server <broker> --reassignment-json-file" in about_log
    plan = json.loads(about_log.split("--execute: ", 1)[1].split("; then", 1)[0])
    assert sorted(p["partition"] for p in plan["partitions"]) == [0, 1, 2]
    assert all(len(set(p["replicas"])) == 3 and p["topic"] == log for p in plan["partitions"])
    assert f"--entity-name {log} --add-config min.insync.replicas=2" in about_log


def test_a_min_insync_replicas_off_the_rule_is_reported_with_its_fix(kafka_cluster) -> None:
    bootstrap = kafka_cluster.bootstrap
    settings = _settings(bootstrap)
    asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))
    alerts = settings.topic("alerts")
    asyncio.run(alter_topic_configs(bootstrap, alerts, {"retention.ms": "-1", "cleanup.policy": "delete",
                                                        "min.insync.replicas": "3"},
                                    lambda c: c.get("min.insync.replicas") == "3"))
    report = asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))
    assert [line for line in report if line.startswith("warning")] == [
        f"warning: topic {alerts} has min.insync.replicas=3, its 3 replica(s) want 2 (one less, at least 1): set it "
        f"with kafka-configs.sh --bootstrap-server <broker> --alter --entity-type topics --entity-name {alerts} "
        f"--add-config min.insync.replicas=2"]


def test_more_replicas_than_brokers_up_is_said_plainly(bootstrap: str) -> None:
    settings = _settings(bootstrap)
    with pytest.raises(TopicConflict, match="with 3 replicas: the cluster has 1 broker.*ENX_KAFKA_REPLICATION to at "
                                            "most 1"):
        asyncio.run(ensure_topics(bootstrap, contract_topics(settings), 3))
