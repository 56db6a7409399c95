"""The replication rules (streams/broker/replication.py): pure, no broker."""

from __future__ import annotations

import json

import pytest

from streams.broker.replication import (internal_topic_configs, min_insync_replicas, reassignment,
                                        replication_findings, replication_for)


@pytest.mark.parametrize(("brokers", "override", "want"), [(1, None, 1), (2, None, 2), (3, None, 3), (5, None, 3),
                                                           (5, 2, 2), (1, 3, 3)])
def test_replication_is_min_3_brokers_unless_overridden(brokers: int, override: int | None, want: int) -> None:
    assert replication_for(brokers, override) == want


def test_min_insync_replicas_is_one_less_at_least_one() -> None:
    assert [min_insync_replicas(r) for r in (1, 2, 3, 5)] == [1, 1, 2, 4]


def test_the_internal_topics_of_a_three_broker_cluster() -> None:
    configs = internal_topic_configs(3)
    assert configs["offsets.topic.replication.factor"] == "3"
    assert configs["transaction.state.log.replication.factor"] == "3"
    assert configs["transaction.state.log.min.isr"] == "2" and configs["min.insync.replicas"] == "2"


def test_a_reassignment_keeps_each_partitions_replicas_and_spreads_the_new_ones() -> None:
    plan = reassignment("t", {0: [1], 1: [2], 2: [3], 3: [1]}, 3, [1, 2, 3])
    assert plan["version"] == 1
    replicas = {p["partition"]: p["replicas"] for p in plan["partitions"]}
    assert all(replicas[p][0] == leader for p, leader in ((0, 1), (1, 2), (2, 3), (3, 1)))  # the leader stays
    assert all(sorted(r) == [1, 2, 3] for r in replicas.values())
    assert [r[1] for r in replicas.values()] != [replicas[0][1]] * 4  # not every follower on one broker


def test_findings_of_a_topic_as_the_rules_want_are_none() -> None:
    assert replication_findings("t", {0: [1, 2, 3], 1: [2, 3, 1]}, "2", 3, [1, 2, 3]) == []
    assert replication_findings("t", {0: [1]}, "1", 1, [1]) == []
    # more replicas than asked is fine; its min.insync.replicas follows what it has
    assert replication_findings("t", {0: [1, 2, 3]}, "2", 2, [1, 2, 3]) == []


def test_too_few_replicas_is_a_warning_with_the_plan_and_the_isr_command() -> None:
    [warning] = replication_findings("t", {0: [1], 1: [2]}, "1", 3, [1, 2, 3])
    assert warning.startswith("warning: topic t has 1 replica(s), the deployment expects 3")
    plan = json.loads(warning.split("--execute: ", 1)[1].split("; then", 1)[0])
    assert plan == reassignment("t", {0: [1], 1: [2]}, 3, [1, 2, 3])
    assert warning.endswith("--entity-name t --add-config min.insync.replicas=2")


@pytest.mark.parametrize("isr", ["1", "3", None])
def test_a_min_insync_replicas_off_the_rule_is_a_warning(isr: str | None) -> None:
    [warning] = replication_findings("t", {0: [1, 2, 3]}, isr, 3, [1, 2, 3])
    assert f"has min.insync.replicas={isr}, its 3 replica(s) want 2" in warning
    assert "kafka-configs.sh --bootstrap-server <broker> --alter --entity-type topics --entity-name t " \
           "--add-config min.insync.replicas=2" in warning
