"""How many copies of every topic a deployment keeps, and how many must have a write before it counts.

design.md, "Kafka topics": on a cluster every topic has min(3, brokers) replicas and ``min.insync.replicas``
one less (at least 1), so an ``acks=all`` write survives the loss of any one broker, and one broker down
leaves every topic writable. Pure rules, used by provisioning (topics.py) and the local cluster (local.py).
"""

from __future__ import annotations


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
