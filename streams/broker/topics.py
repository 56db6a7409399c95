"""Provisioning of the contract topics, run by every role at startup.

The contract (design.md, "Kafka topics") fixes what each topic keeps: the webhook log, dead letters and
alerts are kept forever (``retention.ms=-1``), the session snapshots are compacted; the webhook log and the
dead-letter topic take records of up to ``max.message.bytes`` (:mod:`streams.broker.limits`: a webhook's
record is its raw body and the parsed fields again). Provisioning is
idempotent: a topic that exists with the contract's configuration is left alone; one whose
configuration contradicts the contract (a finite retention on the event log, a sessions topic that is
not compacted, another partition count) is reported with what to do, never silently used, because the
event log is the product's source of truth.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.broker.limits import MAX_MESSAGE_BYTES
from streams.broker.replication import min_insync_replicas, replication_findings, replication_for
from streams.config import Settings

KEPT_FOREVER = {"retention.ms": "-1", "cleanup.policy": "delete"}
COMPACTED = {"cleanup.policy": "compact"}
SIZED = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
# Configs where an existing topic may hold more than the contract asks (a larger record limit is fine).
AT_LEAST = frozenset({"max.message.bytes"})

# The contract topics by short name; Settings.topic() adds the prefix and the version suffix.
CONTRACT_CONFIGS: Mapping[str, Mapping[str, str]] = {
    "webhooks": {**KEPT_FOREVER, **SIZED},
    "deadletter": {**KEPT_FOREVER, **SIZED},
    "sessions": COMPACTED,
    "alerts": KEPT_FOREVER,
    "reconcile": KEPT_FOREVER,  # the reconciler's findings; the processor consumes them beside the log
}

# Topics the processor's state tables are fed from: their partition count must be the deployment's.
CO_PARTITIONED = frozenset({"webhooks", "reconcile"})

TOPIC_ALREADY_EXISTS = 36
INVALID_REPLICATION_FACTOR = 38
# Kafka's own topics, created by the brokers from their settings (offsets.topic.replication.factor,
# transaction.state.log.replication.factor and .min.isr): checked when they exist, never created here.
INTERNAL_TOPICS = ("__consumer_offsets", "__transaction_state")


class TopicConflict(RuntimeError):
    """An existing topic contradicts the contract; the message says which setting and what to do."""


@dataclasses.dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: Mapping[str, str]
    # The webhook log is the state tables' source: their changelogs must have its partition count.
    partitions_must_match: bool = False


def contract_topics(settings: Settings) -> list[TopicSpec]:
    """The contract topics this deployment needs, with their configuration."""
    return [TopicSpec(settings.topic(short), settings.partitions, dict(configs),
                      partitions_must_match=(short in CO_PARTITIONED))
            for short, configs in CONTRACT_CONFIGS.items()]


def contradictions(spec: TopicSpec, partitions: int, configs: Mapping[str, str]) -> list[str]:
    """What an existing topic (its partition count and configs) gets wrong against ``spec``. Pure."""
    problems = []
    if spec.partitions_must_match and partitions != spec.partitions:
        problems.append(f"has {partitions} partitions, the deployment expects {spec.partitions} "
                        f"(ENX_PARTITIONS); the state tables' changelogs must match the source topic")
    for key, want in spec.configs.items():
        have = configs.get(key)
        if key in AT_LEAST:
            continue  # a shortfall is a warning (:func:`shortfalls`), not a contradiction
        if have != want:
            problems.append(f"has {key}={have}, the contract needs {key}={want}")
    return problems


def shortfalls(spec: TopicSpec, configs: Mapping[str, str]) -> list[str]:
    """What an existing topic holds below the contract's minimum (``max.message.bytes`` of a topic created
    by an earlier version): usable, since a record over its limit is refused for itself (413), but worth
    raising. Pure."""
    out = []
    for key in sorted(AT_LEAST & set(spec.configs)):
        have, want = configs.get(key), spec.configs[key]
        if not _at_least(have, want):
            out.append(f"warning: topic {spec.name} has {key}={have}, below the {want} the contract sets: raise it "
                       f"with kafka-configs.sh --bootstrap-server <broker> --alter --entity-type topics "
                       f"--entity-name {spec.name} --add-config {key}={want}")
    return out


def _at_least(have: str | None, want: str) -> bool:
    try:
        return have is not None and int(have) >= int(want)
    except ValueError:
        return False


async def _replicas(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[int, list[int]]]:
    """Each existing topic's replicas (broker ids) per partition."""
    described = await admin.describe_topics(names)
    return {t["topic"]: {p["partition"]: list(p["replicas"]) for p in t["partitions"]}
            for t in described if t["error_code"] == 0}


