"""The rebuild's Kafka side: offsets and members of groups, the processor's state reset, the rebuild's alerts
read back and the new ones forwarded, and the live sink's offsets moved to where the rebuild's sink stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams import internals
from streams.config import Settings
from streams.rebuild.plan import Positions, RebuiltAlert

CHANGELOG_SUFFIX = "-changelog"
REBUILD_ALERTS = "alerts.rebuild"   # <prefix>alerts.rebuild: the rebuild's processors publish their alerts here
REBUILD_SINK_SUFFIX = ".rebuild"    # the rebuild's sink group: <live sink group>.rebuild


class RebuildError(RuntimeError):
    """The rebuild cannot run or did not finish; the message says what to do."""


def rebuild_alerts_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}{REBUILD_ALERTS}"


def _pairs(offsets: dict[TopicPartition, int]) -> dict[tuple[str, int], int]:
    return {(tp.topic, tp.partition): o for tp, o in offsets.items()}


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)


async def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """The end offset of every partition of ``topics`` (a topic that does not exist has none)."""
    topics = list(topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await internals.refresh_metadata(consumer)
        partitions = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        return _pairs(await consumer.end_offsets(partitions)) if partitions else {}
    finally:
        await consumer.stop()


async def committed(admin: AIOKafkaAdminClient, group: str) -> dict[tuple[str, int], int]:
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except Exception:  # noqa: BLE001 - a group that does not exist yet has nothing committed
        return {}
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def members(admin: AIOKafkaAdminClient, group: str) -> int:
    """Live members of ``group`` (0 for a group that does not exist)."""
    try:
        described = await admin.describe_consumer_groups([group])
    except Exception:  # noqa: BLE001
        return 0
    return sum(len(g[5]) for response in described for g in response.groups if len(g) > 5)


def processor_state_topics(existing: Iterable[str], processor_group: str) -> list[str]:
    """The processor's changelogs and command topic among ``existing`` (prefixed by its app id)."""
    return sorted(t for t in existing if t.startswith(processor_group) and
                  (t.endswith(CHANGELOG_SUFFIX) or t.endswith("-commands")))


async def _delete_groups(admin: AIOKafkaAdminClient, groups: Iterable[str]) -> None:
    from aiokafka.protocol.admin import DeleteGroupsRequest

    for group in groups:
        try:
            node = await admin.find_coordinator(group)
            await internals.send_admin_request(admin, DeleteGroupsRequest([group]), node)
        except Exception:  # noqa: BLE001 - the group may not exist
            pass


async def reset(settings: Settings, processor_group: str, rebuild_sink_group: str,
                echo: Callable[[str], None], timeout_s: float = 30.0) -> None:
    """Delete the processor's state (group, changelogs, command topic), the sessions topic, the rebuild's
    alerts topic and sink group; recreate the contract topics and the rebuild's alerts topic."""
    from streams.broker.topics import KEPT_FOREVER, TopicSpec, contract_topics, ensure_topics

    admin = admin_client(settings)
    await admin.start()
    try:
        existing = await admin.list_topics()
        doomed = [*processor_state_topics(existing, processor_group), settings.topic("sessions"),
                  rebuild_alerts_topic(settings)]
        doomed = [t for t in doomed if t in existing]
        if doomed:
            await admin.delete_topics(doomed)
            echo("deleted " + ", ".join(sorted(doomed)))
        await _delete_groups(admin, (processor_group, rebuild_sink_group))
        echo(f"reset consumer groups {processor_group} and {rebuild_sink_group}")
        # the processors' local RocksDB state is a prefix of the changelogs just deleted: meaningless now
        # (streams/processor/state.py); a worker's slot still held by a running process is left alone
        from streams.processor.state import clear_slots

        local = settings.data_dir / "processor" / processor_group
        held = clear_slots(local)
        echo(f"deleted the processors' local state in {local}" if not held else
             f"deleted the processors' local state in {local}, except {', '.join(map(str, held))} (in use)")
        deadline = time.monotonic() + timeout_s
        while set(doomed) & set(await admin.list_topics()):
            if time.monotonic() > deadline:
                raise RebuildError(f"Kafka did not delete {doomed} within {timeout_s:.0f} s; run the rebuild again")
            await asyncio.sleep(0.2)  # deletion poll, bounded by the deadline
    finally:
        await admin.close()
    specs = [*contract_topics(settings), TopicSpec(rebuild_alerts_topic(settings), settings.partitions,
                                                   dict(KEPT_FOREVER))]
    while True:  # a just-deleted topic may refuse re-creation for a moment
        try:
            await ensure_topics(settings.kafka_bootstrap, specs, settings.kafka_replication)
            return
        except Exception as exc:  # noqa: BLE001
            if time.monotonic() > deadline:
                raise RebuildError(f"could not recreate the topics: {exc}") from exc
            await asyncio.sleep(0.5)  # re-creation poll, bounded by the deadline


