"""The gathering of ``enx-streams status``: every read it makes, each bounded by a timeout, into
:class:`~streams.status.facts.Facts` (judged by :mod:`streams.status.judge`).

- Kafka (one admin client and one consumer, all within ``timeout_s``): the consumer groups of the
  processor and the sink (members, committed offsets against the log start and end of each topic they
  read), the received time of the oldest webhook each has not committed, and the last record of the webhook
  log and of the alerts topic. The reconciler has no consumer group (its cursor is a file).
- Ingest: its ``/readyz`` at ``ENX_INGEST_HOST:ENX_INGEST_PORT`` (Kafka, the spool's bytes, frames and
  oldest age). When no ingest answers, the spool is read from ``<data dir>/spool`` directly, read-only.
- The owner of an embedded ClickHouse: the owner lock's holder (pid, command) and since when it holds it.
- ClickHouse, through :func:`streams.sink.query.run_query` (the owner's socket, or a server DSN): the
  newest event and alert rows. An embedded directory nobody owns is not opened: a probe run every minute
  must never hold the directory a starting sink waits for.

Ingest and ClickHouse are asked in daemon threads while Kafka is read, so status answers within about
``timeout_s`` whatever hangs; a thread still blocked then is abandoned, never waited for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code

from streams.config import Settings
from streams.status import DEFAULT_TIMEOUT_S
from streams.status import facts as F

T = TypeVar("T")
NEWEST_TAIL = 500  # log records read back per partition for its newest webhook (watermarks: one a second)
NEWEST_SQL = (
    "SELECT (SELECT toUnixTimestamp64Milli(max(received_at)) FROM enablex.webhook_events) AS event_ms, "
    "(SELECT toUnixTimestamp64Milli(max(detected_at)) FROM enablex.sla_alerts) AS alert_ms, "
    "(SELECT argMax(concat(kind, ' ', app_id, '/', conf_num), detected_at) FROM enablex.sla_alerts) AS alert")


def group_topics(settings: Settings) -> dict[str, tuple[str, list[str]]]:
    """Per role, its consumer group and the topics it reads."""
    from streams.processor.names import app_id, command_topic
    from streams.sink.consumer import TOPIC_KINDS, sink_group

    return {"processor": (app_id(settings), [settings.topic("webhooks"), command_topic(settings),
                                             settings.topic("reconcile")]),
            "sink": (sink_group(settings), [settings.topic(kind) for kind in TOPIC_KINDS])}


def _said(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


# -- Kafka ------------------------------------------------------------------------------------------

class _KafkaRead:
    """What the Kafka reads found so far (kept when the time runs out half-way)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reachable = False
        self.groups: dict[str, F.Group] = {role: F.Group(role=role, name=name, error="not read")
                                           for role, (name, _) in group_topics(settings).items()}
        self.newest = F.Newest(error="not read")

    async def read(self, timeout_s: float) -> None:
        bootstrap, ms = self.settings.kafka_bootstrap, int(timeout_s * 1000)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=ms)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=ms)
        try:
            await admin.start()
            self.reachable = True
            await consumer.start()
            plan = group_topics(self.settings)
            # only topics that exist are described: a metadata request naming others would create them on a
            # broker with auto.create.topics.enable (Kafka's default)
            existing = set(await admin.list_topics())
            names = sorted({t for _, topics in plan.values() for t in topics} & existing)
            tps = [TopicPartition(d["topic"], p["partition"]) for d in await admin.describe_topics(names)
                   if not d["error_code"] for p in d["partitions"]] if names else []
            starts, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
            for role, (name, topics) in plan.items():
                self.groups[role] = await self._group(admin, role, name, topics, tps, starts, ends)
            for role in plan:
                self.groups[role] = await self._oldest_waiting(consumer, self.groups[role])
            self.newest = await self._newest(consumer, starts, ends)
        finally:
            for closing in (consumer.stop(), admin.close()):
                try:
                    await asyncio.wait_for(closing, 1.0)
                except Exception:  # noqa: BLE001 - closing what never connected, or a broker gone quiet
                    pass

    async def _group(self, admin: Any, role: str, name: str, topics: list[str], tps: list[Any],
                     starts: dict, ends: dict) -> F.Group:
        try:
            described = await admin.describe_consumer_groups([name])
            group = described[0].groups[0]  # (error_code, group_id, state, protocol_type, protocol, members, ...)
            if group[0]:
                raise for_code(group[0])()
            state, members = str(group[2]), len(group[5])
            committed = {tp: m.offset for tp, m in (await admin.list_consumer_group_offsets(name)).items()
                         if m.offset >= 0}
        except Exception as exc:  # noqa: BLE001 - no coordinator yet, an authorisation error: said as it is
            return F.Group(role=role, name=name, error=_said(exc))
        partitions = tuple(F.PartitionLag(tp.topic, tp.partition, end=ends[tp], committed=committed.get(tp),
                                          start=starts[tp])
                           for tp in sorted(tps, key=lambda t: (t.topic, t.partition)) if tp.topic in topics)
        return F.Group(role=role, name=name, members=members, state=state, partitions=partitions)

    async def _oldest_waiting(self, consumer: Any, group: F.Group) -> F.Group:
        """The group with the received time of the oldest webhook it has not committed (of each partition's
        first uncommitted record, the oldest)."""
        log = self.settings.topic("webhooks")
        wanted = {TopicPartition(p.topic, p.partition): p.end - p.lag
                  for p in group.partitions if p.topic == log and p.lag}
        if not wanted:
            return group
        records = await _records_at(consumer, wanted)
        times = [t for t in (_event_time(r) for r in records.values()) if t is not None]
        return dataclasses.replace(group, oldest_waiting_ms=min(times) if times else None)

    async def _newest(self, consumer: Any, starts: dict, ends: dict) -> F.Newest:
        """The newest webhook of the log (of the last ``NEWEST_TAIL`` records of each partition: a running
        ingest writes a watermark on every partition each second, which is no event) and the newest alert."""
        log, alerts = self.settings.topic("webhooks"), self.settings.topic("alerts")
        tails = {tp: max(starts[tp], end - NEWEST_TAIL) for tp, end in ends.items() if tp.topic == log
                 and end > starts[tp]}
        last = {tp: end - 1 for tp, end in ends.items() if tp.topic == alerts and end > starts[tp]}
        records = await _records_at(consumer, last) if last else {}
        alerts_seen = [a for r in records.values() if (a := _alert_of(r)) is not None]
        events = [t for r in await _records_from(consumer, tails, ends) if (t := _webhook_time(r)) is not None]
        newest_alert = max(alerts_seen, default=None)
        return F.Newest(event_ms=max(events, default=None), alert_ms=newest_alert[0] if newest_alert else None,
                        alert=newest_alert[1] if newest_alert else None)