async def _existing(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    return {name: len(partitions) for name, partitions in (await _replicas(admin, names)).items()}


async def _configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    if not names:
        return {}
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            _error, _message, _type, name, entries = resource[:5]
            out[name] = {entry[0]: entry[1] for entry in entries}
    return out


async def _described(admin: AIOKafkaAdminClient, names: list[str],
                     timeout_s: float = 30.0) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """Partition counts and configs, polled until every topic just created shows in the metadata."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        existing = await _existing(admin, names)
        configs = await _configs(admin, [n for n in names if n in existing])
        complete = all(existing.get(n) and configs.get(n) for n in names)
        if complete or asyncio.get_running_loop().time() > deadline:
            return existing, configs
        await asyncio.sleep(0.2)  # metadata propagation poll, bounded by the deadline


async def describe_topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    """Each named topic's configuration as the broker reports it (for checks and tests)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await _configs(admin, names)
    finally:
        await admin.close()


async def ensure_topics(bootstrap: str, specs: list[TopicSpec], replication: int | None = None) -> list[str]:
    """Create the missing topics, check the existing ones; returns one line per topic for the log.

    ``replication`` (ENX_KAFKA_REPLICATION) overrides min(3, number of brokers); every topic created gets
    ``min.insync.replicas`` one less (at least 1). Raises :class:`TopicConflict` listing every existing topic
    that contradicts its spec; an existing topic (or an internal one, :data:`INTERNAL_TOPICS`) with fewer
    replicas or another ``min.insync.replicas`` is reported as a warning with the command that fixes it.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        brokers = sorted(b["node_id"] for b in cluster["brokers"])
        replication = replication_for(len(brokers), replication)
        durability = {"min.insync.replicas": str(min_insync_replicas(replication))}
        names = [s.name for s in specs]
        existing = await _existing(admin, names)
        missing = [s for s in specs if s.name not in existing]
        report = []
        if missing:
            response = await admin.create_topics(
                [NewTopic(s.name, s.partitions, replication, topic_configs={**s.configs, **durability})
                 for s in missing])
            for topic_error in response.to_object().get("topic_errors", []):
                code = topic_error["error_code"]
                if code == INVALID_REPLICATION_FACTOR:
                    raise TopicConflict(f"could not create topic {topic_error['topic']} with {replication} "
                                        f"replicas: the cluster has {len(brokers)} broker(s) up. Start the "
                                        f"others, or set ENX_KAFKA_REPLICATION to at most {len(brokers)}")
                if code not in (0, TOPIC_ALREADY_EXISTS):
                    raise TopicConflict(f"could not create topic {topic_error['topic']}: error {code} "
                                        f"{topic_error.get('error_message') or ''}".strip())
            report += [f"created {s.name} ({s.partitions} partitions, {replication} replica{'s' * (replication > 1)}, "
                       f"{_fmt({**s.configs, **durability})})" for s in missing]
        existing, configs = await _described(admin, names)
        report += await _replication_warnings(admin, [s.name for s in specs if s not in missing], replication,
                                              brokers)
        problems = []
        for spec in specs:
            issues = contradictions(spec, existing.get(spec.name, 0), configs.get(spec.name, {}))
            if issues:
                problems.append(f"topic {spec.name} " + "; ".join(issues))
            elif spec not in missing:
                report.append(f"checked {spec.name}")
                report += shortfalls(spec, configs.get(spec.name, {}))
        if problems:
            raise TopicConflict(
                "existing topics contradict the contract, so they are not used:\n  - " + "\n  - ".join(problems)
                + "\nAlter them (kafka-configs.sh --bootstrap-server <broker> --alter --entity-type topics "
                  "--entity-name <topic> --add-config <key>=<value>) or use another ENX_TOPIC_PREFIX; "
                  "never shorten the retention of the event log.")
        return report
    finally:
        await admin.close()


async def _replication_warnings(admin: AIOKafkaAdminClient, names: list[str], replication: int,
                                brokers: list[int]) -> list[str]:
    """The replication findings of the named existing topics and of Kafka's internal topics that exist."""
    replicas = await _replicas(admin, [*names, *INTERNAL_TOPICS])
    configs = await _configs(admin, list(replicas))
    return [line for name, partitions in replicas.items()
            for line in replication_findings(name, partitions, configs.get(name, {}).get("min.insync.replicas"),
                                             replication, brokers)]


def _fmt(configs: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in configs.items())
