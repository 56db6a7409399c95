"""Every private (or undocumented) member of a dependency enx-streams uses (faust-streaming, mode and
aiokafka), in one module, each with why.

The processor needs a few things faust's public API does not give, or not at the speed it needs
(bench/README.md has the figures): a drain loop that hands records straight to the agent, its own output
path into faust's aiokafka producer, direct access to the RocksDB stores' databases, the group's committed
offsets, and the acks of records it read back itself. Elsewhere, aiokafka has no public call for a
metadata refresh of every topic, for deleting a consumer group, or for closing a producer without
flushing it. Each use is a class or a function below; nothing else in ``streams/`` touches a private name
of these libraries. :data:`MEMBERS` lists every member used,
why, and a fingerprint of the source that defines it; ``pyproject.toml`` pins the exact versions they were
written against (:data:`PINNED`), and ``tests/unit/test_internals.py`` fails, naming the member,
when one is missing or its defining source changed. An upgrade is then a decision (re-read each use
named in the failure, then update its fingerprint), not a surprise.

Where faust's public API does the job at the speed the processor needs, it is used instead, and what each
private use would cost through the public path was measured (bench/README.md, "What limits each figure"):

- the drain loop: faust's own hand-over (``Service.wait_first`` per record, the conductor, the stream's
  queue and iterator) is the ceiling of an agent that does nothing (``faust_bare_eps`` against
  ``faust_lean_bare_eps`` in bench/results/latest.json, about a tenth);
- the output: ``Topic.send`` and ``Table.__setitem__`` cost about 70 µs of the event loop per record
  (FutureMessage, the producer buffer's task, callbacks) against a microsecond or two appended to a batch,
  and send the changelog record ahead of the snapshot, which breaks at-least-once's order (output.py);
- the tables' stores: ``table[key]`` decodes, and a write encodes and sends, per call, and finds the
  partition from the current event, which the agent does not have (it takes records from its inbox);
- the committed offsets and the acks of read-back records: faust keeps them privately and has no accessor;
  asking the broker (``AIOKafkaConsumer.committed``) is a round trip per partition and may disagree with
  what faust's consumer will commit;
- the restore watch (restore_watch.py), the rebalance bookkeeping and the SLA watch use public members only
  (``app.tables.recovery``, ``app.consumer``, ``app.rebalancing``, ``app.in_recovery``, the app's signals).

The drain loop is :mod:`streams.internals.lean_consumer` (it imports faust; this module does not).
"""


from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


# The versions every member below was checked against (pyproject.toml pins them exactly).
PINNED = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0", "rocksdict": "0.3.29"}

@dataclass(frozen=True)
class Member:
    """A member of a dependency this module relies on. ``where`` is ``module:Qualified.name``; ``defined_by``
    the function (or class) whose source defines it (an instance attribute: where it is assigned), and
    ``fingerprint`` the first 16 hex digits of that source's SHA-256 at the pinned versions."""

    where: str
    why: str
    defined_by: str
    fingerprint: str

    @property
    def name(self) -> str:
        return self.where.rsplit(".", 1)[-1].rsplit(":", 1)[-1]


def resolve(where: str) -> Any:
    """The object ``module:Qualified.name`` names (raises AttributeError/ImportError when it is gone)."""
    module, _, qualified = where.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualified.split(".") if qualified else ():
        obj = inspect.getattr_static(obj, part)
    return obj


def source_of(where: str) -> str:
    obj = resolve(where)
    if isinstance(obj, property):
        obj = obj.fget
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    return inspect.getsource(obj)


def fingerprint(where: str) -> str:
    return hashlib.sha256(source_of(where).encode()).hexdigest()[:16]


def check(member: Member) -> str | None:
    """What changed about ``member`` at the installed versions, naming it and its use; None: nothing."""
    try:
        source = source_of(member.defined_by)
    except (ImportError, AttributeError, OSError, TypeError) as exc:
        return f"{member.defined_by} (which defines {member.where}) is gone: {exc!r}. It is used because {member.why}"
    try:
        resolve(member.where)  # a method, property or class attribute
    except (ImportError, AttributeError):
        if not re.search(rf"\bself\.{re.escape(member.name)}\b", source):  # an instance attribute, assigned there
            return f"{member.where} is no longer assigned in {member.defined_by}; it is used because {member.why}"
    got = fingerprint(member.defined_by)
    if got != member.fingerprint:
        return (f"the source of {member.defined_by}, which defines {member.where}, changed (fingerprint {got}, "
                f"was {member.fingerprint}). It is used because {member.why}: check that use against the new "
                f"source, then update the fingerprint in streams/internals/__init__.py")
    return None


