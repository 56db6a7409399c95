"""The sink's :class:`~streams.sink.consumer.SinkStats` as Prometheus counters, read at each scrape.

``run_sink(..., on_sink=metrics.watch)`` hands it the running sink; the sink itself counts in plain ints
and knows nothing of Prometheus. Before the sink exists (starting) every counter is 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# (metric name without _total, SinkStats field, help)
COUNTERS = (
    ("enx_sink_records", "records", "Records consumed from the contract topics"),
    ("enx_sink_inserts", "inserts", "Successful ClickHouse inserts (one per table per batch)"),
    ("enx_sink_insert_failures", "insert_failures", "Failed ClickHouse inserts (each retried, nothing committed "
     "past it)"),
    ("enx_sink_dead_letters", "dead_letters", "Records the sink could not decode or project, kept as dead_letters "
     "rows"),
    ("enx_sink_tombstones", "tombstones", "Session tombstones skipped (sessions that left the state tables)"),
    ("enx_sink_commits", "commits", "Offset commits after a successful insert"),
    ("enx_sink_commit_failures", "commit_failures", "Offset commits that failed after the insert (the records are "
     "consumed again and collapse under FINAL)"),
)


class SinkMetrics(Collector):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.sink: Any = None
        self.registry.register(self)

    def watch(self, sink: Any) -> None:
        """Export ``sink.stats`` from now on (``run_sink``'s ``on_sink``)."""
        self.sink = sink

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self.sink.stats if self.sink is not None else None
        for name, attribute, help_text in COUNTERS:
            yield CounterMetricFamily(name, help_text, value=getattr(stats, attribute) if stats else 0)
        rows = CounterMetricFamily("enx_sink_rows_inserted", "Rows inserted into ClickHouse, by table",
                                   labels=["table"])
        for table, n in sorted(dict(stats.rows_by_table if stats else {}).items()):
            rows.add_metric([table], n)
        yield rows
