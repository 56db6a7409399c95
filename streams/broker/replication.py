"""How many copies of every topic a deployment keeps, and how many must have a write before it counts.

design.md, "Kafka topics": on a cluster every topic has min(3, brokers) replicas and ``min.insync.replicas``
one less (at least 1), so an ``acks=all`` write survives the loss of any one broker, and one broker down
leaves every topic writable. Pure rules, used by provisioning (topics.py) and the local cluster (local.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def internal_topic_configs(replication: int) -> dict[str, str]:
    """The broker settings that give the internal topics (consumer offsets, transaction and share state)
    ``replication`` replicas and the broker-wide ``min.insync.replicas`` one less (at least 1). Pure."""
    r, isr = str(replication), str(min_insync_replicas(replication))
    return {"default.replication.factor": r, "min.insync.replicas": isr,
            "offsets.topic.replication.factor": r,
            "transaction.state.log.replication.factor": r, "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": r, "share.coordinator.state.topic.min.isr": isr}


def replication_for(brokers: int, override: int | None = None) -> int:
    """The replication of every topic: ``override`` (ENX_KAFKA_REPLICATION) when given, else min(3, brokers),
    and at least 1. Pure."""
    return max(1, override if override else min(3, brokers))


def min_insync_replicas(replication: int) -> int:
    """``min.insync.replicas`` for a topic of ``replication`` replicas: one less, at least 1. Pure."""
    return max(1, replication - 1)


# Every producer of the project (ingest, the processor's faust producer, redrive, the reconciler): a record
# counts once every in-sync replica has it, and a send retried after a leader change is written once.
DURABLE_PRODUCER: dict[str, Any] = {"acks": "all", "enable_idempotence": True}


def reassignment(topic: str, replicas: Mapping[int, list[int]], want: int, brokers: list[int]) -> dict:
    """A kafka-reassign-partitions.sh plan giving every partition of ``topic`` ``want`` replicas: each keeps
    its replicas (its leader first) and gains brokers round-robin from ``brokers``. Pure."""
    plan = []
    for i, partition in enumerate(sorted(replicas)):
        have = list(replicas[partition])
        spare = [b for b in sorted(brokers) if b not in have]
        spare = spare[i % len(spare):] + spare[:i % len(spare)] if spare else []
        plan.append({"topic": topic, "partition": partition, "replicas": (have + spare)[:max(want, 1)]})
    return {"version": 1, "partitions": plan}


def replication_findings(topic: str, replicas: Mapping[int, list[int]], min_isr: str | None, want: int,
                         brokers: list[int]) -> list[str]:
    """What an existing topic (its replicas per partition, its ``min.insync.replicas``) holds against the
    deployment's replication ``want``, each with the command that fixes it. Fewer replicas than ``want``: a
    broker's loss can lose acknowledged records; a ``min.insync.replicas`` other than one less than the replicas
    it has: either an ``acks=all`` write acknowledged by a leader alone, or a topic no longer writable once one
    broker is down. Usable either way, so these are warnings. Pure."""
    out = []
    have = min((len(r) for r in replicas.values()), default=0)
    if replicas and have < want:
        plan = json.dumps(reassignment(topic, replicas, want, brokers), separators=(",", ":"))
        out.append(f"warning: topic {topic} has {have} replica(s), the deployment expects {want} "
                   f"(min(3, brokers) or ENX_KAFKA_REPLICATION): a broker's loss can lose what it acknowledged. "
                   f"Save this plan as reassign.json and run kafka-reassign-partitions.sh --bootstrap-server "
                   f"<broker> --reassignment-json-file reassign.json --execute: {plan}; then "
                   f"{_set_isr(topic, min_insync_replicas(want))}")
    isr = str(min_insync_replicas(max(have, 1)))
    if replicas and min_isr != isr:
        out.append(f"warning: topic {topic} has min.insync.replicas={min_isr}, its {have} replica(s) want {isr} "
                   f"(one less, at least 1): {_set_isr(topic, isr)}")
    return out


def _set_isr(topic: str, isr: int | str) -> str:
    return (f"set it with kafka-configs.sh --bootstrap-server <broker> --alter --entity-type topics --entity-name "
            f"{topic} --add-config min.insync.replicas={isr}")