async def forget(settings: Settings, topic: str, group: str) -> None:
    """Delete the rebuild's own topic and consumer group once it is done with them."""
    admin = admin_client(settings)
    await admin.start()
    try:
        if topic in await admin.list_topics():
            await admin.delete_topics([topic])
        await _delete_groups(admin, [group])
    finally:
        await admin.close()


async def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` from its start to its end as of now."""
    ends = await end_offsets(bootstrap, [topic])
    if not any(ends.values()):
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for (t, p) in ends]
        consumer.assign(partitions)
        for tp, start in (await consumer.beginning_offsets(partitions)).items():
            consumer.seek(tp, start)  # explicit: seek_to_beginning is lazy and may lose to the reset on assign
        out: list[Any] = []
        left = {tp for tp in partitions if ends[(tp.topic, tp.partition)] > await consumer.position(tp)}
        while left:
            fetched = await consumer.getmany(*left, timeout_ms=1000)
            for tp, records in fetched.items():
                out += [r for r in records if r.offset < ends[(tp.topic, tp.partition)]]
            for tp in list(left):
                if await consumer.position(tp) >= ends[(tp.topic, tp.partition)]:
                    left.discard(tp)
        return out
    finally:
        await consumer.stop()


async def log_times(bootstrap: str, positions: Positions) -> dict[int, int]:
    """Per partition, the ``received_at`` (Unix ms) of the record just before ``positions`` (what a group had
    committed): the log time up to which that group had processed the partition. A partition whose record
    there is not a webhook (or is gone) has none."""
    from streams.avro import default_codec

    codec = default_codec()
    wanted = {tp: o for tp, o in positions.items() if o > 0}
    if not wanted:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: dict[int, int] = {}
    try:
        consumer.assign([TopicPartition(t, p) for (t, p) in wanted])
        for (topic, partition), offset in wanted.items():
            tp = TopicPartition(topic, partition)
            consumer.seek(tp, offset - 1)
            fetched = await consumer.getmany(tp, timeout_ms=5000, max_records=1)
            for record in fetched.get(tp, []):
                try:
                    out[partition] = int(codec.decode(record.value, "WebhookEvent")["received_at"])
                except Exception:  # noqa: BLE001 - not a webhook: no horizon there
                    pass
    finally:
        await consumer.stop()
    return out


def rebuilt_alerts(records: Iterable[Any]) -> list[RebuiltAlert]:
    """The SlaAlert records of the rebuild's alerts topic, in the order read."""
    from streams.avro import default_codec

    codec = default_codec()
    out = []
    for r in records:
        alert = codec.decode(r.value, "SlaAlert")
        out.append(RebuiltAlert(r.partition, r.key, r.value, str(alert["alert_id"]), int(alert["detected_at"])))
    return out


def alert_ids(records: Iterable[Any]) -> set[str]:
    from streams.avro import default_codec

    codec = default_codec()
    out = set()
    for r in records:
        try:
            out.add(str(codec.decode(r.value, "SlaAlert")["alert_id"]))
        except Exception:  # noqa: BLE001 - an undecodable record is the sink's dead letter, not an alert id
            pass
    return out


async def publish(bootstrap: str, topic: str, alerts: Iterable[RebuiltAlert]) -> int:
    """``alerts`` onto ``topic`` on their own partition (the session's, as the processor publishes), acked by
    every in-sync replica; returns how many."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = [await producer.send(topic, value=a.value, key=a.key, partition=a.partition) for a in alerts]
        for future in sent:
            await future
        return len(sent)
    finally:
        await producer.stop()


async def set_offsets(bootstrap: str, group: str, offsets: Positions) -> None:
    """Commit ``offsets`` for ``group`` (which has no member: checked before)."""
    if not offsets:
        return
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for (t, p) in offsets]
        consumer.assign(partitions)
        await consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
    finally:
        await consumer.stop()
