"""Kafka refuses the processor's records: the worker stops with an error and commits nothing past them;
once Kafka takes them again, a new worker publishes every change (nothing lost).

The sessions topic is created with a ``max.message.bytes`` smaller than any batch of snapshots, so the
broker refuses every produce request to it (MESSAGE_TOO_LARGE, which the producer does not retry), as it
would a topic deleted or denied to the processor. The alerts, the changelogs and the webhook log itself
stay writable.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from streams.broker.topics import COMPACTED, TopicSpec, contract_topics, ensure_topics
from streams.config import Settings
from tests.faults.record import record_result
from tests.integration.test_processor import (APP, PARTITIONS, Workers, commits_reach_the_end, confs, event,
                                              produce, read)
from tests.offsets import behind
from tests.topic_configs import alter_topic_configs


def sessions_refusing(settings: Settings) -> list[TopicSpec]:
    return [TopicSpec(s.name, s.partitions, {**s.configs, "max.message.bytes": "64"}, s.partitions_must_match)
            if s.name == settings.topic("sessions") else s for s in contract_topics(settings)]


def test_processor_records_refused_by_kafka(bootstrap: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=bootstrap, topic_prefix=f"r{uuid.uuid4().hex[:8]}.",
                        partitions=PARTITIONS)
    asyncio.run(ensure_topics(bootstrap, sessions_refusing(settings)))
    started = time.monotonic()
    names = confs("s-", 3)
    now = time.time()
    produce(settings, [event("roomdrop", c, now, now) for c in names])
    group, webhooks = f"{settings.topic_prefix}processor", settings.topic("webhooks")
    workers = Workers(settings, tmp_path)
    try:
        workers.start(1)
        first_log = workers.failed(0)
        code = workers.procs[0].returncode
        assert "could not be written to Kafka" in first_log, first_log[-3000:]
        left = asyncio.run(behind(bootstrap, group, webhooks, PARTITIONS))
        assert sum(left.values()) == len(names), f"committed past refused snapshots: {left}\n{first_log[-3000:]}"

        # Kafka takes the snapshots again: a new worker re-processes from the commit and publishes them all
        asyncio.run(alter_topic_configs(bootstrap, settings.topic("sessions"), COMPACTED,
                                        lambda c: c.get("max.message.bytes") not in (None, "64")))
        workers.start(1)
        keys = {f"{APP}/{c}".encode() for c in names}

        def all_published(got: list) -> bool:
            workers.check_alive()
            return keys <= {r.key for r in got}

        got = read(settings, "sessions", all_published, 60)
        assert all_published(got), workers.logs()
        commits_reach_the_end(workers)
    finally:
        codes = workers.stop()
    assert codes == [0], workers.logs()
    record_result("processor output refused", events=len(names), duration_s=round(time.monotonic() - started, 1),
                  first_exit_code=code, lost=0,
                  detail="snapshots refused by the broker (max.message.bytes 64): the worker stopped, nothing "
                         "committed; after the topic took them again a new worker published every session")