async def _records_at(consumer: Any, wanted: dict[Any, int], wait_s: float = 2.0) -> dict[Any, Any]:
    """The record at (or first after) each wanted offset, as far as they come within ``wait_s``."""
    consumer.assign(list(wanted))
    for tp, offset in wanted.items():
        consumer.seek(tp, offset)
    got: dict[Any, Any] = {}
    deadline = time.monotonic() + wait_s
    while len(got) < len(wanted) and time.monotonic() < deadline:
        for tp, records in (await consumer.getmany(*[t for t in wanted if t not in got], timeout_ms=200)).items():
            if records and tp not in got:
                got[tp] = records[0]
    return got


async def _records_from(consumer: Any, starts: dict[Any, int], ends: dict[Any, int],
                        wait_s: float = 2.0) -> list[Any]:
    """The records from each start to its partition's end, as far as they come within ``wait_s``."""
    if not starts:
        return []
    consumer.assign(list(starts))
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    out: list[Any] = []
    left = set(starts)
    deadline = time.monotonic() + wait_s
    while left and time.monotonic() < deadline:
        for tp, records in (await consumer.getmany(*left, timeout_ms=200)).items():
            out += [r for r in records if r.offset < ends[tp]]
            if records and records[-1].offset >= ends[tp] - 1:
                left.discard(tp)
    return out