C = "faust.transport.consumer:Consumer"
AK = "faust.transport.drivers.aiokafka"
MEMBERS: tuple[Member, ...] = (
    Member(f"{C}._drain_messages", "LeanConsumer._drain_messages is a copy of it with one change (the hand-over "
           "of each record): faust's own change to the loop must be carried over",
           f"{C}._drain_messages", "44a2500309e83c63"),
    Member(f"{C}._read_offset", "the drain loop's read offsets, as faust's loop keeps them",
           f"{C}.__init__", "302410d59e6972d1"),
    Member(f"{C}._commit_every", "the drain loop commits every broker_commit_every acks, as faust's", f"{C}.__init__",
           "302410d59e6972d1"),
    Member(f"{C}._n_acked", "the drain loop's count of acks since the last commit, as faust's (kept by ack)",
           f"{C}.ack", "5fcf41cf45153475"),
    Member(f"{C}._add_gap", "the drain loop records a gap in the offsets, as faust's",
           f"{C}._add_gap", "4df2573ded7c1c2c"),
    Member(f"{C}._committed_offset", "the group's committed offsets (next to read), read at assignment and updated "
           "at each commit, with no public accessor: the watch's 'now' for a partition just taken over, and what a "
           "hole's acks may not go below", f"{C}.__init__", "302410d59e6972d1"),
    Member(f"{C}._acked", "a hole's records read back with a consumer of our own are acked as Consumer.ack "
           "would (it takes a Message of its own consumer)", f"{C}.__init__", "302410d59e6972d1"),
    Member(f"{C}._acked_index", "as _acked", f"{C}.__init__", "302410d59e6972d1"),
    Member(f"{C}.ack", "mark_acked mirrors its bookkeeping of _acked and _acked_index", f"{C}.ack", "5fcf41cf45153475"),
    Member(f"{C}._active_partitions", "diagnostics of a stuck partition (consumer_state)",
           f"{C}._reset_state", "488b46f5c7f1d0b0"),
    Member(f"{C}._paused_partitions", "diagnostics of a stuck partition (consumer_state)",
           f"{C}._reset_state", "488b46f5c7f1d0b0"),
    Member(f"{C}._buffered_partitions", "diagnostics of a stuck partition (consumer_state)",
           f"{C}.__init__", "302410d59e6972d1"),
    Member("mode.services:Service._stopped", "the drain loop stops when the consumer or the fetcher stops, as "
           "faust's", "mode.services:Service.__init__", "ab4d12a25b93044a"),
    Member("faust.app.base:App._consumer", "install_lean_consumer must run before faust creates the consumer "
           "(App.consumer creates it on first use)", "faust.app.base:App.consumer", "354b140caceca03c"),
    Member("faust.transport.conductor:Conductor._topic_name_index", "the channels subscribed to a topic, to tell "
           "whether the conductor's delivery could wait (LeanConsumer.can_deliver_now)",
           "faust.transport.conductor:Conductor.__init__", "441bc3b1df592aa7"),
    Member("faust.transport.producer:ProducerBuffer.max_messages", "the conductor waits while the producer buffer "
           "is above it (LeanConsumer.can_deliver_now)", "faust.transport.producer:ProducerBuffer", "7d4d7ab98f260d29"),
    Member(f"{AK}:Producer._ensure_producer", "the aiokafka producer faust runs, which Output sends its record "
           "batches with", f"{AK}:Producer._ensure_producer", "5592a4bbdf251325"),
    Member(f"{AK}:Producer.flush", "replaced on the app's producer by Output.flush (faust flushes before every "
           "commit and on every revocation: the order at-least-once needs, output.py)",
           f"{AK}:Producer.flush", "36d0cb3615f65b01"),
    Member(f"{AK}:Consumer._thread", "diagnostics: aiokafka's own consumer, for its paused partitions",
           f"{AK}:Consumer.__init__", "7072ae80eac1ff62"),
    Member(f"{AK}:AIOKafkaConsumerThread._ensure_consumer", "diagnostics: aiokafka's own consumer",
           f"{AK}:AIOKafkaConsumerThread._ensure_consumer", "ff4a4c693b7ec63f"),
    Member("aiokafka.consumer.consumer:AIOKafkaConsumer._subscription", "diagnostics: aiokafka's paused partitions",
           "aiokafka.consumer.consumer:AIOKafkaConsumer.__init__", "01506f316191f7c9"),
    Member("aiokafka.consumer.subscription_state:SubscriptionState.paused_partitions", "diagnostics",
           "aiokafka.consumer.subscription_state:SubscriptionState.paused_partitions", "e9aba01781f989a0"),
    Member("aiokafka.consumer.consumer:AIOKafkaConsumer._client", "its client's metadata: a refresh of every "
           "topic's partitions (the consumer's own holds only what it subscribes to)",
           "aiokafka.consumer.consumer:AIOKafkaConsumer.__init__", "01506f316191f7c9"),
    Member("aiokafka.client:AIOKafkaClient.fetch_all_metadata", "every topic's partitions, without subscribing",
           "aiokafka.client:AIOKafkaClient.fetch_all_metadata", "8eeea5926b0ddbe2"),
    Member("aiokafka.client:AIOKafkaClient.force_metadata_update", "a refresh of the consumer's metadata after the "
           "topics were just created", "aiokafka.client:AIOKafkaClient.force_metadata_update", "cb7befef21c8f3f9"),
    Member("aiokafka.admin.client:AIOKafkaAdminClient._send_request", "DeleteGroups, which the admin client has no "
           "call for (rebuild resets the processor's and the sink's groups)",
           "aiokafka.admin.client:AIOKafkaAdminClient._send_request", "1ed126f126dd917a"),
    Member("aiokafka.producer.producer:AIOKafkaProducer._sender", "closing a producer without flushing: its sender "
           "is cancelled first, so no buffered record is ever sent (ingest's producer after a permanent failure)",
           "aiokafka.producer.producer:AIOKafkaProducer.__init__", "fd6f2966fb3dc883"),
    Member("aiokafka.producer.producer:AIOKafkaProducer._closed", "as _sender: stop() would flush",
           "aiokafka.producer.producer:AIOKafkaProducer.stop", "43ef97147111893b"),
    Member(f"{AK}:Producer._settings_extra", "faust's aiokafka producer is idempotent only inside a transaction "
           "(the settings it adds there); the processor's always is, with acks=all (make_durable)",
           f"{AK}:Producer._settings_extra", "a4c7bc41b6382223"),
    Member("faust.tables.base:Collection.data", "a table's store, whose databases the agent reads and writes",
           "faust.tables.base:Collection.data", "ade4a02ddd5582cb"),
    Member("faust.stores.rocksdb:Store._dbs", "the open database of each partition of a table, which the processor "
           "reads and writes in batches itself (streams/processor/state.py): the table's get() and set() decode "
           "and encode per call and find the partition from the current event", "faust.stores.rocksdb:Store.__init__",
           "c7c0fa2989e8ab4a"),
    Member("faust.stores.rocksdb:Store.offset_key", "the key under which faust keeps a database's changelog offset "
           "(what its recovery seeks past): the processor writes it in the same batch as the changes it covers",
           "faust.stores.rocksdb:Store", "062f48be75e112d1"),
    Member("faust.stores.rocksdb:Store.persisted_offset", "faust's recovery restores a partition from the offset "
           "state.py writes under offset_key (read back as an int)", "faust.stores.rocksdb:Store.persisted_offset",
           "6f2e502fb86043a1"),
    Member("faust.stores.rocksdb:Store.partition_path", "where a partition's database lives (state.py deletes those "
           "of partitions the worker no longer owns)", "faust.stores.rocksdb:Store.partition_path", "0cc4eae7dc33fcf1"),
    Member("faust.stores.rocksdb:Store.revoke_partitions", "faust closes (drops) a revoked partition's database, so "
           "state.py may delete its files once the rebalance is over", "faust.stores.rocksdb:Store.revoke_partitions",
           "3f85447a24fc34ff"),
    Member("faust.stores.rocksdb:RocksDBOptions.open", "the options state.ROCKSDB_OPTIONS sets reach RocksDB here "
           "(a block cache per database; raw keys and values, as state.py reads and writes them)",
           "faust.stores.rocksdb:RocksDBOptions.as_options", "d2a1bea17736d2eb"),
)


