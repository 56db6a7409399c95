"""The processor's faust app: the state tables, the agent that owns them, and the SLA watch.

- Tables (rules.TABLES), each keyed ``{app_id}/{conf_num}`` and backed by its changelog topic
  (``<app id>-<table>-changelog``, the webhook log's partition count): ``session_end`` (the ``roomdrop``
  and event types without a stage), ``recording``, ``transcoded`` (and the recorded stall), ``delivered``
  (``file-transfer``) and ``chat`` (``chatdata``). A session's state is the combination of its parts
  (rules.combine). A worker killed with SIGKILL loses nothing: the next owner of a partition restores
  the tables from the changelogs and re-processes what was not committed (merging is idempotent).
- One agent consumes the webhook log, the reconciler's findings (``<prefix>reconcile.v1``: what EnableX's
  Server API holds that no webhook brought, kept in the ``reconciled`` table, rules.on_finding) and the
  processor's command topic (same partition count, same keys, so a session's events, findings and commands
  reach the worker that owns its table partitions; a rebuild replays the findings with the log). It is the only
  writer of the tables, event by event, and writes them through output.py, never ``table[key] = ...``:
  faust's own table write sends the changelog record through its producer buffer, ahead of the
  snapshot, which would break the order at-least-once needs. faust's consumer hands it the records
  straight to an inbox (lean_consumer.LeanConsumer), without faust's per-record tasks, events, queue and stream iterator.
- Every change is published as a versioned ``SessionState`` snapshot on the compacted sessions topic (a
  tombstone when the session leaves the tables after its retention), the latest per session at each
  commit (output.py), and every alert of the transition on the alerts topic, with its deterministic
  ``alert_id``; both on the event's partition. Handling an event awaits nothing: it is judged, published
  and written in one step of the event loop, which no rebalance or table restore can enter.
- The SLA watch (watch.py) runs on every worker every ``SWEEP_INTERVAL_S`` and decides stalls and
  expiries for the sessions of its own active partitions; its commands reach the owning agent through
  the command topic, and the agent re-judges and applies them.
- An event whose judgement fails (the rules, or the encoding of its alerts, raise: a record no version of
  the rules foresaw, a value the schemas cannot hold, which the rules check for the snapshot) is not
  applied: it goes to the dead-letter topic (reason ``processor_failed: ...``, source
  ``topic/partition/offset``, an id derived from those) and acked once a later event has been handled,
  so one bad record neither stops its partition nor holds its commits back. A worker that sees too many
  of them stops instead (rejects.py), and, having acked none since its last handled event, a restarted
  worker stops at the same place.
  Failures to write to Kafka are not dead-lettered: they stop the commits (output.py).
- Two guards against faust-streaming 0.15.3 losing webhook records around a rebalance (both found by the
  worker-kill fault test, both logged when they act): the agent checks that it receives every offset of
  the log and reads a missing run back itself (gaps.py); the watch puts a partition that delivers nothing
  while records wait back on the consumer (``check_progress``). A third, for the tables' restore: a changelog
  partition the restore stopped reading is sought again (restore_watch.py).

Guarantees: at-least-once with idempotent effects. Offsets are committed after the snapshot, alert and
then changelog records of what was processed are acknowledged, in that order (output.py); a worker killed
in between leaves its successor either an uncommitted event to process again or a change whose snapshot
and alerts are already out, so re-processing it, which changes nothing, loses nothing.

Test-only environment variables (not ENX_ settings; production never sets them):
- ``ENXTEST_CLOCK_OFFSET_S``: shift this process's wall clock by that many seconds (the retention test
  lets days pass with it);
- ``ENXTEST_PROCESSOR_GROUP``: use this app id instead of ``<prefix>processor`` (its consumer group,
  changelog and command topic names), so a test can replay the log as a brand-new consumer group.

Set by ``enx-streams rebuild`` for its own processors (never set it yourself):
- ``ENXREBUILD_ALERTS_TOPIC``: publish the alerts there instead of ``<prefix>alerts.v1``, so a replay does not
  page the consumers of the alerts topic again (streams/rebuild/ forwards those that are new).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import faust
import orjson
from faust.types import TP, Message

from streams import dead_letters, internals, watermark
from streams.avro import default_codec
from streams.broker.limits import MAX_MESSAGE_BYTES
from streams.broker.replication import DURABLE_PRODUCER
from streams.broker.topics import COMPACTED, TopicSpec
from streams.config import Settings
from streams.processor import rules
from streams.processor.gaps import Continuity, LogReader
from streams.internals import lean_consumer
from streams.processor.inbox import Inbox
from streams.processor.metrics import ProcessorMetrics
from streams.processor.names import app_id, changelog_topic, command_topic, internal_topics, \
    published_alerts_topic  # noqa: F401
from streams.processor.output import Output
from streams.processor.reach import BrokerProbe
from streams.processor.rejects import REASON, RejectLimit, TooManyRejects
from streams.processor.restore_buffer import RestoreBuffer
from streams.processor.restore_watch import RestoreWatch
from streams.processor.watch import DueIndex, PartitionClock, Resend, next_due, partition_of, sweep

log = logging.getLogger("streams.processor")
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
SWEEP_INTERVAL_S = 2.0
STALL_WARN_S = 10.0  # a partition with records waiting that delivered nothing for this long is put back on
PRODUCER_LINGER_S = 0.02  # records produced within 20 ms share a produce request (0: one request each)
# A record batch's size: a flush sends a commit interval's records, one batch after another per partition, each
# waiting for the one before it to leave (aiokafka's 16 KiB: about fifty produce round trips per flush). Below
# the broker's default message.max.bytes (1 MiB).
PRODUCER_BATCH_BYTES = 512 * 1024
# Records the consumer may hand the agent ahead of it (inbox.Inbox): about a fetch (1 MiB per partition), so that
# the consumer fetches and parses the next one while the agent works through this one.
INBOX_RECORDS = 20_000
YIELD_EVERY = 200  # events handled between two turns of the event loop (the sender, the watch, the fetcher)
HELD_POLL_S = 0.05  # with events held during a restore, how often the agent looks whether it has ended
REINDEX_CHUNK = 1000  # sessions indexed between two yields to the event loop after a rebalance
# Records read back before a partition's committed offset after a rebalance, for the ingest instances' latest
# watermarks (about one per instance and second): what a worker taking the partition over knew nothing of.
MARKS_TAIL = 5000


class StaleEvent(Exception):
    """The event being handled stopped being this worker's to apply (a rebalance or a restore began)."""


