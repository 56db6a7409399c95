"""Fixtures shared by every test: one real Kafka broker per test session.

The broker is Apache Kafka from the jars the pom pins, started on free ports in a temporary folder,
shared by all integration tests and stopped at the end. Unit tests never ask for it, so they run
without Java.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams import config
from streams.broker.local import LocalKafka, free_port


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    data_dir: Path = tmp_path_factory.mktemp("kafka-data")
    broker = LocalKafka(data_dir, config.default_cache_dir(), port=free_port())
    broker.start(timeout_s=90)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def bootstrap(kafka_broker: LocalKafka) -> str:
    return kafka_broker.bootstrap
