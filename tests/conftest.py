"""Fixtures shared by every test: one real Kafka broker per test session, and a three-broker cluster for the
tests that ask for it.

The broker is Apache Kafka from the jars the pom pins, started on free ports in a temporary folder,
shared by all integration tests and stopped at the end. Unit tests never ask for it, so they run
without Java. The cluster (``kafka_cluster``) is started by the first test that asks for it, only then.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import os

import pytest
from hypothesis import settings as hypothesis_settings

from streams import config
from streams.broker.local import LocalKafka, LocalKafkaCluster, free_port

# Property tests: the same examples on every run and no per-example time limit (a busy 2-core CI machine
# is no reason to fail), so a red run is a finding, never noise; HYPOTHESIS_PROFILE=explore searches anew.
hypothesis_settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
hypothesis_settings.register_profile("explore", deadline=None, max_examples=2000)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker of the test's own, for tests that stop it (the shared one must stay up for the others)."""
    broker = LocalKafka(tmp_path / "broker", config.default_cache_dir(), port=free_port())
    broker.start(timeout_s=90)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def _cluster_of_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    cluster = LocalKafkaCluster(tmp_path_factory.mktemp("kafka-cluster"), config.default_cache_dir(), brokers=3,
                                ports=[free_port() for _ in range(3)])
    try:
        cluster.start(timeout_s=180)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def kafka_cluster(_cluster_of_the_session: LocalKafkaCluster) -> LocalKafkaCluster:
    """Three brokers on loopback (a KRaft quorum of three, each node's storage of its own), shared by the tests
    that ask for it, every broker running when a test begins: a test that stopped one and failed is no reason
    for the next to start on a degraded cluster."""
    _cluster_of_the_session.start(timeout_s=180)
    return _cluster_of_the_session
