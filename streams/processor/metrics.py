"""What the processor counts for the worker's ``/metrics`` (:mod:`streams.worker_metrics` serves them).

The agent handles tens of thousands of events a second, so its counts are plain ints in dicts, bumped on the
event loop and read by the scrape (another thread: a dict is copied whole under the GIL); only the SLA
watch's sweep, once every couple of seconds, observes a prometheus_client histogram directly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sized

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

SWEEP_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)


class ProcessorMetrics(Collector):
    """Events handled and dead-lettered (by topic), alerts published (by kind), open sessions, sweep time."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.handled: defaultdict[str, int] = defaultdict(int)   # topic -> records handled (applied or no-op)
        self.rejected: defaultdict[str, int] = defaultdict(int)  # topic -> records dead-lettered
        self.alerts: defaultdict[str, int] = defaultdict(int)    # kind -> alerts published
        self._sessions: Callable[[], int] = lambda: 0
        self.sweep_seconds = Histogram("enx_processor_sweep_seconds",
                                       "Time of one SLA-watch sweep over this worker's partitions",
                                       buckets=SWEEP_BUCKETS, registry=self.registry)
        self.registry.register(self)

    def watch_sessions(self, index: Sized) -> None:
        """Count the sessions of ``index`` (the SLA watch's DueIndex) as open."""
        self._sessions = lambda: len(index)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        handled = CounterMetricFamily("enx_processor_events", "Records handled by the processor's agent, by topic",
                                      labels=["topic"])
        for topic, n in sorted(dict(self.handled).items()):
            handled.add_metric([topic], n)
        yield handled
        rejected = CounterMetricFamily("enx_processor_rejected",
                                       "Records the processor could not handle, dead-lettered (processor_failed), "
                                       "by topic", labels=["topic"])
        for topic, n in sorted(dict(self.rejected).items()):
            rejected.add_metric([topic], n)
        yield rejected
        alerts = CounterMetricFamily("enx_processor_alerts", "SLA alerts published, by kind", labels=["kind"])
        for kind, n in sorted(dict(self.alerts).items()):
            alerts.add_metric([kind], n)
        yield alerts
        yield GaugeMetricFamily("enx_processor_open_sessions",
                                "Sessions in this worker's state tables with a stall or an expiry ahead "
                                "(the SLA watch's index)", value=self._sessions())