# -- the accessors -----------------------------------------------------------------------------------

def consumer_created(app: Any) -> bool:
    """Whether faust has created the app's consumer yet (App.consumer creates it on first use)."""
    return app._consumer is not None


def topic_channels(app: Any, topic: str) -> Iterable[Any]:
    """The channels (streams) subscribed to ``topic``: the conductor's index, rebuilt at each rebalance."""
    return app.topics._topic_name_index.get(topic, ())


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The group's committed offset of ``tp`` (next to read) as faust keeps it, or None when unknown."""
    offsets = getattr(consumer, "_committed_offset", None)
    return None if offsets is None else offsets.get(tp)


def mark_acked(consumer: Any, tp: Any, offsets: Iterable[int]) -> None:
    """Mark ``offsets`` of ``tp`` acked as ``Consumer.ack`` does for a message of its own, so the commit
    may pass them (records read back with a consumer of our own: gaps.py); none at or below what the group
    has committed already."""
    committed_at = consumer._committed_offset.get(tp)
    acked, acked_index = consumer._acked[tp], consumer._acked_index[tp]
    for offset in offsets:
        if offset not in acked_index and (committed_at is None or offset >= committed_at):
            acked_index.add(offset)
            acked.append(offset)


def rocksdb_databases(table: Any) -> dict[int, Any]:
    """The open RocksDB database of each partition of a table on faust's RocksDB store (faust's own mapping:
    it opens a partition's database when assigned and drops it when revoked)."""
    return table.data._dbs


