"""The processor's faust app: the session table, the agent that owns it, and the SLA watch.

- One agent consumes the webhook log and the processor's command topic (same partition count, same keys,
  so a session's events and commands reach the worker that owns its table partition). It is the only
  writer of the table, event by event, as faust requires.
- The table ``sessions`` holds each session's state (rules.py), keyed ``{app_id}/{conf_num}``, backed by
  its changelog: a worker killed with SIGKILL loses nothing, the next owner restores the partition.
- Every change is published as a versioned ``SessionState`` snapshot on the compacted sessions topic, and
  every alert of the transition on the alerts topic, with its deterministic ``alert_id``.
- The SLA watch (watch.py) runs on every worker but can only decide: a timer may not write tables and sees
  only its own partitions, so it sends a ``stall`` or ``expire`` command keyed by the session to the
  command topic, and the owning agent re-judges and applies it. Duplicated commands (several workers, a
  standby, a retry) change nothing the second time, so each alert is raised once.

Test-only: ``ENXTEST_CLOCK_OFFSET_S`` shifts this process's clock by that many seconds (used by the
retention test to let days pass); it is not an ENX_ setting and production never sets it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import faust
from faust.types import TP

from streams.avro import default_codec
from streams.config import Settings
from streams.processor import rules
from streams.processor.watch import PartitionClock, sweep

log = logging.getLogger("streams.processor")
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
SWEEP_INTERVAL_S = 2.0


def app_id(settings: Settings) -> str:
    """The processor's faust app id, also its consumer group and the prefix of its changelog topics."""
    return f"{settings.topic_prefix}processor"


def command_topic(settings: Settings) -> str:
    return f"{app_id(settings)}-commands"


def default_clock() -> Callable[[], float]:
    offset = float(os.environ.get("ENXTEST_CLOCK_OFFSET_S", "0") or 0)
    return (lambda: time.time() + offset) if offset else time.time


def create_app(settings: Settings, clock: Callable[[], float] | None = None) -> faust.App:
    clock = clock or default_clock()
    codec = default_codec()
    sla_s = settings.transcode_sla_seconds
    app = faust.App(
        app_id(settings),
        broker=[f"kafka://{b}" for b in settings.kafka_bootstrap.split(",")],
        store="memory://",
        datadir=str(settings.data_dir / "processor"),
        web_enabled=False,
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        producer_acks=-1,
    )
    webhooks = app.topic(settings.topic("webhooks"), partitions=settings.partitions, **RAW)
    commands = app.topic(command_topic(settings), partitions=settings.partitions, internal=True, **RAW)
    sessions_out = app.topic(settings.topic("sessions"), partitions=settings.partitions, **RAW)
    alerts_out = app.topic(settings.topic("alerts"), partitions=settings.partitions, **RAW)
    table = app.Table("sessions", default=None, partitions=settings.partitions)
    clocks = PartitionClock(clock)

    async def publish(key: bytes, before: dict | None, after: dict, alerts: list[dict[str, Any]]) -> None:
        for alert in alerts:
            await alerts_out.send(key=key, value=codec.encode("SlaAlert", alert))
            log.info("alert %s for %s", alert["kind"], key.decode())
        if after != before:
            await sessions_out.send(key=key, value=codec.encode("SessionState", after))

    @app.agent(app.topic(settings.topic("webhooks"), command_topic(settings), **RAW))
    async def process(stream: faust.Stream) -> None:
        async for event in stream.events():
            key = event.key
            if not key:
                continue
            name = key.decode()
            tp = event.message.tp
            if tp.topic == settings.topic("webhooks"):
                try:
                    record = codec.decode(event.value, "WebhookEvent")
                except ValueError as exc:
                    log.warning("skipping an undecodable record at %s/%s: %s", tp, event.message.offset, exc)
                    continue
                if record.get("conf_num") is None:
                    continue  # not a session event: kept in the log and ClickHouse, no session state
                clocks.saw(tp.partition, record["received_at"], event.message.offset)
                before = table.get(name)
                after, alerts = rules.step(before, record, sla_s)
                if after != before:
                    table[name] = after
                await publish(key, before, after, alerts)
                continue
            command = json.loads(event.value)
            before = table.get(name)
            if before is None:
                continue
            if command["op"] == "stall":
                after, alerts = rules.sweep_step(before, int(command["now"]), sla_s)
                if after != before:
                    table[name] = after
                await publish(key, before, after, alerts)
            elif command["op"] == "expire" and rules.expired(before, int(command["now"]),
                                                              settings.state_retention_seconds):
                del table[name]
                await sessions_out.send(key=key, value=None)  # tombstone on the compacted topic
                log.info("session %s left the tables after its retention", name)

    @app.timer(interval=SWEEP_INTERVAL_S)
    async def watch() -> None:
        assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == settings.topic("webhooks")}
        def highwater(partition: int) -> int | None:
            try:
                return app.consumer.highwater(TP(settings.topic("webhooks"), partition))
            except Exception:  # noqa: BLE001 - unknown until the consumer has fetched
                return None

        for name, op, now in sweep(table, assigned, settings.partitions, clocks, sla_s,
                                   settings.state_retention_seconds, highwater):
            await commands.send(key=name.encode(), value=json.dumps({"op": op, "now": now}).encode())

    app.conf.enx_parts = {"webhooks": webhooks, "table": table}  # for tests and the worker
    return app
