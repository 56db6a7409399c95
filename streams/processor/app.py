"""The processor's faust app, wired from its parts, one concern each (as Arroyo splits its processing
strategies): state.py (the tables), agent.py (the agent's loop), handlers.py (one record of each topic),
effects.py (what a judged transition publishes and writes), dead_lettering.py (an event whose judgement
failed), rebalance.py (what a rebalance changes), sweeper.py (the SLA watch's timer), restore_watch.py (a
table restore that stopped reading), output.py (how its records reach Kafka).

- Tables (rules.TABLES), each keyed ``{app_id}/{conf_num}`` and backed by its changelog topic
  (``<app id>-<table>-changelog``, the webhook log's partition count): ``session_end`` (the ``roomdrop``
  and event types without a stage), ``recording``, ``transcoded`` (and the recorded stall), ``delivered``
  (``file-transfer``) and ``chat`` (``chatdata``). A session's state is the combination of its parts
  (rules.combine). The tables are on faust's RocksDB store, on this worker's own disk (state.py: one
  directory per worker process, a write-back cache in front, each database a prefix of its changelog with
  that prefix's offset), so memory does not grow with the sessions and a worker that gets a partition back
  restores only the changelog's tail. A worker killed with SIGKILL loses nothing: the next owner of a
  partition restores the tables from the changelogs and re-processes what was not committed (merging is
  idempotent).
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
  the command topic, and the agent re-judges and applies them. Its index (when each session is next due)
  is in memory, rebuilt after every rebalance by reading the tables' databases in key order
  (state.PartStore.scan: a million sessions in about 8 s here); the watch sweeps once it is complete.
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

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import faust

from streams import internals
from streams.avro import default_codec
from streams.broker.limits import MAX_MESSAGE_BYTES
from streams.broker.replication import DURABLE_PRODUCER
from streams.config import Settings
from streams.internals import lean_consumer
from streams.processor.agent import AgentLoop
from streams.processor.dead_lettering import DeadLettering
from streams.processor.effects import Effects
from streams.processor.gaps import Continuity, LogReader
from streams.processor.handlers import RecordHandler
from streams.processor.inbox import Inbox
from streams.processor.metrics import ProcessorMetrics
from streams.processor.names import app_id, changelog_topic, command_topic, internal_topics, \
    published_alerts_topic  # noqa: F401
from streams.processor.output import Output
from streams.processor.reach import BrokerProbe
from streams.processor.rebalance import Rebalances
from streams.processor.restore_watch import RestoreWatch
from streams.processor.state import SessionTables, release_free_memory, take_slot
from streams.processor.sweeper import SWEEP_INTERVAL_S, SlaWatchLoop, consumer_state
from streams.processor.watch import DueIndex, PartitionClock, Resend

log = logging.getLogger("streams.processor")
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
# how often freed heap memory is given back to the system (state.release_free_memory): every 10 s a worker
# that had worked through a backlog of a million sessions held 472 MB, every second 392 to 399 (bench/README.md)
TRIM_INTERVAL_S = 1.0
PRODUCER_LINGER_S = 0.02  # records produced within 20 ms share a produce request (0: one request each)
# A record batch's size: a flush sends a commit interval's records, one batch after another per partition, each
# waiting for the one before it to leave (aiokafka's 16 KiB: about fifty produce round trips per flush). Below
# the broker's default message.max.bytes (1 MiB).
PRODUCER_BATCH_BYTES = 512 * 1024
# Records the consumer may hand the agent ahead of it (inbox.Inbox): about a fetch (1 MiB per partition), so that
# the consumer fetches and parses the next one while the agent works through this one.
INBOX_RECORDS = 20_000


def default_clock() -> Callable[[], float]:
    offset = float(os.environ.get("ENXTEST_CLOCK_OFFSET_S", "0") or 0)
    return (lambda: time.time() + offset) if offset else time.time


def new_faust_app(settings: Settings, datadir: Path) -> faust.App:
    """The faust app of the processor, configured, with nothing registered on it yet; its tables' databases
    under ``datadir`` (state.take_slot)."""
    return faust.App(
        app_id(settings),
        broker=[f"kafka://{b}" for b in settings.kafka_bootstrap.split(",")],
        # the changelogs are the durable state; RocksDB on this worker's own disk holds a prefix of each, so a
        # worker restores only the tail it lacks (state.py)
        store="rocksdb://",
        datadir=str(datadir),
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


def create_app(settings: Settings, clock: Callable[[], float] | None = None,
               metrics: ProcessorMetrics | None = None) -> faust.App:
    """The processor app for ``settings``; ``clock`` (Unix seconds) is the watch's wall clock; ``metrics``
    what it counts for the worker's /metrics (metrics.py)."""
    clock = clock or default_clock()
    metrics = metrics or ProcessorMetrics()
    codec = default_codec()
    sla_s, retention_s = settings.transcode_sla_seconds, settings.state_retention_seconds
    log_topic, reconcile_topic = settings.topic("webhooks"), settings.topic("reconcile")
    # this process's own directory (state.py), under the app id: the tables' files are named by table only, and
    # another app id (a replay's consumer group) has changelogs of its own
    slot = take_slot(settings.data_dir / "processor" / app_id(settings))
    app = new_faust_app(settings, slot.path)
    # faust's consumer, handing the agent's records straight to it (lean_consumer.LeanConsumer)
    inbox = Inbox(INBOX_RECORDS)
    lean_consumer.install(app, {log_topic: inbox, command_topic(settings): inbox, reconcile_topic: inbox})
    commands = app.topic(command_topic(settings), partitions=settings.partitions, internal=True, **RAW)
    tables = SessionTables(app, settings)
    internals.make_durable(app.producer, DURABLE_PRODUCER)
    output = Output.install(app)
    output.durable = lambda held, offsets: tables.store.persist(held, offsets, stamp=slot.stamp)

    clocks = PartitionClock(clock, settings.ingest_lease_s)
    index = DueIndex()
    continuity = Continuity()
    reader = LogReader(settings.kafka_bootstrap, log_topic)
    probe = BrokerProbe(settings.kafka_bootstrap, log_topic)
    heard: dict[int, float] = {}  # webhook partition -> when the agent last received from it

    def forget_heard(partitions: list[int]) -> None:
        for p in partitions:
            heard.pop(p, None)

    rebalances = Rebalances(app, log_topic, tables, index, forget=(clocks.forget, continuity.forget, forget_heard))
    effects = Effects(output, tables, index, codec, metrics, settings.topic("sessions"),
                      published_alerts_topic(settings), retention_s, rebalances.live)
    letters = DeadLettering(output, codec, settings.topic("deadletter"), clock, metrics, rebalances.live)
    handler = RecordHandler(app=app, codec=codec, tables=tables, effects=effects, letters=letters, clocks=clocks,
                            index=index, continuity=continuity, reader=reader, metrics=metrics, log_topic=log_topic,
                            reconcile_topic=reconcile_topic, sla_s=sla_s, retention_s=retention_s, heard=heard,
                            committed=rebalances.committed)
    agent = AgentLoop(inbox, rebalances, handler.handle, lambda message: app.consumer.ack(message), app.crash,
                      metrics)
    app.agent(app.topic(log_topic, command_topic(settings), reconcile_topic, **RAW), name="process")(agent.process)

    @app.on_before_shutdown.connect
    async def close_reader(_app: faust.App, **_kwargs: object) -> None:
        await reader.close()
        await probe.close()
        # faust closes the tables' databases before its last flush: what is held now reaches them first, so a
        # worker stopped cleanly restores nothing at its next start (what comes after, the changelog's tail)
        try:
            await output.flush()
        except Exception as exc:  # noqa: BLE001 - the changelog has it or the commit does not pass it
            log.warning("the flush before stopping failed: %r", exc)

    @app.on_partitions_revoked.connect
    async def forget_revoked(_app: faust.App, revoked: set, **_kwargs: object) -> None:
        rebalances.revoked(revoked)

    @app.on_rebalance_complete.connect
    async def tables_restored(_app: faust.App, **_kwargs: object) -> None:
        rebalances.restored()

    watch = SlaWatchLoop(app=app, codec=codec, tables=tables, rebalances=rebalances, handler=handler, clocks=clocks,
                         index=index, probe=probe, resend=Resend(clock), reader=reader, metrics=metrics,
                         send=commands.send, log_topic=log_topic, partitions=settings.partitions, sla_s=sla_s,
                         retention_s=retention_s, heard=heard)
    app.timer(interval=SWEEP_INTERVAL_S, name="watch")(watch.tick)

    restore_watch = RestoreWatch(app, lambda: consumer_state(app))

    @app.on_partitions_assigned.connect
    async def watch_restores(_app: faust.App, *_args: object, **_kwargs: object) -> None:
        """A table restore that stopped reading a changelog partition is put back on it (restore_watch.py)."""
        restore_watch.start(SWEEP_INTERVAL_S)

    @app.timer(interval=TRIM_INTERVAL_S, name="trim")
    async def trim() -> None:
        release_free_memory()  # state.py: what a backlog's record batches and changes leave behind

    metrics.watch_sessions(index)
    app.conf.enx_parts = {"tables": tables.tables, "clocks": clocks, "index": index}  # for tests and the worker
    return app
