"""The whole pipeline on a three-broker cluster under steady webhook load, with brokers lost.

Each test runs ingest, two processor workers and a sink worker on the ``kafka_cluster`` fixture (three KRaft
nodes; every topic on 3 replicas with ``min.insync.replicas`` 2), posts sessions' webhooks at a steady rate from
four clients before, during and after the fault, and ends with the checks of test_worker_killed.py: every
accepted event exactly once in ClickHouse under ``FINAL``, every session's state equal to a clean replay of the
log by the pure rules, exactly the expected alert ids. The faults:

- the broker leading most of the webhook log's partitions SIGKILLed, and started again FAULTS_CLUSTER_OUTAGE_S
  later (20 s by default, the issue's minute shortened for the suite's time: the other brokers have taken
  over the partitions well before; FAULTS_CLUSTER_OUTAGE_S=60 runs the issue's);
- a rolling restart: each broker in turn SIGTERMed and started again, the next only once every replica of the
  deployment's topics is back in sync;
- two of the three brokers SIGKILLed for FAULTS_CLUSTER_OUTAGE_S: no partition can take an ``acks=all`` write,
  so ingest answers from its fsynced spool (every 202 is durable: the checks find every accepted event), and
  the spool drains once the brokers are back (every test waits for a drained spool before it reads the log).

The sessions are built so that a live run and a replay judge them alike whatever the moment a sweep runs: a
session with a composite in time has its deadline 40 minutes ahead; the others (never composited, or
composited late) have deadlines two hours past, so they stall at whichever sweep or event comes first.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from streams.broker.local import LocalKafka, LocalKafkaCluster
from streams.broker.topics import contract_topics
from streams.processor.app import internal_topics
from tests.faults.pipeline import Pipeline, assert_replayed, read_log
from tests.faults.record import record_result
from tests.faults.test_broker_down import CLIENTS, Load
from tests.integration.test_ingest_spool import Ingest
from tests.polling import poll

OUTAGE_S = float(os.environ.get("FAULTS_CLUSTER_OUTAGE_S", "20"))
RATE_PER_S = 40
PARTITIONS = 4
APP = "app-cluster"
TYPES = ("roomdrop", "recording", "chatdata", "transcoded")


def session_bodies(anchor_s: float) -> Callable[[int], bytes]:
    """Body ``i``: event ``i % 4`` of session ``i // 4``. Sessions ``s % 10 == 3`` never get a composite (a
    file-transfer instead), ``s % 10 == 5`` get it an hour after their start (late); both started two hours before
    ``anchor_s``. The others started five minutes before it, their composite a minute later (in time)."""

    def body(i: int) -> bytes:
        s, k = divmod(i, 4)
        kind = s % 10
        start = anchor_s - 2 * 3600 + s if kind in (3, 5) else anchor_s - 300
        type_ = "file-transfer" if (kind == 3 and k == 3) else TYPES[k]
        at = {"roomdrop": 0, "recording": 20, "chatdata": 60, "file-transfer": 70,
              "transcoded": 3600 if kind == 5 else 60}[type_]
        payload: dict = {"type": type_, "app_id": APP, "room_id": "room", "conf_num": f"c{s}",
                         "trans_date": int(start + at)}
        if type_ in ("recording", "transcoded", "chatdata"):
            payload[type_] = [{"url": f"https://files.example/{s}/{type_}"}]
        return json.dumps(payload).encode()

    return body


def readyz(ingest: Ingest) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ingest.port}/readyz", timeout=5).read())


async def _partitions(bootstrap: str, topics: list[str]) -> list[dict]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return [p for t in await admin.describe_topics(topics) if t["error_code"] == 0 for p in t["partitions"]]
    finally:
        await admin.close()


def leader_of_most(cluster: LocalKafkaCluster, topic: str) -> LocalKafka:
    """The node leading most partitions of ``topic``."""
    leaders = [p["leader"] for p in asyncio.run(_partitions(cluster.bootstrap, [topic]))]
    node_id = max(set(leaders), key=leaders.count)
    return next(n for n in cluster.nodes if n.role.node_id == node_id)


def in_sync(cluster: LocalKafkaCluster, topics: list[str]) -> bool:
    """Every partition of ``topics`` with all three replicas in sync."""
    try:
        parts = asyncio.run(_partitions(cluster.bootstrap, topics))
    except Exception:  # noqa: BLE001 - a broker between two states: not in sync yet
        return False
    return bool(parts) and all(len(p["isr"]) == 3 for p in parts)


class Run:
    """The pipeline and ingest on the cluster, the load, and what the test records."""

    def __init__(self, cluster: LocalKafkaCluster, tmp: Path) -> None:
        self.cluster = cluster
        self.pipeline = Pipeline(tmp, cluster.bootstrap, partitions=PARTITIONS)
        self.settings = self.pipeline.settings
        self.ingest = Ingest(tmp, cluster.bootstrap, prefix=self.settings.topic_prefix, partitions=PARTITIONS)
        self.load = Load(self.ingest.url, session_bodies(time.time()), rate_per_s=RATE_PER_S)
        self.started = time.monotonic()

    @property
    def topics(self) -> list[str]:
        """Every topic the deployment writes: the contract's, the processor's own, the consumer offsets."""
        return [s.name for s in contract_topics(self.settings) + internal_topics(self.settings)] + \
            ["__consumer_offsets"]

    def start(self) -> None:
        self.pipeline.provision()
        self.pipeline.start("sink", "sink")
        for name in ("p0", "p1"):
            self.pipeline.start(name, "processor")
        self.ingest.start()
        self.pipeline.wait_sink()
        self.ready_s = round(time.monotonic() - self.started, 1)

    @contextmanager
    def under_load(self, pool: ThreadPoolExecutor) -> Iterator[None]:
        """The load keeps posting while the block runs (the fault), from a thread of its own."""
        done = threading.Event()
        poster = threading.Thread(target=self.load.run, args=(float("inf"), pool, done))
        poster.start()
        try:
            yield
        finally:
            done.set()
            poster.join()

    def check(self, fault: str, **figures) -> None:
        """The end of every test: every post answered 202, every accepted event in the log and, replayed by the
        pure rules, in ClickHouse as the rules say; what held is recorded."""
        load = self.load
        assert not load.failures, f"{len(load.failures)} posts not accepted, e.g. {load.failures[:3]}"
        assert len(load.accepted) == load.next
        poll("the spool drained", lambda: (r := readyz(self.ingest))["ready_by"] == "kafka" and r["spool_frames"] == 0,
             120, self.logs)
        log_events = read_log(self.cluster.bootstrap, self.settings.topic("webhooks"), PARTITIONS)
        in_log = {e["event_id"] for e in log_events}
        lost = set(load.accepted) - in_log
        assert not lost and in_log == set(load.accepted), \
            f"{len(lost)} accepted events not in the log, {len(in_log - set(load.accepted))} unexpected"
        checked_at = time.monotonic()
        held = assert_replayed(self.settings, log_events, int(time.time() * 1000), self.logs)
        assert held["events"] == len(load.accepted) and held["alerts"] > 0
        record_result(fault, **held, log_records=len(log_events), duration_s=round(time.monotonic() - self.started, 1),
                      pipeline_ready_s=self.ready_s, settled_s=round(time.monotonic() - checked_at, 1),
                      non_202=0, lost=0, duplicated_after_final=0, slowest_post_s=round(load.slowest_s, 2),
                      **figures)

    @property
    def logs(self) -> list[Path]:
        return self.pipeline.all_logs(self.ingest.log)

    def stop(self) -> None:
        if self.ingest.proc and self.ingest.proc.poll() is None:
            self.ingest.stop()
        self.pipeline.stop()


@contextmanager
def pipeline_on(cluster: LocalKafkaCluster, tmp: Path) -> Iterator[Run]:
    run = Run(cluster, tmp)
    try:
        run.start()
        yield run
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n{run.pipeline.task_dumps()}") from None
    finally:
        run.stop()


def test_the_leader_of_the_log_killed_and_back(kafka_cluster: LocalKafkaCluster, tmp_path: Path) -> None:
    with pipeline_on(kafka_cluster, tmp_path) as run, ThreadPoolExecutor(CLIENTS) as pool:
        log = run.settings.topic("webhooks")
        run.load.run(5, pool)
        leader = leader_of_most(kafka_cluster, log)
        leader.kill()
        killed_at = time.monotonic()
        run.load.run(OUTAGE_S, pool)  # the outage, under load
        leaders = {p["leader"] for p in asyncio.run(_partitions(kafka_cluster.bootstrap, [log]))}
        assert leader.role.node_id not in leaders and -1 not in leaders, leaders  # the others took over
        with run.under_load(pool):
            leader.start()
        outage = time.monotonic() - killed_at
        run.load.run(5, pool)
        run.check("cluster: log leader killed", outage_s=round(outage, 1), node=leader.role.node_id,
                  detail=f"{CLIENTS} clients at {RATE_PER_S}/s; the broker leading most of the log's partitions "
                         f"SIGKILLed, started again on its data")


def test_a_rolling_restart_of_the_three_brokers(kafka_cluster: LocalKafkaCluster, tmp_path: Path) -> None:
    with pipeline_on(kafka_cluster, tmp_path) as run, ThreadPoolExecutor(CLIENTS) as pool:
        run.load.run(5, pool)
        restarted_at = time.monotonic()
        steps = []  # per broker: seconds to stop, to answer again, to have every replica back in sync
        with run.under_load(pool):
            for node in kafka_cluster.nodes:
                t0 = time.monotonic()
                node.stop()
                t1 = time.monotonic()
                node.start()
                t2 = time.monotonic()
                poll(f"every replica in sync after broker {node.role.node_id}'s restart",
                     lambda: in_sync(kafka_cluster, run.topics), 90, run.logs)
                steps.append([round(t1 - t0, 1), round(t2 - t1, 1), round(time.monotonic() - t2, 1)])
        restart = time.monotonic() - restarted_at
        run.load.run(5, pool)
        run.check("cluster: rolling restart", restart_s=round(restart, 1), stop_start_sync_s=steps,
                  detail=f"{CLIENTS} clients at {RATE_PER_S}/s; each broker SIGTERMed and started again, the next "
                         f"once every replica was in sync")


def test_two_of_three_brokers_down_ingest_spools_then_drains(kafka_cluster: LocalKafkaCluster,
                                                           tmp_path: Path) -> None:
    with pipeline_on(kafka_cluster, tmp_path) as run, ThreadPoolExecutor(CLIENTS) as pool:
        run.load.run(5, pool)
        for node in kafka_cluster.nodes[1:]:
            node.kill()
        killed_at = time.monotonic()
        run.load.run(OUTAGE_S, pool)  # the outage, under load
        spooled = readyz(run.ingest)
        assert spooled["ready_by"] == "spool" and spooled["spool_frames"] > 0, spooled
        with run.under_load(pool):
            kafka_cluster.start()  # both at once: neither answers before the quorum has a majority again
            outage = time.monotonic() - killed_at
        run.load.run(5, pool)
        run.check("cluster: two of three brokers down", outage_s=round(outage, 1),
                  spooled_frames_at_restart=spooled["spool_frames"],
                  detail=f"{CLIENTS} clients at {RATE_PER_S}/s; brokers 2 and 3 SIGKILLed, started again on their "
                         f"data; ingest answered from its spool meanwhile")
