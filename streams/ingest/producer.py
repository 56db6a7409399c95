"""The durable producer: a record is durable once Kafka acknowledged it (acks=all, idempotent producer)
or, while Kafka is unreachable, once it is fsynced in the spool, which is replayed in order when Kafka
returns. While the spool holds anything, new records go behind it, so the log keeps arrival order.

An idempotent aiokafka producer retries a send for ever while the broker is away. So a send not
acknowledged within ``SEND_TIMEOUT_S`` abandons that producer: its sender task is cancelled before anything
else happens, so none of its buffered records can reach Kafka later, and the record goes to the spool. A
record is therefore never both buffered and spooled; the one exception is a batch already on the wire when
the broker died after writing it but before answering, which can appear twice with the same ``event_id``
(every projection deduplicates by it).

While Kafka is unreachable the spool grows up to ``ENX_SPOOL_MAX_BYTES`` and never past
``ENX_SPOOL_MIN_FREE_BYTES`` of free disk; beyond, :meth:`DurableProducer.deliver` raises
:class:`SpoolFull` (ingest answers 503 with ``Retry-After``) and stores nothing.

An error that no retry can fix (:func:`streams.ingest.failures.permanent`: a record too large, an invalid
record, a refused authorisation, an unknown topic) is the failure of that one record, never "Kafka is
away": :meth:`DurableProducer.deliver` raises :class:`RecordRefused` and nothing is acknowledged. A spool
frame that fails for itself on replay (too large, invalid) is moved aside (a quarantine file holding it
whole, and a dead letter naming that file and the reason), and the replay goes on with the frames behind
it; one refused for its topic or an authorisation is kept, as every frame would be refused alike.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams import internals
from streams.broker.limits import MAX_MESSAGE_BYTES
from streams.broker.replication import DURABLE_PRODUCER
from streams.ingest.failures import OF_THE_RECORD, permanent
from streams.ingest.metrics import IngestMetrics
from streams.ingest.spool import Frame, Spool, encode_frame

log = logging.getLogger("streams.ingest")
REQUEST_TIMEOUT_MS = 4000
SEND_TIMEOUT_S = 5.0
RETRY_S = 1.0
REPLAY_BATCH = 500  # spool frames sent before their acknowledgements are awaited


class SpoolFull(Exception):
    """Kafka is unreachable and the spool has no room for this record: nothing was stored."""


class RecordRefused(Exception):
    """Kafka refused this record for good (``reason`` from :mod:`streams.ingest.failures`); not an outage."""

    def __init__(self, reason: str, error: BaseException) -> None:
        super().__init__(f"{reason}: {error!r}")
        self.reason = reason
        self.error = error


async def _abandon(producer: AIOKafkaProducer) -> None:
    """Close a producer WITHOUT flushing: cancel its sender first, so no buffered record is ever sent."""
    await internals.close_without_flush(producer)


async def send_acked(producer: AIOKafkaProducer, topic: str, value: bytes, key: bytes | None) -> None:
    """Send and wait for the acknowledgement, at most SEND_TIMEOUT_S (raises TimeoutError).

    ``asyncio.timeout`` rather than ``wait_for``, which wraps what it awaits in a task of its own (two per
    request, 7% of ingest's time)."""
    async with asyncio.timeout(SEND_TIMEOUT_S):
        future = await producer.send(topic, value, key=key)
    async with asyncio.timeout(SEND_TIMEOUT_S):
        await asyncio.shield(future)  # a timeout must not cancel the record itself: it may still be sent


class DurableProducer:
    def __init__(self, bootstrap: str, spool_dir: Path, metrics: IngestMetrics,
                 dead_letter: Callable[[str, str], bytes] | None = None, dead_letter_topic: str = "",
                 spool_max_bytes: int = 1024 ** 3, spool_min_free_bytes: int = 256 * 1024 ** 2) -> None:
        """``dead_letter(reason, quarantine_path)``: the encoded DeadLetter, for ``dead_letter_topic``, saying
        why a spool frame was moved aside (None: the quarantine file and the log only)."""
        self.bootstrap = bootstrap
        self.spool = Spool(spool_dir)
        self.quarantine_dir = Path(spool_dir) / "quarantine"
        self.dead_letter = dead_letter
        self.dead_letter_topic = dead_letter_topic
        self.spool_max_bytes = spool_max_bytes
        self.spool_min_free_bytes = spool_min_free_bytes
        self.metrics = metrics
        self.producer: AIOKafkaProducer | None = None
        self.kafka_ok = False
        self._lock = asyncio.Lock()
        self._replayer: asyncio.Task | None = None
        self._closing = False

    async def start(self) -> None:
        await self._connect()
        self._replayer = asyncio.create_task(self._replay_forever())
        self.metrics.spool_depth.set(self.spool.pending_bytes())

    async def _connect(self) -> bool:
        if self.producer is not None:
            return True
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, **DURABLE_PRODUCER,
                                    request_timeout_ms=REQUEST_TIMEOUT_MS, linger_ms=2,
                                    max_request_size=MAX_MESSAGE_BYTES)
        try:
            await producer.start()
        except (KafkaError, OSError) as exc:
            log.warning("Kafka at %s is unreachable (%s); accepted events go to the spool", self.bootstrap, exc)
            await producer.stop()
            return False
        self.producer = producer
        return True

    async def _drop_producer(self) -> None:
        producer, self.producer = self.producer, None
        self.kafka_ok = False
        if producer is not None:
            try:
                await asyncio.wait_for(_abandon(producer), timeout=5)
            except Exception:  # noqa: BLE001 - it is being thrown away
                pass

    async def deliver(self, topic: str, key: bytes | None, value: bytes) -> str:
        """Make one record durable; returns ``"kafka"`` or ``"spool"``. Raises :class:`RecordRefused` when
        Kafka refuses this record for good (nothing stored), anything else only if both Kafka and the spool
        fail."""
        started = time.perf_counter()
        try:
            async with self._lock:
                direct = self.kafka_ok and self.producer is not None and self.spool.pending_bytes() == 0
            if direct:
                producer = self.producer
                try:
                    await send_acked(producer, topic, value, key)  # type: ignore[arg-type]
                    self.metrics.durable_by.labels("kafka").inc()
                    return "kafka"
                except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                    reason = permanent(exc)
                    if reason is not None:
                        log.error("Kafka refused a record for %s (%r): answered as an error, not stored", topic, exc)
                        # a batch refused by the broker leaves the idempotent producer's sequence numbers for
                        # that partition behind: a fresh producer (the spool holds the records meanwhile)
                        if self.producer is producer:
                            await self._drop_producer()
                        raise RecordRefused(reason, exc) from exc
                    log.warning("Kafka did not acknowledge (%r); spooling until it is back", exc)
                    if self.producer is producer:
                        await self._drop_producer()
            async with self._lock:
                if not self.spool_has_room(len(value) + len(key or b"") + len(topic)):
                    raise SpoolFull(f"Kafka at {self.bootstrap} is unreachable and the spool is full "
                                    f"({self.spool.size()} bytes; ENX_SPOOL_MAX_BYTES {self.spool_max_bytes}, "
                                    f"ENX_SPOOL_MIN_FREE_BYTES {self.spool_min_free_bytes} free on disk)")
                await asyncio.to_thread(self.spool.append, topic, key, value)
            self.metrics.durable_by.labels("spool").inc()
            self.metrics.spool_depth.set(self.spool.pending_bytes())
            return "spool"
        finally:
            self.metrics.produce_latency.observe(time.perf_counter() - started)

    def direct(self) -> bool:
        """Whether a record would go to Kafka directly now (Kafka acknowledges, nothing waits in the spool)."""
        return self.kafka_ok and self.producer is not None and self.spool.pending_bytes() == 0

    async def send_to_every_partition(self, topic: str, value_of: Callable[[int], bytes]) -> bool:
        """Send ``value_of(partition)`` (no key) to every partition of ``topic`` and await the acknowledgements;
        False, with nothing spooled, when Kafka did not acknowledge them all (the watermarks: written only
        while ingest delivers directly, never spooled, streams/ingest/watermark.py)."""
        producer = self.producer
        if producer is None:
            return False
        futures: list[asyncio.Future] = []
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                partitions = sorted(await producer.partitions_for(topic))
                for p in partitions:
                    futures.append(await producer.send(topic, value_of(p), partition=p))
                for future in futures:
                    await asyncio.shield(future)
            return bool(partitions)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            log.info("a watermark was not acknowledged (%r); the next one carries on", exc)
            for future in futures:
                future.add_done_callback(_retrieve)
            return False

    def spool_has_room(self, nbytes: int = 64 * 1024) -> bool:
        """Whether the spool can take a record of ``nbytes`` (by default: a typical webhook's, for /readyz)."""
        return self.spool.writable() and self.spool.room_for(nbytes, self.spool_max_bytes, self.spool_min_free_bytes)

    async def _replay_once(self) -> None:
        """Hand the spool to Kafka, a batch of frames at a time: the batch is sent pipelined (the idempotent
        producer keeps its order), the acknowledgements awaited in order, and the marker moved once per run
        of acknowledged frames. A frame Kafka refuses for itself is moved aside; an outage (or a refusal that
        would hit every frame) stops the replay where it is, to be retried."""
        if not await self._connect():
            return
        while self.spool.pending_bytes() > 0:
            frames = await asyncio.to_thread(self.spool.pending, REPLAY_BATCH)
            if not frames:
                if await asyncio.to_thread(self.spool.repair):  # a corrupt frame at the marker: moved aside
                    self.metrics.spool_depth.set(self.spool.pending_bytes())
                    continue
                break
            done, failure = await self._send_run(frames)
            if done:
                await asyncio.to_thread(self.spool.ack, frames[done - 1].end, done)
                self.metrics.spool_depth.set(self.spool.pending_bytes())
            if failure is None:
                continue
            exc = failure
            reason = permanent(exc)
            if reason not in OF_THE_RECORD:
                if reason is None:
                    log.warning("replaying the spool failed (%s); retrying", exc)
                else:  # every frame would fail alike: wait for the fix, keep them all
                    log.error("Kafka refuses ingest's records (%s, %r): fix the topic or ingest's access; "
                              "the spool keeps them meanwhile", reason, exc)
                await self._drop_producer()
                return
            refused = frames[done]
            await self._quarantine(refused, reason, exc)
            await asyncio.to_thread(self.spool.ack, refused.end, 1)
            self.metrics.spool_depth.set(self.spool.pending_bytes())
        async with self._lock:
            if self.spool.pending_bytes() == 0:
                await asyncio.to_thread(self.spool.reset_if_drained)
                if not self.kafka_ok:
                    log.info("Kafka at %s is reachable; the spool is drained", self.bootstrap)
                self.kafka_ok = True

    async def _send_run(self, frames: list[Frame]) -> tuple[int, BaseException | None]:
        """Send ``frames`` pipelined and await their acknowledgements in order: how many from the first were
        acknowledged, and the error of the next one (None when all were)."""
        producer = self.producer
        assert producer is not None
        futures: list[asyncio.Future] = []
        failure: BaseException | None = None
        for frame in frames:
            try:
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    futures.append(await producer.send(frame.topic, frame.value, key=frame.key))
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:  # refused before sending, e.g. too large
                failure = exc
                break
        for i, future in enumerate(futures):
            try:
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await asyncio.shield(future)
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                for later in futures[i + 1:]:  # resent by the next replay; their outcome is not needed
                    later.add_done_callback(_retrieve)
                return i, exc
        return len(futures), failure

    async def _quarantine(self, frame: Frame, reason: str, exc: BaseException) -> None:
        """Move a frame Kafka refuses for good out of the way: fsynced whole into ``quarantine/`` (a spool file
        of one frame), then a dead letter naming it; the caller acknowledges it so the frames behind it go on."""
        path = self.quarantine_dir / f"{int(time.time() * 1000)}-{frame.end}-{reason}.spool"
        await asyncio.to_thread(_write_durably, path, encode_frame(frame.topic, frame.key, frame.value))
        log.error("spool frame for %s refused by Kafka for good (%r): moved to %s", frame.topic, exc, path)
        if self.dead_letter is not None and self.dead_letter_topic:
            letter = self.dead_letter(f"spool_undeliverable: {reason}: {exc!r}", str(path))
            try:
                await send_acked(self.producer, self.dead_letter_topic, letter, None)  # type: ignore[arg-type]
            except (KafkaError, OSError, asyncio.TimeoutError) as letter_exc:
                log.warning("the dead letter for %s was not written (%r); the quarantine file keeps the record",
                            path, letter_exc)
        self.metrics.quarantined.inc()

    async def _replay_forever(self) -> None:
        while not self._closing:
            try:
                if not self.kafka_ok or self.spool.pending_bytes() > 0:
                    await self._replay_once()
            except Exception:  # noqa: BLE001 - keep replaying; the spool is durable
                log.exception("spool replay failed; retrying")
            await asyncio.sleep(RETRY_S)  # retry interval while Kafka is away

    async def flush(self, timeout_s: float = 10.0,
                    last_words: Callable[[], Awaitable[object]] | None = None) -> None:
        """On shutdown: try to hand the spool to Kafka; what is left stays fsynced for the next start.
        ``last_words`` runs after that, before the producer stops (the leaving watermark)."""
        self._closing = True
        if self._replayer is not None:
            self._replayer.cancel()
        if self.spool.pending_bytes() and self.producer is not None:
            try:
                await asyncio.wait_for(self._replay_once(), timeout=timeout_s)
            except Exception:  # noqa: BLE001
                log.info("%d spooled bytes wait for the next start", self.spool.pending_bytes())
        if last_words is not None:
            try:
                await asyncio.wait_for(last_words(), timeout=timeout_s)
            except Exception:  # noqa: BLE001 - best effort: without it the watch waits out the instance's lease
                log.info("the leaving watermark was not written")
        if self.producer is not None:
            try:
                await asyncio.wait_for(self.producer.stop(), timeout=timeout_s)
            except asyncio.TimeoutError:
                await _abandon(self.producer)  # every 202 is already durable: nothing is lost
        self.spool.close()


def _write_durably(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _retrieve(future: asyncio.Future) -> None:
    """Mark a future's outcome as seen (no "exception was never retrieved" for a record sent again)."""
    if not future.cancelled():
        future.exception()
