"""Reading the dead-letter topic, the webhook log and the redrive ledger from the broker (I/O).

A topic is read from its beginning up to its end offsets taken when the read starts, without a consumer
group (nothing is committed, no live consumer is disturbed), so a read finishes while records keep coming.

The redrive ledger, ``<prefix>redrive.v1``, is compacted and keyed by the dead letter's id: one JSON record
per letter redrive dealt with (``{"deadletter_id", "event_id", "outcome", "redriven_at", "appended_to"}``),
the latest per key kept for ever. It is what ``redrive`` reads to skip what it did before, and what
``list``/``show`` read to say when a letter was redriven.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from streams import internals
from streams.avro import default_codec
from streams.broker.limits import MAX_MESSAGE_BYTES
from streams.broker.replication import DURABLE_PRODUCER
from streams.broker.topics import COMPACTED, TopicConflict, TopicSpec, ensure_topics
from streams.config import Settings

STALL_TIMEOUT_S = 30.0   # a read that makes no progress this long fails (broker away)
PROGRESS_EVERY_S = 2.0
REQUEST_TIMEOUT_MS = 10_000

Progress = Callable[[str, int, int], None]  # (topic, records read, records to read)


class DeadLettersError(RuntimeError):
    """A ``deadletters`` command cannot go on; the message says what to do next."""


class BrokerUnavailable(DeadLettersError):
    """Kafka cannot be read or written; the message says what to do next."""


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int


def _unreachable(settings: Settings, exc: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(f"could not reach Kafka at {settings.kafka_bootstrap} ({exc!r}); start it "
                             f"(`enx-streams kafka start`) or set ENX_KAFKA_BOOTSTRAP")


async def scan(settings: Settings, topic: str, handle: Callable[[Record], None],
               progress: Progress | None = None) -> int:
    """Call ``handle`` for every record of ``topic`` up to its end offsets as of now, partition by
    partition in offset order; returns the number read (0 for a topic that does not exist)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                group_id=None, auto_offset_reset="earliest", request_timeout_ms=REQUEST_TIMEOUT_MS)
    try:
        await consumer.start()
    except (KafkaError, OSError) as exc:
        await consumer.stop()
        raise _unreachable(settings, exc) from exc
    try:
        # the consumer's own metadata holds only topics it subscribes to: ask for the whole cluster's
        cluster = await internals.all_partitions(consumer)
        if topic not in cluster.topics():
            return 0
        tps = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        total = sum(ends[tp] - starts[tp] for tp in tps)
        remaining = [tp for tp in tps if ends[tp] > starts[tp]]
        if remaining:
            await consumer.seek_to_beginning(*remaining)
        read, last_progress, last_advance = 0, time.monotonic(), time.monotonic()
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset < ends[tp]:
                        handle(Record(r.partition, r.offset, r.key, r.value, tuple(r.headers or ()), r.timestamp))
                        read += 1
            now = time.monotonic()
            if batch:
                last_advance = now
            elif now - last_advance > STALL_TIMEOUT_S:
                raise BrokerUnavailable(f"reading {topic} from {settings.kafka_bootstrap} made no progress for "
                                        f"{STALL_TIMEOUT_S:.0f} s ({read} of {total} read); is the broker up?")
            remaining = [tp for tp in remaining if await consumer.position(tp) < ends[tp]]
            if progress is not None and (now - last_progress >= PROGRESS_EVERY_S or not remaining):
                progress(topic, read, total)
                last_progress = now
        return read
    except KafkaError as exc:
        raise _unreachable(settings, exc) from exc
    finally:
        await consumer.stop()


async def read_dead_letters(settings: Settings, progress: Progress | None = None,
                            keep: Callable[[Mapping[str, Any]], bool] | None = None) -> tuple[list[dict[str, Any]], int]:
    """The ``DeadLetter`` records on the dead-letter topic that ``keep`` accepts (None: all), in topic order,
    and how many records could not be decoded (skipped, counted). Only the kept ones stay in memory: the
    topic holds every body ever rejected, up to ENX_MAX_BODY_BYTES each."""
    codec = default_codec()
    letters: list[dict[str, Any]] = []
    undecodable = 0

    def handle(record: Record) -> None:
        nonlocal undecodable
        try:
            letter = codec.decode(record.value or b"", "DeadLetter")
        except Exception:  # noqa: BLE001 - a foreign record on the topic is counted, not fatal
            undecodable += 1
            return
        if keep is None or keep(letter):
            letters.append({**letter, "_at": f"{settings.topic('deadletter')}/{record.partition}/{record.offset}"})

    await scan(settings, settings.topic("deadletter"), handle, progress)
    return letters, undecodable


def ledger_topic(settings: Settings) -> str:
    return settings.topic("redrive")


async def read_ledger(settings: Settings, progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """The redrive ledger: dead letter id -> its latest record."""
    ledger: dict[str, dict[str, Any]] = {}

    def handle(record: Record) -> None:
        if record.key is None:
            return
        key = record.key.decode("utf-8", "replace")
        if record.value is None:  # a tombstone: forgotten on purpose
            ledger.pop(key, None)
            return
        try:
            ledger[key] = json.loads(record.value)
        except ValueError:
            return

    await scan(settings, ledger_topic(settings), handle, progress)
    return ledger


async def ensure_ledger(settings: Settings) -> None:
    """Create the ledger topic (compacted, one partition) if it is missing."""
    try:
        await ensure_topics(settings.kafka_bootstrap, [TopicSpec(ledger_topic(settings), 1, dict(COMPACTED))],
                            settings.kafka_replication)
    except TopicConflict as exc:
        raise DeadLettersError(f"the redrive ledger {ledger_topic(settings)} exists but is not usable ({exc}); "
                               f"it must be compacted (cleanup.policy=compact), or it loses what was redriven") from exc
    except (KafkaError, OSError) as exc:
        raise _unreachable(settings, exc) from exc


class Appender:
    """An idempotent ``acks=all`` producer for the webhook log and the ledger."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, **DURABLE_PRODUCER,
                                         request_timeout_ms=REQUEST_TIMEOUT_MS,
                                         linger_ms=5, max_request_size=MAX_MESSAGE_BYTES)  # a record ~2x its body

    async def __aenter__(self) -> Appender:
        try:
            await self.producer.start()
        except (KafkaError, OSError) as exc:
            await self.producer.stop()
            raise _unreachable(self.settings, exc) from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def send_all(self, topic: str, records: Iterable[tuple[bytes | None, bytes, Mapping[str, bytes]]],
                       timeout_s: float = 60.0) -> list[str]:
        """Send every (key, value, headers) and wait until each is acknowledged; ``topic/partition/offset``
        of each, in order."""
        try:
            futures = [await self.producer.send(topic, value, key=key, headers=list(headers.items()))
                       for key, value, headers in records]
            metadata = await asyncio.wait_for(asyncio.gather(*futures), timeout=timeout_s)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            raise BrokerUnavailable(f"Kafka at {self.settings.kafka_bootstrap} did not acknowledge the writes to "
                                    f"{topic} ({exc!r}); run the command again once it is back: what was "
                                    f"written is recognised and not written twice") from exc
        return [f"{m.topic}/{m.partition}/{m.offset}" for m in metadata]