def _webhook_time(record: Any) -> int | None:
    """When ingest received the webhook of a log record; None for ingest's watermarks (streams/watermark.py)."""
    from streams import watermark

    value = _decoded(record)
    if value is not None and watermark.is_mark(value):
        return None
    return int(value["received_at"]) if value and "received_at" in value else record.timestamp


def _decoded(record: Any) -> dict | None:
    from streams.avro import default_codec

    try:
        return default_codec().decode(record.value)
    except Exception:  # noqa: BLE001 - not a contract record: it tells no time
        return None


def _event_time(record: Any) -> int | None:
    """When ingest received the webhook of a log record (the record's timestamp if it does not decode)."""
    value = _decoded(record)
    return int(value["received_at"]) if value and "received_at" in value else record.timestamp


def _alert_of(record: Any) -> tuple[int, str] | None:
    value = _decoded(record)
    if not value or "detected_at" not in value:
        return None
    return int(value["detected_at"]), f"{value.get('kind')} {value.get('app_id')}/{value.get('conf_num')}"


def gather_kafka(settings: Settings, timeout_s: float) -> tuple[F.Broker, tuple[F.Group, ...], F.Newest]:
    found = _KafkaRead(settings)
    error: str | None = None

    async def bounded() -> None:
        await asyncio.wait_for(found.read(timeout_s), timeout_s)

    try:
        asyncio.run(bounded())
    except (asyncio.TimeoutError, TimeoutError):
        error = f"no answer within {timeout_s:g} s"
    except Exception as exc:  # noqa: BLE001 - unreachable, refused, unknown host: said as it is
        error = "no connection to any bootstrap server" if "Unable to bootstrap" in str(exc) else _said(exc)
    if error and found.reachable:  # it answered, then ran out of time: what is missing says so
        groups = tuple(g if g.error != "not read" else F.Group(role=g.role, name=g.name, error=error)
                       for g in found.groups.values())
        newest = found.newest if found.newest.error is None else F.Newest(error=error)
        return F.Broker(settings.kafka_bootstrap, True), groups, newest
    broker = F.Broker(settings.kafka_bootstrap, found.reachable, None if found.reachable else error)
    return broker, tuple(found.groups.values()), found.newest


# -- ingest and its spool ----------------------------------------------------------------------------

def ingest_url(settings: Settings) -> str:
    """Where ingest answers on this machine: its listening address (a wildcard one is asked on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(settings.ingest_host, settings.ingest_host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.ingest_port}/readyz"


def ask_ingest(settings: Settings, timeout_s: float) -> tuple[F.Ingest, dict | None]:
    """Ingest's /readyz answer (200 ready, 503 not ready: both carry the body)."""
    url = ingest_url(settings)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            return F.Ingest(url, answered=False, error=f"HTTP {exc.code} without its JSON"), None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return F.Ingest(url, answered=False, error=_said(reason) if isinstance(reason, BaseException)
                        else str(reason)), None
    return F.Ingest(url, answered=True, ready=bool(body.get("ready")), ready_by=body.get("ready_by"),
                    kafka=bool(body.get("kafka"))), body


def spool_of(settings: Settings, readyz: dict | None, now_ms: int) -> F.Spool:
    """The spool as ingest reports it, else as its directory holds it (read-only)."""
    path = settings.data_dir / "spool"
    if readyz is not None:
        return F.Spool("ingest", str(path), bytes=int(readyz.get("spool_bytes") or 0),
                       frames=int(readyz.get("spool_frames") or 0), oldest_age_s=readyz.get("spool_oldest_s"))
    from streams.ingest.spool import peek

    try:
        view = peek(path)
    except OSError as exc:
        return F.Spool("directory", str(path), error=_said(exc))
    if view is None:
        return F.Spool("none", str(path))
    oldest = None
    if view.oldest is not None:
        from streams.ingest.service import frame_age_s

        oldest = frame_age_s(view.oldest, now_ms)
    return F.Spool("directory", str(path), bytes=view.pending_bytes, frames=view.pending_frames, oldest_age_s=oldest)