def rocksdb_offset_key(table: Any) -> bytes:
    """The key under which faust's RocksDB store keeps a database's changelog offset (``persisted_offset``)."""
    return table.data.offset_key


def rocksdb_partition_paths(table: Any) -> list[tuple[int, Any]]:
    """(partition, path) of every database of the table on disk, open or not."""
    store = table.data
    prefix = store.partition_path(0).name.rsplit("-", 1)[0]
    out = []
    for path in sorted(store.path.glob(f"{prefix}-*.db")):
        number = path.name[len(prefix) + 1:-3]
        if number.isdigit() and store.partition_path(int(number)) == path:
            out.append((int(number), path))
    return out


def aiokafka_paused(consumer: Any) -> set | None:
    """The partitions aiokafka's own consumer has paused (diagnostics; None when it cannot be told)."""
    inner = consumer._thread._ensure_consumer()
    subscription = inner._subscription
    return subscription.paused_partitions() if hasattr(subscription, "paused_partitions") else None


def flow_sets(consumer: Any) -> dict[str, Any]:
    """faust's consumer's partition sets by name (diagnostics; "?" for one it no longer has)."""
    return {name.strip("_"): getattr(consumer, name, "?")
            for name in ("_active_partitions", "_paused_partitions", "_buffered_partitions")}


def make_durable(producer: Any, settings: Mapping[str, Any]) -> None:
    """Make faust's aiokafka producer send with ``settings`` (idempotence, ``acks=all``) outside transactions
    too: faust adds its idempotence only inside one, so a send retried after a leader's loss could be written
    twice."""
    extra = producer._settings_extra
    producer._settings_extra = lambda: {**extra(), **settings}


def flush_and_client(producer: Any) -> tuple[Callable[[], Awaitable[None]], Callable[[], Any]]:
    """faust's producer's own flush, and how to get the aiokafka producer it runs (``_ensure_producer``)."""
    return producer.flush, producer._ensure_producer


def replace_flush(producer: Any, flush: Callable[[], Awaitable[None]]) -> None:
    """Make ``flush`` what faust calls to flush its producer (before every commit, on every revocation)."""
    producer.flush = flush


async def all_partitions(consumer: Any) -> Any:
    """The whole cluster's metadata (every topic's partitions), without subscribing the consumer to them."""
    return await consumer._client.fetch_all_metadata()


async def refresh_metadata(consumer: Any) -> None:
    """Refresh the consumer's own metadata now (after its topics were just created)."""
    await consumer._client.force_metadata_update()


async def send_admin_request(admin: Any, request: Any, node: int) -> Any:
    """A request the admin client has no call for (DeleteGroups), sent to ``node``."""
    return await admin._send_request(request, node)


async def close_without_flush(producer: Any) -> None:
    """Close an aiokafka producer WITHOUT flushing: cancel its sender first, so no buffered record is ever
    sent; then its connections."""
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        await sender.close()
    producer._closed = True  # stop() would flush, which is what must not happen
    await producer.client.close()
