"""The worker's metrics: the lag and last-commit rules (pure), the setting, and a port already taken."""

from __future__ import annotations

import socket

import pytest

from streams import config
from streams.config import Settings
from streams.worker_metrics import CommitClock, MetricsPortError, WorkerMetrics, lag_of, role_groups


def test_lag_counts_from_the_commit_else_the_start_and_is_never_negative() -> None:
    ends = {("t", 0): 10, ("t", 1): 7, ("t", 2): 5, ("u", 0): 0}
    committed = {("t", 0): 4, ("t", 2): 6}  # partition 2: a commit seen before its end moved
    starts = {("t", 0): 5, ("t", 1): 3, ("u", 0): 0}  # never committed (t1), or below what retention kept (t0):
    assert lag_of(ends, committed, starts) == {("t", 0): 5, ("t", 1): 4, ("t", 2): 0, ("u", 0): 0}  # from the start


def test_the_last_commit_is_when_the_committed_offsets_last_moved() -> None:
    clock = CommitClock(since=100.0)
    clock.saw({("t", 0): 5}, 105.0)
    assert clock.age(110.0) == 10.0          # first sample: nothing known moved, counted from the start
    clock.saw({("t", 0): 5}, 115.0)
    assert clock.age(120.0) == 20.0          # same offsets: no commit
    clock.saw({("t", 0): 6}, 125.0)
    assert clock.age(130.0) == 5.0           # moved
    clock.saw({("t", 0): 6, ("t", 1): 1}, 140.0)
    assert clock.age(140.0) == 0.0           # a partition committed for the first time
    assert clock.age(130.0) == 0.0           # never negative


def test_each_role_with_a_group_is_sampled_on_the_topics_it_reads() -> None:
    settings = Settings(topic_prefix="x.")
    groups = role_groups(settings, {"processor", "sink", "reconciler"})
    assert groups["processor"][0] == "x.processor"
    assert sorted(groups["processor"][1]) == ["x.processor-commands", "x.reconcile.v1", "x.webhooks.v1"]
    assert groups["sink"] == ("enx-streams-sink.x", [f"x.{k}.v1" for k in
                                                    ("webhooks", "deadletter", "sessions", "alerts", "reconcile")])
    assert set(groups) == {"processor", "sink"}  # the reconciler consumes nothing


def test_the_port_setting() -> None:
    assert Settings().worker_metrics_port is None and Settings().worker_metrics_host == "127.0.0.1"
    assert config.load({"ENX_WORKER_METRICS_PORT": "0"}).worker_metrics_port == 0
    assert config.load({"ENX_WORKER_METRICS_PORT": "9464"}).worker_metrics_port == 9464
    with pytest.raises(config.SettingsError, match="ENX_WORKER_METRICS_PORT"):
        config.load({"ENX_WORKER_METRICS_PORT": "70000"})


def test_no_port_serves_nothing_and_a_taken_port_says_what_to_do() -> None:
    assert WorkerMetrics(Settings(), {"sink"}).serve() is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics = WorkerMetrics(Settings(worker_metrics_port=port, kafka_bootstrap="127.0.0.1:1"), {"sink"})
        with pytest.raises(MetricsPortError, match="ENX_WORKER_METRICS_PORT to a free port, 0 for any free port"):
            metrics.serve()


def test_port_zero_takes_a_free_port() -> None:
    metrics = WorkerMetrics(Settings(worker_metrics_port=0, kafka_bootstrap="127.0.0.1:1"), {"sink"})
    try:
        port = metrics.serve()
        assert port and port > 0
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert "enx_sink_records_total 0.0" in text and "enx_processor_events" not in text  # its roles only
    finally:
        metrics.close()
