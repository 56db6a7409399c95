"""The worker's Prometheus ``/metrics``: what its roles count, and each role's consumer lag and last commit.

``enx-streams worker`` serves it when ``ENX_WORKER_METRICS_PORT`` is set (``0``: any free port, logged), on
``ENX_WORKER_METRICS_HOST`` (``127.0.0.1`` by default), from a thread of its own (prometheus_client's
server), so a scrape never waits for the event loop. Unset, nothing listens: several workers on one machine
(tests, ``rebuild``'s replay workers) never fight over a port; ``dev`` gives its worker a free one.

- the processor's counts (:mod:`streams.processor.metrics`) and the sink's (:mod:`streams.sink.metrics`);
- per role with a consumer group (processor, sink): ``enx_worker_consumer_lag`` per topic and partition, the
  records past the group's committed offset, and ``enx_worker_last_commit_age_seconds``, how long ago the
  group's committed offsets last moved. Both are the group's, read from the broker every
  ``LAG_INTERVAL_S`` by a sampler thread (:class:`LagSampler`), so every worker of a group reports the same
  numbers, including those of a member that died (take ``max by (group, topic, partition)``). A group idle
  at the end of its topics has lag 0 and an ever older last commit: only the two together mean stuck.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streams import internals
from streams.config import Settings
from streams.processor.metrics import ProcessorMetrics
from streams.sink.metrics import SinkMetrics

log = logging.getLogger("streams.worker")
LAG_INTERVAL_S = 5.0
SAMPLE_TIMEOUT_S = 10.0  # a sample the broker has not answered within this is a failure (clients made anew)
RETRY_S = 1.0  # after a failed sample, the next one (a worker's first often fails: its groups are being made)

TopicPartitionKey = tuple[str, int]


class MetricsPortError(RuntimeError):
    """The metrics port cannot be bound; the message says what to set."""


# -- pure rules -------------------------------------------------------------------------------------

def lag_of(ends: Mapping[TopicPartitionKey, int], committed: Mapping[TopicPartitionKey, int],
           starts: Mapping[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]:
    """Records past the committed offset per partition, as ``enx-streams status`` counts them
    (:class:`streams.status.facts.PartitionLag`: a partition never committed, or committed below the log's
    start, counts from the start; never negative)."""
    from streams.status.facts import PartitionLag

    return {tp: PartitionLag(tp[0], tp[1], end, committed.get(tp), starts.get(tp, 0)).lag for tp, end in ends.items()}


@dataclass
class CommitClock:
    """When a group's committed offsets last moved, as seen by successive samples; until they move, when
    watching began (a worker cannot know when the group committed before it started)."""

    since: float
    last: dict[TopicPartitionKey, int] | None = None

    def saw(self, committed: Mapping[TopicPartitionKey, int], now: float) -> None:
        if self.last is not None and dict(committed) != self.last:
            self.since = now
        self.last = dict(committed)

    def age(self, now: float) -> float:
        return max(0.0, now - self.since)


def role_groups(settings: Settings, roles: Iterable[str]) -> dict[str, tuple[str, list[str]]]:
    """role -> (consumer group, the topics it consumes), for those of ``roles`` that consume with a group."""
    from streams.status.gather import group_topics

    wanted = set(roles)
    return {role: plan for role, plan in group_topics(settings).items() if role in wanted}


# -- the lag sampler --------------------------------------------------------------------------------

@dataclass
class _Sample:
    lag: dict[TopicPartitionKey, int] = field(default_factory=dict)
    clock: CommitClock | None = None


class LagSampler(Collector):
    """Reads each group's committed offsets and its topics' end offsets every ``interval_s``, in a thread
    with an event loop of its own, and exports the last successful sample."""

    def __init__(self, bootstrap: str, groups: Mapping[str, tuple[str, list[str]]], *,
                 interval_s: float = LAG_INTERVAL_S, clock: Callable[[], float] = time.time) -> None:
        self.bootstrap = bootstrap
        self.groups = dict(groups)
        self.interval_s = interval_s
        self.clock = clock
        started = clock()
        self.samples = {role: _Sample(clock=CommitClock(started)) for role in self.groups}
        self.sampled_at: float | None = None
        self.failures = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()

    def start(self) -> None:
        if not self.groups:
            return
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="enx-metrics-lag",
                                        daemon=True)
        self._thread.start()
        self._started.wait(5)

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._started.set()
        admin = consumer = None
        while not self._stop.is_set():
            try:
                async with asyncio.timeout(SAMPLE_TIMEOUT_S):  # a coordinator not found yet retries for ever
                    if admin is None or consumer is None:
                        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="enx-streams-metrics")
                        await admin.start()
                        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                                    client_id="enx-streams-metrics")
                        await consumer.start()
                    await self.sample(admin, consumer)
                wait_s = self.interval_s
            except Exception as exc:  # noqa: BLE001 - the broker may be away: the last sample stays, aged
                self.failures += 1
                log.debug("consumer lag not sampled: %r", exc)
                admin, consumer = await _close(admin, consumer)
                wait_s = min(RETRY_S, self.interval_s)
            try:
                await asyncio.wait_for(self._stop.wait(), wait_s)
            except asyncio.TimeoutError:
                pass
        await _close(admin, consumer)

    async def sample(self, admin: Any, consumer: Any) -> None:
        """One sample of every group (raises when the broker does not answer)."""
        from aiokafka import TopicPartition

        await internals.refresh_metadata(consumer)  # the topics' partitions as they are now
        taken: dict[str, tuple[dict, dict]] = {}
        for role, (group, topics) in self.groups.items():
            tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
            offsets = await admin.list_consumer_group_offsets(group)
            committed = {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()
                         if meta.offset >= 0 and tp.topic in topics}
            ends = {(tp.topic, tp.partition): o for tp, o in (await consumer.end_offsets(tps)).items()} if tps else {}
            starts = {(tp.topic, tp.partition): o for tp, o in (await consumer.beginning_offsets(tps)).items()} \
                if tps else {}
            taken[role] = (lag_of(ends, committed, starts), committed)
        now = self.clock()
        for role, (lag, committed) in taken.items():
            sample = self.samples[role]
            sample.lag = lag
            assert sample.clock is not None
            sample.clock.saw(committed, now)
        self.sampled_at = now

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = self.clock()
        lag = GaugeMetricFamily("enx_worker_consumer_lag", "Records past the consumer group's committed offset, "
                                "per topic and partition (the group's, read from the broker)",
                                labels=["role", "group", "topic", "partition"])
        age = GaugeMetricFamily("enx_worker_last_commit_age_seconds", "Seconds since the consumer group's committed "
                                "offsets last moved (at most since this worker started)", labels=["role", "group"])
        for role, sample in sorted(self.samples.items()):
            group = self.groups[role][0]
            for (topic, partition), n in sorted(sample.lag.items()):
                lag.add_metric([role, group, topic, str(partition)], n)
            if sample.clock is not None:
                age.add_metric([role, group], sample.clock.age(now))
        yield lag
        yield age
        yield GaugeMetricFamily("enx_worker_lag_sample_age_seconds", "Seconds since the consumer lag was last read "
                                "from the broker (-1: never)",
                                value=-1 if self.sampled_at is None else max(0.0, now - self.sampled_at))
        yield CounterMetricFamily("enx_worker_lag_sample_failures", "Lag samples the broker did not answer",
                                  value=self.failures)


async def _close(admin: Any, consumer: Any) -> tuple[None, None]:
    for client, stop in ((consumer, "stop"), (admin, "close")):
        if client is not None:
            try:
                await getattr(client, stop)()
            except Exception:  # noqa: BLE001 - closing a client of an unreachable broker
                pass
    return None, None


# -- the worker's registry and server ---------------------------------------------------------------

class WorkerMetrics:
    """One registry per worker process: the processor's and the sink's counts, the lag of its roles, and the
    process's own (memory, CPU, GC). ``serve`` starts the HTTP server when a port is configured."""

    def __init__(self, settings: Settings, roles: Iterable[str]) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        roles = frozenset(roles)
        # a role this worker does not run counts nothing and exports nothing
        self.processor = ProcessorMetrics(self.registry if "processor" in roles else None)
        self.sink = SinkMetrics(self.registry if "sink" in roles else None)
        self.lag = LagSampler(settings.kafka_bootstrap, role_groups(settings, roles))
        self.registry.register(self.lag)
        self.server: Any = None
        self.port: int | None = None

    def serve(self) -> int | None:
        """Listen on ENX_WORKER_METRICS_HOST:ENX_WORKER_METRICS_PORT and start the lag sampler; the port bound
        (None when no port is configured: nothing listens, nothing is sampled)."""
        from prometheus_client import start_http_server

        port, host = self.settings.worker_metrics_port, self.settings.worker_metrics_host
        if port is None:
            return None
        try:
            self.server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise MetricsPortError(
                f"the worker's /metrics cannot listen on {host}:{port} ({exc.strerror or exc}): another worker on "
                f"this machine may hold it; set ENX_WORKER_METRICS_PORT to a free port, 0 for any free port, or "
                f"unset it to serve no metrics") from None
        self.port = int(self.server.server_port)
        self.lag.start()
        log.info("metrics: http://%s:%d/metrics", host, self.port)
        return self.port

    def close(self) -> None:
        self.lag.close()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
