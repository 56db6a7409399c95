"""What ``enx-streams status`` found: plain data gathered by :mod:`streams.status.gather`, judged by
:mod:`streams.status.judge`. Times are Unix milliseconds; ``None`` means "not known" (not asked, or no
answer), and each part says in ``error`` why it could not be read."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    reachable: bool
    error: str | None = None


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    end: int  # the log end offset
    committed: int | None  # the group's committed offset (None: nothing committed)
    start: int = 0  # the log start offset: where a group with no commit begins

    @property
    def lag(self) -> int:
        position = self.committed if self.committed is not None else self.start
        return max(0, self.end - max(position, self.start))


@dataclass(frozen=True)
class Group:
    """A consumer group of the pipeline and how far its commits are behind the end of each of its topics."""

    role: str  # processor, sink
    name: str
    members: int | None = None  # live members (None: unknown)
    state: str | None = None  # the coordinator's word: Stable, Empty, PreparingRebalance, Dead...
    partitions: tuple[PartitionLag, ...] = ()
    oldest_waiting_ms: int | None = None  # received_at of the oldest webhook it has not committed
    error: str | None = None

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


@dataclass(frozen=True)
class Ingest:
    url: str  # where /readyz was asked
    answered: bool
    ready: bool | None = None
    ready_by: str | None = None  # kafka, spool, or None when it refuses webhooks
    kafka: bool | None = None  # whether ingest reaches Kafka
    error: str | None = None


@dataclass(frozen=True)
class Spool:
    source: str  # "ingest" (its /readyz), "directory" (read from the data dir), "none" (no spool file)
    path: str
    bytes: int | None = None
    frames: int | None = None
    oldest_age_s: float | None = None  # None: empty (or unknown when bytes is None)
    error: str | None = None


@dataclass(frozen=True)
class Owner:
    """The process that owns the embedded ClickHouse (or the server it is)."""

    embedded: bool
    where: str  # the data directory, or the server's DSN with its password masked
    pid: int | None = None
    command: str | None = None
    since_ms: int | None = None


@dataclass(frozen=True)
class Newest:
    """The newest webhook event and SLA alert, as the log holds them or as ClickHouse does."""

    event_ms: int | None = None  # received_at
    alert_ms: int | None = None  # detected_at
    alert: str | None = None  # its kind and session, e.g. "transcode_stalled app/conf"
    error: str | None = None


@dataclass(frozen=True)
class ClickHouse:
    where: str
    answered: bool
    newest: Newest = field(default_factory=Newest)
    error: str | None = None


@dataclass(frozen=True)
class Facts:
    now_ms: int
    broker: Broker
    groups: tuple[Group, ...]
    ingest: Ingest
    spool: Spool
    owner: Owner
    clickhouse: ClickHouse
    log: Newest  # the last records of the webhook log and the alerts topic
