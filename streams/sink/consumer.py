"""The sink worker: the five contract topics -> ClickHouse, batched, idempotent, committed after insert.

- One aiokafka consumer in group ``enx-streams-sink.<topic prefix>`` reads the webhook log, dead letters,
  session snapshots, alerts and reconciliation findings from the earliest offset, with auto-commit off.
- Each record is decoded (Avro single-object) and projected into rows (:mod:`streams.sink.rows`); rows are
  batched (:mod:`streams.sink.batcher`) to about one insert per table per second, or ``max_rows``.
- Inserts run on clickhouse-connect (synchronous) in a thread of their own, never on the event loop.
- Offsets are committed only after every insert of the batch that carries them has succeeded. A failing
  insert is retried with capped exponential backoff, and nothing past it is committed meanwhile; a batch
  that still fails when the worker stops is dropped uncommitted, so it is consumed again next time.
  Redelivered rows collapse under ``FINAL`` (tables keyed by event_id, alert_id, session and version,
  dead-letter id).
- A record that cannot be decoded or projected becomes a ``dead_letters`` row (reason ``undecodable: ...``
  or ``unprojectable: ...``, source ``topic/partition/offset``, id derived from those coordinates) in the
  same batch, so it is committed with it instead of stopping the sink or looping.
- Tombstones on the compacted sessions topic (a session that left the state tables after its retention)
  are skipped: ClickHouse keeps the history of every session; only the offset moves on.
- On a rebalance, the batch is flushed and committed before the partitions are handed over.

With the embedded engine the sink process is the data directory's owner (:mod:`streams.sink.clickhouse`):
it takes the owner lock, applies the migrations at its start and answers ``enx-streams sql``
(:mod:`streams.sink.owner`). With a server DSN any number of sink workers may run; each applies the
(idempotent) migrations at its start.

A :class:`SinkTarget` points a sink elsewhere: ``enx-streams rebuild`` runs one that writes a shadow
database (``enablex_rebuild``, built by the same migrations) as a consumer group of its own, and reads the
rebuild's alerts topic beside the five (streams/rebuild/).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from streams import dead_letters
from streams.config import Settings
from streams.sink import rows as R
from streams.sink.migrations import DATABASE

if TYPE_CHECKING:
    from streams.sink.clickhouse import OwnerLock
from streams.sink.batcher import Batch, Batcher

log = logging.getLogger("streams.sink")

SINK_GROUP = "enx-streams-sink"
TOPIC_KINDS = ("webhooks", "deadletter", "sessions", "alerts", "reconcile")


def sink_group(settings: Settings) -> str:
    """The consumer group: ``enx-streams-sink.enablex`` for the default prefix ``enablex.``."""
    prefix = settings.topic_prefix.rstrip(".")
    return f"{SINK_GROUP}.{prefix}" if prefix else SINK_GROUP


def backoff_delays(initial_s: float, max_s: float, factor: float = 2.0) -> Iterator[float]:
    """``initial_s``, doubling, capped at ``max_s`` (pure)."""
    delay = initial_s
    while True:
        yield min(delay, max_s)
        delay = min(delay * factor, max_s)


@dataclasses.dataclass(frozen=True)
class SinkTarget:
    """Where a sink writes and as which group it reads: by default the contract's database, as the sink group
    of :func:`sink_group`, from the five contract topics."""

    database: str = DATABASE
    group: str | None = None                         # None: sink_group(settings)
    extra_topics: tuple[tuple[str, str], ...] = ()   # (topic, kind of TOPIC_KINDS its records are)

    def group_of(self, settings: Settings) -> str:
        return self.group or sink_group(settings)


@dataclasses.dataclass(frozen=True)
class SinkOptions:
    max_rows: int = 10_000          # rows per batch before it is due
    max_age_s: float = 1.0          # age of a batch's first record before it is due
    backoff_initial_s: float = 0.2  # first retry delay of a failed insert
    backoff_max_s: float = 10.0     # cap of the retry delay
    shutdown_flush_s: float = 10.0  # how long a stopping sink keeps retrying its last batch
    poll_timeout_s: float = 0.5     # longest wait for records (bounds the reaction to stop)


@dataclasses.dataclass
class SinkStats:
    records: int = 0
    rows_inserted: int = 0
    inserts: int = 0
    insert_failures: int = 0
    dead_letters: int = 0
    tombstones: int = 0
    commits: int = 0
    commit_failures: int = 0
    last_error: str | None = None
    rows_by_table: dict[str, int] = dataclasses.field(default_factory=dict)  # of rows_inserted


class Sink:
    """Consumes, projects, batches, inserts, commits. ``client`` is used only in ``executor``'s thread."""

    def __init__(self, settings: Settings, consumer: Any, client: Any,
                 executor: concurrent.futures.Executor, *, options: SinkOptions = SinkOptions(),
                 clock: Callable[[], float] = time.monotonic, codec: Any = None,
                 target: SinkTarget = SinkTarget()) -> None:
        from streams.avro import default_codec

        self.settings = settings
        self.consumer = consumer
        self.client = client
        self.executor = executor
        self.options = options
        self.clock = clock
        self.codec = codec or default_codec()
        self.batcher = Batcher(options.max_rows, options.max_age_s, clock)
        self.stats = SinkStats()
        self.database = target.database
        self.kind_of_topic = {settings.topic(kind): kind for kind in TOPIC_KINDS}
        self.kind_of_topic.update(target.extra_topics)
        self._flush_lock = asyncio.Lock()
        self._stop: asyncio.Event | None = None

    @property
    def topics(self) -> list[str]:
        return list(self.kind_of_topic)

    # -- records -> rows ---------------------------------------------------------------------------

    def rows_of(self, record: Any) -> dict[str, list[R.Row]]:
        """The rows of one consumed record: its projection, nothing for a sessions tombstone, or a dead letter."""
        kind = self.kind_of_topic.get(record.topic)
        value = record.value
        if value is None and kind == "sessions":
            self.stats.tombstones += 1
            return {}
        try:
            if kind is None:
                raise R.UnprojectableRecord(f"topic {record.topic} is not a contract topic")
            if value is None:
                reason = "undecodable: an empty value (tombstone) on a topic that is not compacted"
                return self._dead_letter(record, reason)
            from streams.avro import AvroError

            try:
                decoded = self.codec.decode(value)  # its clear messages first: no header, unknown schema...
                name = self.codec.record_name(value)
            except AvroError as exc:
                return self._dead_letter(record, f"undecodable: {exc}")
            return R.project(kind, name, decoded)
        except R.UnprojectableRecord as exc:
            return self._dead_letter(record, f"unprojectable: {exc}")
        except Exception as exc:  # noqa: BLE001 - a record must never stop the sink or make it loop
            return self._dead_letter(record, f"unprojectable: {type(exc).__name__}: {exc}")

    def _dead_letter(self, record: Any, reason: str) -> dict[str, list[R.Row]]:
        self.stats.dead_letters += 1
        log.warning("dead letter: %s/%s/%s %s", record.topic, record.partition, record.offset, reason)
        letter = dead_letters.for_record("sink", record.topic, record.partition, record.offset, record.timestamp,
                                         record.value, record.key, record.headers or (), reason)
        return {"dead_letters": [R.dead_letter_row(letter)]}

    # -- inserting and committing ------------------------------------------------------------------

    def _insert_sync(self, table: str, data: list[list[Any]]) -> None:
        self.client.insert(f"{self.database}.{table}", data, column_names=list(R.COLUMNS[table]))

    async def _insert_batch(self, batch: Batch, stop: asyncio.Event | None) -> bool:
        """Insert every table of ``batch`` not inserted yet, retrying the failed ones with backoff (the others
        are not inserted again). False only when the sink is stopping and an insert still fails after
        ``shutdown_flush_s``."""
        loop = asyncio.get_running_loop()
        delays = backoff_delays(self.options.backoff_initial_s, self.options.backoff_max_s)
        give_up_at: float | None = None
        attempt = 0
        while True:
            attempt += 1
            failed: list[tuple[str, Exception]] = []
            for table in batch.pending_tables():
                data = R.as_lists(table, batch.rows[table])
                try:
                    await loop.run_in_executor(self.executor, self._insert_sync, table, data)
                except Exception as exc:  # noqa: BLE001 - any failure: retry, commit nothing
                    failed.append((table, exc))
                    continue
                self.stats.inserts += 1
                self.stats.rows_inserted += len(data)
                self.stats.rows_by_table[table] = self.stats.rows_by_table.get(table, 0) + len(data)
                batch.done.add(table)
                if attempt > 1:
                    log.info("insert into %s.%s succeeded after %d attempts", self.database, table, attempt)
            if not failed:
                return True
            self.stats.insert_failures += len(failed)
            self.stats.last_error = "; ".join(f"{t}: {type(e).__name__}: {e}" for t, e in failed)
            delay = next(delays)
            if stop is not None and stop.is_set():
                now = self.clock()
                give_up_at = give_up_at if give_up_at is not None else now + self.options.shutdown_flush_s
                if now >= give_up_at:
                    for table, exc in failed:
                        log.error("insert into %s.%s still fails while stopping (%s); the batch's %d records "
                                  "stay uncommitted, to be consumed again at the next start", self.database, table,
                                  exc, batch.records)
                    return False
                delay = min(delay, give_up_at - now)
            for table, exc in failed:
                log.warning("insert into %s.%s failed (attempt %d): %s; retrying in %.1f s, nothing is "
                            "committed past it", self.database, table, attempt, exc, delay)
            await asyncio.sleep(delay)

    async def _commit(self, batch: Batch) -> None:
        from aiokafka import TopicPartition
        from aiokafka.errors import KafkaError

        offsets = {TopicPartition(t, p): o for (t, p), o in batch.commit_offsets().items()}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
            self.stats.commits += 1
        except (KafkaError, AssertionError) as exc:
            # The rows are in ClickHouse; the records will be consumed again and collapse under FINAL.
            self.stats.commit_failures += 1
            log.warning("could not commit offsets after the insert (%s); those records will be consumed again "
                        "and their rows collapse under FINAL", exc)

    async def flush(self, stop: asyncio.Event | None = None) -> bool:
        """Insert the current batch (retrying) and commit its offsets; True when done (or nothing to do)."""
        async with self._flush_lock:
            batch = self.batcher.take()
            if batch is None:
                return True
            if not await self._insert_batch(batch, stop if stop is not None else self._stop):
                return False
            await self._commit(batch)
            return True

    # -- the loop ----------------------------------------------------------------------------------

    def add(self, record: Any) -> None:
        self.stats.records += 1
        self.batcher.add((record.topic, record.partition), record.offset, self.rows_of(record))

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; then flush and commit what was consumed."""
        self._stop = stop
        try:
            while not stop.is_set():
                left = self.batcher.time_left()
                wait_s = self.options.poll_timeout_s if left is None else min(left, self.options.poll_timeout_s)
                fetched = await self.consumer.getmany(timeout_ms=max(1, int(wait_s * 1000)),
                                                      max_records=self.options.max_rows)
                for records in fetched.values():
                    for record in records:
                        self.add(record)
                if self.batcher.due():
                    await self.flush(stop)
        finally:
            # Stopping, or leaving on an error: one last flush, with bounded retries either way.
            stopping = stop
            if not stopping.is_set():
                stopping = asyncio.Event()
                stopping.set()
            await self.flush(stopping)

    def listener(self) -> Any:
        """A rebalance listener that flushes and commits before partitions are handed over."""
        from aiokafka.abc import ConsumerRebalanceListener

        sink = self

        class _FlushOnRevoke(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Any) -> None:
                if revoked:
                    await sink.flush()

            async def on_partitions_assigned(self, assigned: Any) -> None:
                log.info("sink assigned %d partition(s)", len(assigned))

        return _FlushOnRevoke()


def make_consumer(settings: Settings, group: str | None = None) -> Any:
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group or sink_group(settings),
        client_id="enx-streams-sink",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def run_sink(settings: Settings, stop: asyncio.Event, *, on_ready: Callable[[], None] | None = None,
                   options: SinkOptions = SinkOptions(), on_sink: Callable[[Sink], None] | None = None,
                   target: SinkTarget = SinkTarget(), lock: OwnerLock | None = None) -> None:
    """Run the sink until ``stop`` is set, then flush, commit and release everything.

    Embedded DSN: become the owner of the data directory first (raises
    :class:`streams.sink.clickhouse.OwnerError` when another process owns it), apply the migrations and
    answer ``enx-streams sql``. ``on_ready`` is called once ClickHouse is migrated (and answering queries)
    and the consumer is started. ``on_sink`` receives the :class:`Sink` once it exists (its ``stats``
    are counters a caller may export as metrics).

    ``target``: where to write and as which group (:class:`SinkTarget`). ``lock``: the owner lock of the
    embedded directory when the caller holds it already (a rebuild holds it from its checks to its swap and
    answers ``enx-streams sql`` itself): then the sink neither takes nor releases it, nor serves queries.
    """
    from streams.sink import migrations
    from streams.sink.clickhouse import OwnerLock, connect, redact_dsn, settings_path  # noqa: F811

    loop = asyncio.get_running_loop()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="enx-sink-ch")
    held_by_caller = lock is not None
    client: Any = None
    server: Any = None
    consumer: Any = None
    try:
        path = settings_path(settings)
        if path is not None and lock is None:
            lock = OwnerLock.acquire(path)
        client = await loop.run_in_executor(executor, connect, settings)
        where = str(path) if path is not None else redact_dsn(settings.clickhouse_url)
        applied = await loop.run_in_executor(
            executor, lambda: migrations.apply(client, log.info, database=target.database))
        log.info("clickhouse %s (%s): %s", where, target.database,
                 f"applied {', '.join(applied)}" if applied else "up to date")
        if lock is not None and not held_by_caller:
            from streams.sink.owner import serve_queries

            reader = await loop.run_in_executor(executor, lambda: connect(settings, readonly=True))
            try:
                server = await serve_queries(settings, reader)
            except BaseException:
                await loop.run_in_executor(executor, reader.close)
                raise
        consumer = make_consumer(settings, target.group_of(settings))
        sink = Sink(settings, consumer, client, executor, options=options, target=target)
        consumer.subscribe(sink.topics, listener=sink.listener())
        if on_sink is not None:
            on_sink(sink)
        await consumer.start()
        log.info("sink consuming %s as group %s into %s", ", ".join(sink.topics), target.group_of(settings),
                 target.database)
        if on_ready is not None:
            on_ready()
        await sink.run(stop)
    finally:
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
        if server is not None:
            await server.close()
        if client is not None:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(executor, client.close)
        executor.shutdown(wait=True)
        if lock is not None and not held_by_caller:
            lock.release()