# -- ClickHouse -------------------------------------------------------------------------------------

def owner_of(settings: Settings) -> F.Owner:
    from streams.sink.clickhouse import current_owner, lock_path, redact_dsn, settings_path

    db_path = settings_path(settings)
    if db_path is None:
        return F.Owner(embedded=False, where=redact_dsn(settings.clickhouse_url))
    owner = current_owner(db_path)
    if owner is None:
        return F.Owner(embedded=True, where=str(db_path))
    try:  # the owner writes its pid into the lock file when it takes the lock
        since_ms: int | None = int(lock_path(db_path).stat().st_mtime * 1000)
    except OSError:
        since_ms = None
    return F.Owner(embedded=True, where=str(db_path), pid=owner.pid, command=owner.command, since_ms=since_ms)


def ask_clickhouse(settings: Settings, timeout_s: float) -> F.ClickHouse:
    from streams.sink.query import QueryError, run_query

    where = _where(settings)
    try:
        row = json.loads(run_query(settings, NEWEST_SQL, "JSONEachRow", timeout_s=timeout_s,
                                   open_unowned=False).splitlines()[0])
    except QueryError as exc:
        return F.ClickHouse(where, answered=False, error=_said(exc))
    except (ValueError, IndexError) as exc:
        return F.ClickHouse(where, answered=False, error=f"an answer status cannot read: {exc}")
    event_ms, alert_ms = int(row["event_ms"]) or None, int(row["alert_ms"]) or None  # 0: an empty table
    return F.ClickHouse(where, answered=True,
                        newest=F.Newest(event_ms=event_ms, alert_ms=alert_ms, alert=row["alert"] if alert_ms else None))


# -- all of it --------------------------------------------------------------------------------------

class _Background(Generic[T]):
    """``fn()`` in a daemon thread: a call that hangs past its timeout is abandoned, not waited for."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._result: list[T] = []
        self._error: list[BaseException] = []

        def run() -> None:
            try:
                self._result.append(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self._error.append(exc)

        self._thread = threading.Thread(target=run, daemon=True, name="enx-status")
        self._thread.start()

    def result(self, timeout_s: float, on_timeout: T) -> T:
        self._thread.join(max(0.0, timeout_s))
        if self._error:
            raise self._error[0]
        return self._result[0] if self._result else on_timeout


def gather(settings: Settings, timeout_s: float = DEFAULT_TIMEOUT_S,
           clock: Callable[[], float] = time.time) -> F.Facts:
    """Everything status reports, within about ``timeout_s`` (each part has it as its own bound)."""
    started = time.monotonic()
    where = _where(settings)
    ingest = _Background(lambda: ask_ingest(settings, timeout_s))
    clickhouse = _Background(lambda: ask_clickhouse(settings, timeout_s))
    broker, groups, newest = gather_kafka(settings, timeout_s)
    left = timeout_s + 1.0 - (time.monotonic() - started)
    ingest_facts, readyz = ingest.result(left, (F.Ingest(ingest_url(settings), answered=False,
                                                         error=f"no answer within {timeout_s:g} s"), None))
    now_ms = int(clock() * 1000)
    spool = spool_of(settings, readyz, now_ms)
    left = timeout_s + 1.0 - (time.monotonic() - started)
    ch = clickhouse.result(left, F.ClickHouse(where, answered=False, error=f"no answer within {timeout_s:g} s"))
    return F.Facts(now_ms=now_ms, broker=broker, groups=groups, ingest=ingest_facts, spool=spool,
                   owner=owner_of(settings), clickhouse=ch, log=newest)


def _where(settings: Settings) -> str:
    from streams.sink.clickhouse import redact_dsn

    return redact_dsn(settings.clickhouse_url)
