"""The processor's names on the broker (its faust app id, consumer group, internal topics), without faust.

Kept apart from :mod:`streams.processor.app` so what only needs the names (``enx-streams status``, the
rebuild's checks) does not import faust (about 1.4 s).
"""

from __future__ import annotations

import os

from streams.broker.topics import COMPACTED, TopicSpec
from streams.config import Settings
from streams.processor import rules


def app_id(settings: Settings) -> str:
    """The processor's faust app id: its consumer group and the prefix of its changelog topics."""
    return os.environ.get("ENXTEST_PROCESSOR_GROUP") or f"{settings.topic_prefix}processor"


def published_alerts_topic(settings: Settings) -> str:
    """Where the processor publishes its alerts: the alerts topic, or a rebuild's own (ENXREBUILD_ALERTS_TOPIC,
    set by ``enx-streams rebuild`` for its processors)."""
    return os.environ.get("ENXREBUILD_ALERTS_TOPIC") or settings.topic("alerts")


def command_topic(settings: Settings) -> str:
    """The SLA watch's commands to the owning agent (internal; same partitions and keys as the log)."""
    return f"{app_id(settings)}-commands"


def changelog_topic(settings: Settings, table: str) -> str:
    """The changelog faust keeps ``table`` in (faust's naming: ``<app id>-<table>-changelog``)."""
    return f"{app_id(settings)}-{table}-changelog"


def internal_topics(settings: Settings) -> list[TopicSpec]:
    """The processor's own topics, provisioned beside the contract's (so with its replication and
    ``min.insync.replicas``, not faust's default of one replica): the command topic and the tables' compacted
    changelogs, each with the log's partition count (a table's partition is its source's)."""
    commands = TopicSpec(command_topic(settings), settings.partitions,
                         {"cleanup.policy": "delete", "retention.ms": str(7 * 86400 * 1000)}, partitions_must_match=True)
    return [commands, *(TopicSpec(changelog_topic(settings, t), settings.partitions, dict(COMPACTED),
                                  partitions_must_match=True) for t in rules.TABLES)]
