"""Prometheus metrics of one ingest app (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

KNOWN_TYPES = ("roomdrop", "recording", "transcoded", "file-transfer", "chatdata")


@dataclass
class IngestMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.accepted = Counter("enx_ingest_accepted_total", "Webhooks accepted (202), by type", ["type"],
                                registry=self.registry)
        self.rejected = Counter("enx_ingest_rejected_total", "Webhooks rejected, by reason", ["reason"],
                                registry=self.registry)
        self.spool_depth = Gauge("enx_ingest_spool_bytes", "Bytes in the spool not yet acknowledged by Kafka",
                                 registry=self.registry)
        self.spool_frames = Gauge("enx_ingest_spool_frames", "Records in the spool not yet acknowledged by Kafka",
                                  registry=self.registry)
        self.spool_oldest = Gauge("enx_ingest_spool_oldest_seconds",
                                  "Age of the oldest record in the spool (when ingest received it); 0 when empty",
                                  registry=self.registry)
        self.kafka_up = Gauge("enx_ingest_kafka_up", "1 while Kafka acknowledges ingest's records directly, else 0",
                              registry=self.registry)
        self.watermark = Gauge("enx_ingest_watermark_seconds",
                               "The last watermark written to the log (Unix s): every webhook received before it "
                               "is in the log; it stands still while the spool holds records", registry=self.registry)
        self.durable_by = Counter("enx_ingest_durable_total", "Records made durable, by where", ["where"],
                                  registry=self.registry)
        self.quarantined = Counter("enx_ingest_spool_quarantined_total",
                                   "Spool frames Kafka refused for good, moved to the spool's quarantine/",
                                   registry=self.registry)
        self.produce_latency = Histogram("enx_ingest_produce_seconds", "Time to make a record durable",
                                         buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                         registry=self.registry)

    def type_label(self, event_type: str) -> str:
        return event_type if event_type in KNOWN_TYPES else "other"