class Rejected(Exception):
    """The event was dead-lettered (``reject``): not applied, and acked only once a later event is handled."""


def default_clock() -> Callable[[], float]:
    offset = float(os.environ.get("ENXTEST_CLOCK_OFFSET_S", "0") or 0)
    return (lambda: time.time() + offset) if offset else time.time


def consumer_state(app: faust.App) -> str:
    """What faust's consumer says about its flow, for a warning (private attributes, read defensively)."""
    consumer = app.consumer

    def named(value: Any) -> Any:
        return sorted(f"{tp.topic.rsplit('.', 1)[-1]}:{tp.partition}" for tp in value) if isinstance(value, set) \
            else value

    sets = {"flow_active": getattr(consumer, "flow_active", "?"), **internals.flow_sets(consumer)}
    parts = [f"{name}={named(value)}" for name, value in sets.items()]
    parts.append(f"flow_control={'active' if app.flow_control.is_active() else 'suspended'}")
    try:
        paused = internals.aiokafka_paused(consumer)
        parts.append(f"aiokafka_paused={'?' if paused is None else named(paused)}")
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        parts.append(f"aiokafka=<{exc!r}>")
    return ", ".join(parts)


def create_app(settings: Settings, clock: Callable[[], float] | None = None,
               metrics: ProcessorMetrics | None = None) -> faust.App:
    """The processor app for ``settings``; ``clock`` (Unix seconds) is the watch's wall clock; ``metrics``
    what it counts for the worker's /metrics (metrics.py)."""
    clock = clock or default_clock()
    metrics = metrics or ProcessorMetrics()
    codec = default_codec()
    sla_s = settings.transcode_sla_seconds
    retention_s = settings.state_retention_seconds
    log_topic = settings.topic("webhooks")
    app = faust.App(
        app_id(settings),
        broker=[f"kafka://{b}" for b in settings.kafka_bootstrap.split(",")],
        store="memory://",  # the changelogs are the durable state; a worker restores from them
        datadir=str(settings.data_dir / "processor"),
        web_enabled=False,
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10.0,  # a killed worker's partitions move after at most this
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        # commits by the interval only: faust's count-based commit runs in its fetch loop, which hands the agent
        # nothing while the commit's flush waits for Kafka; its timer commits beside it
        broker_commit_every=2**31 - 1,
        stream_wait_empty=False,
        producer_acks=-1,
        producer_linger=PRODUCER_LINGER_S,
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        # a processor dead letter can carry a log record whole: the dead-letter topic's budget, not 1 MB
        producer_max_request_size=MAX_MESSAGE_BYTES,
    )
    # faust's consumer, handing the agent's records straight to it (lean_consumer.LeanConsumer)
    inbox = Inbox(INBOX_RECORDS)
    reconcile_topic = settings.topic("reconcile")
    lean_consumer.install(app, {log_topic: inbox, command_topic(settings): inbox, reconcile_topic: inbox})
    commands = app.topic(command_topic(settings), partitions=settings.partitions, internal=True, **RAW)
    sessions_topic, alerts_topic = settings.topic("sessions"), published_alerts_topic(settings)
    tables = {name: app.Table(name, default=None, partitions=settings.partitions,
                              help=f"session parts: {name}") for name in rules.TABLES}
    if any((t.key_serializer, t.value_serializer) != ("json", "json") for t in tables.values()):
        raise RuntimeError("the processor's tables must have JSON changelogs: write() encodes them with orjson")
    clocks = PartitionClock(clock, settings.ingest_lease_s)
    probe = BrokerProbe(settings.kafka_bootstrap, log_topic)
    resend = Resend(clock)
    index = DueIndex()
    # the index is rebuilt from the tables after every rebalance (tables restored from changelogs)
    reindex = {"needed": True, "generation": 0}

    internals.make_durable(app.producer, DURABLE_PRODUCER)
    output = Output.install(app)
    # the memory stores' dicts, read and written directly: the tables' own get() and set() add sensors, key
    # lookups and a changelog send per call (faust's memory store keeps one dict for good). Taken at first
    # use: a store is created on the worker's event loop.
    stores: dict[str, dict] = {}
    changelogs = {name: table.changelog_topic.get_topic_name() for name, table in tables.items()}

    def parts_of(name: str) -> dict[str, dict | None]:
        if not stores:
            stores.update({t: internals.memory_store(tables[t]) for t in rules.TABLES})
        return {t: store.get(name) for t, store in stores.items()}

    def write(name: str, partition: int, change: rules.Transition) -> None:
        """The parts into the stores, and held for their changelogs (the event's partition, as faust's
        table write does), which output.py sends after this event's snapshot and alerts. Encoded as the
        tables' json serializer does (orjson, for these plain dicts the same bytes), without its registry."""
        key = None
        for t, part in change.writes.items():
            store = stores[t]  # filled: the change was judged on parts_of
            if part is None:
                if name not in store:
                    continue
                del store[name]
                value = None
            else:
                store[name] = part
                value = orjson.dumps(part)
            if key is None:
                key = orjson.dumps(name)
            output.hold(changelogs[t], partition, key, value)

    def encode_state(state: dict) -> bytes:
        return codec.encode("SessionState", state)

    def rendered(change: rules.Transition) -> list[bytes]:
        """The alerts of ``change``, encoded: a value the schema cannot hold raises here, before anything is
        applied. (Its snapshot is encoded at the flush, once per session however often it changed; the rules
        refuse the one value they could compute that it cannot hold, rules.derive.)"""
        return [codec.encode("SlaAlert", a) for a in change.alerts] if change.alerts else []

    def publish(key: bytes, partition: int, change: rules.Transition, alerts: list[bytes]) -> None:
        """The alerts and the snapshot of ``change``, on the event's partition (the same keys and partition
        count as the log: the default partitioner's choice), sent by the next flush (output.py)."""
        for alert in alerts:
            output.publish(alerts_topic, partition, key, alert)
        if change.changed:
            after = change.after
            output.publish_latest(sessions_topic, partition, key, after, None if after is None else encode_state)
        for alert in change.alerts:
            metrics.alerts[alert["kind"]] += 1
            log.info("alert %s for %s (deadline %s)", alert["kind"], key.decode(), alert["deadline"])

    rejects = RejectLimit()
    deadletter_topic = settings.topic("deadletter")

    async def reject(tp: TP, offset: int, key: bytes | None, raw: bytes, exc: Exception, then: str,
                     identity: str = "") -> None:
        """An event whose judgement raised: to the dead-letter topic (sent at once, so the commit that passes
        it waits for it, output.py) and not applied; raises :class:`Rejected` (or :class:`TooManyRejects`,
        rejects.py). ``raw``: the body EnableX sent (a command's own JSON); ``then``: what becomes of it."""
        if not live():  # judged against tables that were no longer this worker's: not the event's fault
            raise StaleEvent(f"{tp.topic}[{tp.partition}] offset {offset}: a rebalance or a table restore began "
                             f"before its failure was dead-lettered")
        reason = f"{REASON}: {type(exc).__name__}: {exc}"[:1000].encode("utf-8", "replace").decode()
        letter = dead_letters.for_record("processor", tp.topic, tp.partition, offset, int(clock() * 1000), raw, key,
                                         (), reason, identity=identity)
        await output.send(deadletter_topic, None, codec.encode("DeadLetter", letter))
        log.error("%s[%d] offset %d (key %r) could not be processed and was not applied: %s. It is on %s as %s. %s",
                  tp.topic, tp.partition, offset, key, reason, deadletter_topic, letter["id"], then, exc_info=exc)
        metrics.rejected[tp.topic] += 1
        rejects.failed()  # raises when too many have failed recently
        raise Rejected(letter["id"])

    partition_heard: dict[int, float] = {}  # webhook partition -> when the agent last received from it
    continuity = Continuity()
    reader = LogReader(settings.kafka_bootstrap, log_topic)

    taken = {"generation": -1}  # the consumer generation of the event being handled

    def settling() -> bool:
        """A rebalance has begun and faust has not finished it: from the revocation to "Worker ready", which
        restores the tables and only then seeks the stream partitions to the committed offsets. Until
        that seek faust's consumer has forgotten the committed offsets of the partitions it keeps (so
        neither its acks nor gaps.py can tell where a partition starts), and the flow is resumed during
        the restore. The agent holds what it takes meanwhile (see ``process``)."""
        return app.in_recovery or app.rebalancing

    def live() -> bool:
        """Whether the event being handled is still this worker's to apply: not when a rebalance has begun
        (faust suspends the flow) or ended (a new generation) since it was taken, as faust's own stream
        iterator judges it. Its partition may have moved; its owner processes it from the commit.

        Nor while faust settles a rebalance (``settling``), which its iterator does not check."""
        return (app.flow_control.is_active() and not settling()
                and app.consumer_generation_id == taken["generation"])

    def apply(name: str, key: bytes, partition: int, change: rules.Transition, alerts: list[bytes]) -> None:
        # ``change`` was judged just now, with no await since (the callers compute it just before the call):
        # against restored tables if this is still live. Not so after an await, e.g. a hole's records read back.
        # Nothing here awaits: the change is published and written in one step of the event loop, which no
        # rebalance or restore can enter.
        if not live():
            raise StaleEvent(f"{name}: a rebalance or a table restore began before its event was judged")
        publish(key, partition, change, alerts)
        write(name, partition, change)
        index.set(name, partition, next_due(change.after, retention_s))

    async def on_webhook(partition: int, offset: int, key: bytes | None, value: bytes) -> None:
        try:
            record = codec.decode(value, "WebhookEvent")
        except Exception as exc:  # noqa: BLE001 - a record we cannot read must not stop the log
            log.warning("skipping an undecodable record at %s[%d] offset %d: %s", log_topic, partition, offset, exc)
            clocks.saw(partition, None, offset)
            return
        clocks.saw(partition, record["received_at"], offset)
        if watermark.is_mark(record):
            mark_of(partition, offset, record)
            return
        if not key or record.get("conf_num") is None:
            return  # not a session event: kept in the log and ClickHouse, no session state
        try:
            name = key.decode()
            change = rules.on_event(parts_of(name), record, sla_s, now_ms=clocks.bound(partition))
            alerts = rendered(change)
        except Exception as exc:  # noqa: BLE001 - pure (the record, its session's state): fails in any worker
            await reject(TP(log_topic, partition), offset, key, (record.get("raw") or "").encode("utf-8", "replace"),
                         exc, "It stays in the log: once the cause is fixed, `enx-streams rebuild` processes it again")
        rejects.passed()
        apply(name, key, partition, change, alerts)

    def mark_of(partition: int, offset: int, record: dict) -> None:
        """An ingest instance's watermark: the partition's clock, never a session event (watermarks.py)."""
        try:
            clocks.marked(partition, watermark.parse(record))  # type: ignore[arg-type]
        except ValueError as exc:
            log.warning("%s[%d] offset %d: %s; it does not move the SLA watch", log_topic, partition, offset, exc)

    async def fill(tp: TP, holes: range) -> None:
        """Process the records faust never delivered (gaps.py), then let its commit pass them."""
        log.warning("%s[%d] offsets %d..%d never reached the agent (dropped by faust around a rebalance): "
                    "reading them back", tp.topic, tp.partition, holes.start, holes.stop - 1)
        try:
            records = await reader.read(tp.partition, holes)
        except Exception as exc:  # noqa: BLE001 - the commit stays behind the hole: a restart re-reads it
            log.error("%s[%d] offsets %d..%d could not be read back (%r); they are processed again when this "
                      "worker restarts", tp.topic, tp.partition, holes.start, holes.stop - 1, exc)
            return
        for r in records:
            try:
                await on_webhook(tp.partition, r.offset, r.key, r.value)
                metrics.handled[tp.topic] += 1
            except Rejected:
                pass  # dead-lettered; acked with the hole below (a hole's records are not held back)
        internals.mark_acked(app.consumer, tp, holes)

    async def on_finding(tp: TP, offset: int, key: bytes | None, value: bytes) -> None:
        """A finding of the reconciler (what EnableX's Server API holds that no webhook brought), judged like a
        webhook of its missing type and kept apart from the webhooks' parts (rules.on_finding)."""
        try:
            finding = codec.decode(value, "ReconcileFinding")
        except Exception as exc:  # noqa: BLE001 - as for the log: a record we cannot read must not stop it
            log.warning("skipping an undecodable record at %s[%d] offset %d: %s", tp.topic, tp.partition, offset, exc)
            return
        if not key:
            return
        try:
            name = key.decode()
            change = rules.on_finding(parts_of(name), finding, sla_s)
            alerts = rendered(change)
        except Exception as exc:  # noqa: BLE001 - pure, as for a webhook
            await reject(tp, offset, key, orjson.dumps(finding), exc,
                         "It stays on the reconcile topic: once the cause is fixed, `enx-streams rebuild` processes "
                         "it again")
        rejects.passed()
        apply(name, key, tp.partition, change, alerts)

    async def handle(message: Message) -> None:
        """One record of the agent's topics: a webhook of the log, a finding of the reconciler, or a command of
        the SLA watch."""
        tp, key = message.tp, message.key
        if tp.topic == reconcile_topic:
            await on_finding(tp, message.offset, key, message.value)
            return
        if tp.topic == log_topic:
            partition = tp.partition
            partition_heard[partition] = time.monotonic()
            holes = continuity.missing(partition, message.offset,
                                       None if continuity.knows(partition) else committed(partition))
            if holes:
                await fill(tp, holes)
            await on_webhook(partition, message.offset, key, message.value)
            return
        if not key:
            return
        try:
            command = json.loads(message.value)
            op, now = command["op"], int(command["now"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("skipping a malformed command for %r: %s", key, exc)
            return
        try:
            name = key.decode()
            change = rules.on_command(parts_of(name), op, now, sla_s, retention_s)
            alerts = rendered(change)
        except Exception as exc:  # noqa: BLE001 - as for a webhook
            # the watch would send it again every RESEND_S, and it would fail the same way until the session's
            # next event: out of the index until then (or the next rebalance's reindex)
            index.set(key.decode("utf-8", "replace"), tp.partition, None)
            # the command topic is recreated by a rebuild: its offsets repeat, the record's time tells them apart
            await reject(tp, message.offset, key, message.value, exc,
                         "The SLA watch sends it again after the next rebalance, or after the session's next event",
                         identity=str(message.timestamp))
        rejects.passed()
        if change.after is None and change.before is not None:
            log.info("session %s left the tables after its retention", name)
        apply(name, key, tp.partition, change, alerts)

    @app.agent(app.topic(log_topic, command_topic(settings), reconcile_topic, **RAW))
    async def process(stream: faust.Stream) -> None:
        """Handles the records of the log and the command topic in the order faust's consumer fetched them,
        and acks each once handled. The agent subscribes faust to the topics (their partitions are assigned
        and committed with the tables'), but its stream stays empty: the consumer hands the records to
        ``inbox`` (lean_consumer.LeanConsumer), without faust's per-record event, conductor, queue and stream iterator (a
        forced event-loop turn, sensors, the current-event context, three nested async generators). What that
        path did for the agent, it does itself: a record of an earlier consumer generation, or one a
        rebalance overtook while it was handled, is not applied nor acked (faust also clears its queues at a
        rebalance; the inbox keeps them until they are judged so). A record whose judgement fails is
        dead-lettered (``reject``) and acked once a later record has been handled; one whose handling raises
        otherwise (Kafka unreachable) is not acked: no commit passes it, and the worker processes it again
        when it restarts.

        A record taken while faust settles a rebalance (restores the tables, seeks the partitions) waits
        until it is done, and is then handled before anything taken after it (restore_buffer.py says why
        it is neither judged meanwhile nor dropped)."""
        await stream.maybe_start()
        held: RestoreBuffer[Message] = RestoreBuffer()
        rejected: list[Message] = []  # dead-lettered, acked once a later record is handled
        handled = 0
        halted = False
        ack = app.consumer.ack

        async def consume(message: Message) -> None:
            nonlocal handled, halted
            if halted:
                return  # the worker is stopping (too many rejects): nothing more is handled nor acked
            taken["generation"] = message.generation_id
            if not live():
                return  # fetched before a rebalance: not acked, the partition's owner processes it
            try:
                await handle(message)
            except StaleEvent as exc:
                log.info("not applied, the partition's owner processes it from the committed offset: %s", exc)
                return
            except Rejected:
                # Not acked yet: if the processor itself is at fault, nothing after its last handled record is
                # committed, and a restarted worker stops at the same place instead of dead-lettering more.
                rejected.append(message)
                return
            except TooManyRejects as exc:
                halted = True
                log.critical("stopping the worker: %s", exc)
                await app.crash(exc)  # the worker exits with an error; the rejected records are not acked
                return
            for earlier in rejected:
                if earlier.generation_id == taken["generation"]:
                    ack(earlier)  # else: revoked meanwhile, the partition's owner re-judges it
            rejected.clear()
            ack(message)
            handled += 1
            metrics.handled[message.tp.topic] += 1
            if handled % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a long backlog never returns to the loop by itself

        # the stream carries only faust's end of the agent (StopAsyncIteration: the worker stops, or the agent
        # is restarted), which faust waits for
        ended = asyncio.ensure_future(stream.channel.queue.get())
        try:
            while True:
                released = held.release(settling())
                if released:
                    log.info("rebalance done: handling the %d records that arrived meanwhile", len(released))
                for message in released:
                    await consume(message)  # re-checks the generation: a rebalance since drops them
                if not len(inbox):
                    waiting = asyncio.ensure_future(inbox.wait())
                    done, _ = await asyncio.wait({waiting, ended}, timeout=HELD_POLL_S if len(held) else None,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    waiting.cancel()
                    if ended in done:
                        if isinstance(ended.exception(), StopAsyncIteration):
                            return  # as faust's own iterator takes it
                        ended.result()  # anything else the stream raises is the agent's crash
                        raise RuntimeError("an event reached the processor's stream instead of its inbox")
                    if not len(inbox):
                        continue  # the restore may have ended
                for taken_message in inbox.take():
                    for message in held.offer(taken_message, settling()):
                        await consume(message)
        finally:
            ended.cancel()

    @app.on_before_shutdown.connect
    async def close_reader(_app: faust.App, **_kwargs: Any) -> None:
        await reader.close()
        await probe.close()

    @app.on_partitions_revoked.connect
    async def forget_revoked(_app: faust.App, revoked: set, **_kwargs: Any) -> None:
        clocks.forget(tp.partition for tp in revoked if tp.topic == log_topic)
        continuity.forget(tp.partition for tp in revoked if tp.topic == log_topic)
        for tp in revoked:
            if tp.topic == log_topic:
                partition_heard.pop(tp.partition, None)
        reindex["generation"] += 1
        reindex["needed"] = True
        index.clear()

    def drop_local() -> None:
        """Forget, in this process only (never in the changelog), the sessions of partitions it no longer
        owns.

        faust's memory store keeps the keys this worker wrote itself after their partition moved away (it
        only drops what it restored), and a stale key could come back to life if the partition returned
        after the owner's tombstone was compacted away. A partition whose changelog is not an active
        recovery partition of this worker has no recovery offset here, so should it come back, faust
        replays its changelog from the start: dropping its keys loses nothing. Synchronous, so the active
        set cannot change underneath."""
        active = app.tables.recovery.active_tps
        for table in tables.values():
            data = internals.memory_store(table)
            if data is None:
                continue
            changelog = table.changelog_topic.get_topic_name()
            keep = {tp.partition for tp in active if tp.topic == changelog}
            for name in [k for k in data if isinstance(k, str) and partition_of(k, settings.partitions) not in keep]:
                del data[name]

    @app.on_rebalance_complete.connect
    async def tables_restored(_app: faust.App, **_kwargs: Any) -> None:
        reindex["generation"] += 1
        reindex["needed"] = True
        drop_local()

    async def recall_marks(assigned: set[int]) -> None:
        """The ingest instances' latest watermarks of the partitions taken over (watermarks.py), read back from
        just before the group's committed offset: without them a worker caught up with a partition would judge
        by the wall clock while an ingest instance spools. Read by the watch before it judges anything."""
        for p in sorted(assigned):
            end = committed(p)
            if clocks.knows_marks(p) or not end:
                continue
            try:
                records = await reader.read(p, range(max(0, end - MARKS_TAIL), end), timeout_s=10.0)
            except Exception as exc:  # noqa: BLE001 - the partition is judged without them (its next watermark)
                log.warning("%s[%d]: the watermarks before offset %d could not be read back (%r); until the next "
                            "one the SLA watch judges the partition by its own clock", log_topic, p, end, exc)
                continue
            recalled = 0
            for r in records:
                try:
                    record = codec.decode(r.value)
                except Exception:  # noqa: BLE001 - the agent dead-letters nothing here: it has processed it
                    continue
                if watermark.is_mark(record):
                    mark_of(p, r.offset, record)
                    recalled += 1
            if recalled:
                log.info("SLA watch: %d watermarks of %s[%d] read back before offset %d; bound %s", recalled,
                         log_topic, p, end, clocks.bound(p))

    async def rebuild_index(assigned: set[int]) -> bool:
        """Index every session of the assigned partitions from the tables; False if a rebalance came."""
        generation = reindex["generation"]
        reindex["needed"] = False
        await recall_marks(assigned)
        names = list({name for table in tables.values() for name in list(table.keys())})
        for start in range(0, len(names), REINDEX_CHUNK):
            for name in names[start:start + REINDEX_CHUNK]:
                partition = partition_of(name, settings.partitions)
                if partition in assigned:
                    index.set(name, partition, next_due(rules.combine(parts_of(name), sla_s), retention_s))
            await asyncio.sleep(0)  # let the agent and the heartbeats run
            if reindex["generation"] != generation:
                return False
        log.info("SLA watch: %d sessions indexed on partitions %s", len(index), sorted(assigned))
        return True

    def highwater(partition: int) -> int | None:
        try:
            return app.consumer.highwater(TP(log_topic, partition))
        except Exception:  # noqa: BLE001 - unknown until the consumer has fetched the partition
            return None

    def committed(partition: int) -> int | None:
        return internals.committed_offset(app.consumer, TP(log_topic, partition))

    async def check_progress(assigned: set[int]) -> None:
        """A partition with records waiting that has delivered nothing for STALL_WARN_S: say so with faust's
        consumer state, and put the consumer back on it (resume it and seek to where this worker stands:
        what it processed, else the group's committed offset, else the start). Re-reading is harmless:
        merging is idempotent. faust-streaming 0.15.3 can leave a partition taken over in a rebalance
        unfetched for good (the worker-kill fault test found it); this is the remedy."""
        now = time.monotonic()
        for p in sorted(assigned):
            heard = partition_heard.setdefault(p, now)  # a partition just assigned gets its grace period
            if now - heard < STALL_WARN_S:
                continue
            end, position = highwater(p), clocks.position(p)
            position = position if position is not None else (committed(p) or 0)
            if end is not None and end <= position:
                continue
            partition_heard[p] = now
            waiting = "end unknown: never fetched" if end is None else f"{end - position} records"
            log.warning("%s[%d]: nothing received for %.0f s while %s wait; seeking it to %d (%s)", log_topic, p,
                        now - heard, waiting, position, consumer_state(app))
            tp = TP(log_topic, p)
            app.consumer.resume_partitions({tp})
            try:
                await app.consumer.seek(tp, position)
            except Exception as exc:  # noqa: BLE001 - tried again after the next grace period
                log.warning("seeking %s[%d] failed: %r", log_topic, p, exc)

    @app.timer(interval=SWEEP_INTERVAL_S)
    async def watch() -> None:
        if settling():
            return  # a rebalance is not done yet (the tables restored, the partitions sought); the agent waits too
        try:
            assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == log_topic}
        except Exception:  # noqa: BLE001 - no consumer yet (starting) or between generations
            return
        if not assigned:
            return
        started = time.monotonic()
        await check_progress(assigned)
        clocks.tick(await probe.answers())  # the lease of a silent ingest instance runs only while it answers
        if reindex["needed"] and not await rebuild_index(assigned):
            return
        resend.prune()
        for name, op, now in sweep(index, lambda n: rules.combine(parts_of(n), sla_s), assigned, clocks,
                                   retention_s, highwater, committed):
            if resend.due(name, op):
                await commands.send(key=name.encode(), value=json.dumps({"op": op, "now": now}).encode())
        metrics.sweep_seconds.observe(time.monotonic() - started)

    restore_watch = RestoreWatch(app, lambda: consumer_state(app))

    @app.on_partitions_assigned.connect
    async def watch_restores(_app: faust.App, *_args: Any, **_kwargs: Any) -> None:
        """A table restore that stopped reading a changelog partition is put back on it (restore_watch.py)."""
        restore_watch.start(SWEEP_INTERVAL_S)

    metrics.watch_sessions(index)
    app.conf.enx_parts = {"tables": tables, "clocks": clocks, "index": index}  # for tests and the worker
    return app
