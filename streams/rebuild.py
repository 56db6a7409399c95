"""``enx-streams rebuild``: recompute every projection from the event log.

The event log (``<prefix>webhooks.v1``) and the dead-letter log are the source of truth; the state tables,
the sessions topic and the ClickHouse tables are projections. A rebuild:

1. refuses while a worker or ``dev`` owns the data (an embedded data directory's owner lock; for a
   ClickHouse server, the processor's and sink's consumer groups must have no members);
2. empties the ClickHouse projection tables (the error-code catalogue and the migrations log stay);
3. deletes the processor's state (its consumer group, table changelogs and command topic) and recreates
   the compacted sessions topic, and deletes the sink's consumer group;
4. runs the real workers (``enx-streams worker``: the sink, and one processor per CPU sharing the log's
   partitions, each in a process of its own; ``--processors N`` to choose) over the whole log at full
   speed, showing progress, until the processors have consumed every webhook that was in the log when the
   rebuild started and the sink has committed everything they wrote; then stops them.

Because the processor judges every session by event time (the log's own time while it is behind), the
replay raises exactly the alerts the live run raised, with the same ids, and ClickHouse ends up equal to
the live projection. Alerts already in the alerts log are re-sunk too; their ids collapse under ``FINAL``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams import config, internals

PROJECTION_TABLES = ("webhook_events", "session_files", "sessions", "sla_alerts", "dead_letters",
                     "events_per_minute", "dead_letters_per_minute", "reconcile_findings")
CHANGELOG_SUFFIX = "-changelog"


class RebuildError(RuntimeError):
    """The rebuild cannot run or did not finish; the message says what to do."""


@dataclass(frozen=True)
class Progress:
    """How far the replay has come: webhooks consumed by the processor, records committed by the sink."""

    processed: int
    total: int
    sunk: int
    to_sink: int

    @property
    def done(self) -> bool:
        return self.processed >= self.total and self.sunk >= self.to_sink


class StandingStill:
    """Whether the replay has stood still for ``after_s`` without being done: true once per stop of its
    progress (moving again re-arms it). Pure: the caller gives the time."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._last: Progress | None = None
        self._since = 0.0
        self._told = False

    def __call__(self, now: Progress, at_s: float) -> bool:
        if now != self._last or now.done:
            self._last, self._since, self._told = now, at_s, False
            return False
        if self._told or at_s - self._since < self.after_s:
            return False
        self._told = True
        return True


STILL_S = 120.0  # a replay that stands still this long is said to (a worker may be stuck)


def processor_group(settings: config.Settings) -> str:
    from streams.processor.app import app_id

    return app_id(settings)


def sink_group(settings: config.Settings) -> str:
    from streams.sink.consumer import sink_group as group

    return group(settings)


# -- Kafka ------------------------------------------------------------------------------------------

async def _end_offsets(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        if not partitions:
            await internals.refresh_metadata(consumer)
            partitions = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        return await consumer.end_offsets(partitions) if partitions else {}
    finally:
        await consumer.stop()


async def _committed(admin: AIOKafkaAdminClient, group: str) -> dict[TopicPartition, int]:
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except Exception:  # noqa: BLE001 - a group that does not exist yet has nothing committed
        return {}
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def _group_members(admin: AIOKafkaAdminClient, group: str) -> int:
    try:
        described = await admin.describe_consumer_groups([group])
    except Exception:  # noqa: BLE001
        return 0
    members = 0
    for response in described:
        for g in response.groups:
            members += len(g[5]) if len(g) > 5 else 0
    return members


async def reset_kafka(settings: config.Settings, echo: Callable[[str], None]) -> None:
    """Delete the processor's state and both consumer groups; recreate the sessions topic."""
    from streams.broker.topics import contract_topics, ensure_topics

    processor, sink = processor_group(settings), sink_group(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        for group in (processor, sink):
            if await _group_members(admin, group):
                raise RebuildError(f"consumer group {group} still has running members: stop every worker "
                                   f"(and enx-streams dev) before a rebuild")
        existing = await admin.list_topics()
        doomed = [t for t in existing if t.startswith(processor) and
                  (t.endswith(CHANGELOG_SUFFIX) or "command" in t)]
        doomed.append(settings.topic("sessions"))
        doomed = [t for t in doomed if t in existing]
        if doomed:
            await admin.delete_topics(doomed)
            echo("deleted " + ", ".join(sorted(doomed)))
        from aiokafka.protocol.admin import DeleteGroupsRequest

        for group in (processor, sink):
            try:
                node = await admin.find_coordinator(group)
                await internals.send_admin_request(admin, DeleteGroupsRequest([group]), node)
            except Exception:  # noqa: BLE001 - the group may not exist
                pass
        echo(f"reset consumer groups {processor} and {sink}")
        deadline = time.monotonic() + 30
        while set(doomed) & set(await admin.list_topics()):
            if time.monotonic() > deadline:
                raise RebuildError(f"Kafka did not delete {doomed} within 30 s; run the rebuild again")
            await asyncio.sleep(0.2)  # deletion poll, bounded by the deadline
    finally:
        await admin.close()
    while True:  # a just-deleted topic may refuse re-creation for a moment
        try:
            await ensure_topics(settings.kafka_bootstrap, contract_topics(settings), settings.kafka_replication)
            return
        except Exception as exc:  # noqa: BLE001
            if time.monotonic() > deadline:
                raise RebuildError(f"could not recreate the contract topics: {exc}") from exc
            await asyncio.sleep(0.5)


async def progress(settings: config.Settings, total: dict[TopicPartition, int]) -> Progress:
    """Webhooks the processor has committed against the log's end at the start; the sink's lag everywhere."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        processed_offsets = await _committed(admin, processor_group(settings))
        sunk_offsets = await _committed(admin, sink_group(settings))
    finally:
        await admin.close()
    processed = sum(min(processed_offsets.get(tp, 0), end) for tp, end in total.items())
    topics = [settings.topic(n) for n in ("webhooks", "deadletter", "sessions", "alerts", "reconcile")]
    ends = await _end_offsets(settings.kafka_bootstrap, topics)
    return Progress(processed=processed, total=sum(total.values()),
                    sunk=sum(min(sunk_offsets.get(tp, 0), end) for tp, end in ends.items()),
                    to_sink=sum(ends.values()))


# -- ClickHouse -------------------------------------------------------------------------------------

def reset_clickhouse(settings: config.Settings, echo: Callable[[str], None]) -> None:
    """Empty the projection tables (as the owner, for an embedded data directory)."""
    from streams.sink import migrations
    from streams.sink.clickhouse import OwnerError, OwnerLock, connect, settings_path

    db_path = settings_path(settings)
    lock = None
    if db_path is not None:
        try:
            lock = OwnerLock.acquire(db_path, "enx-streams rebuild")
        except OwnerError as exc:
            raise RebuildError(f"{exc}. A rebuild needs the pipeline stopped: stop enx-streams dev (or the "
                               f"worker) and run it again") from None
    try:
        client = connect(settings)
        try:
            migrations.apply(client, echo)
            for table in PROJECTION_TABLES:
                client.command(f"TRUNCATE TABLE IF EXISTS enablex.{table}")
            echo("emptied ClickHouse tables " + ", ".join(PROJECTION_TABLES))
        finally:
            client.close()
    finally:
        if lock is not None:
            lock.release()


# -- the whole rebuild -----------------------------------------------------------------------------

def default_processors(settings: config.Settings) -> int:
    """One processor worker per CPU, at most one per partition (a worker without a partition idles)."""
    return max(1, min(os.cpu_count() or 1, settings.partitions))


def worker_plan(processors: int) -> list[tuple[str, str]]:
    """``(name, role)`` of the rebuild's workers: one sink, ``processors`` processors (names for their logs)."""
    names = ["processor"] if processors == 1 else [f"processor-{i + 1}" for i in range(processors)]
    return [("sink", "sink"), *((name, "processor") for name in names)]


def run(settings: config.Settings, echo: Callable[[str], None] = print, timeout_s: float = 3600.0,
        quiet_s: float = 3.0, processors: int | None = None) -> int:
    """Reset the projections and replay the log through the real workers (one sink, ``processors``
    processors sharing the log's partitions), with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

    from streams.children import child_env

    try:
        reset_clickhouse(settings, echo)
        asyncio.run(reset_kafka(settings, echo))
        total = asyncio.run(_end_offsets(settings.kafka_bootstrap, [settings.topic("webhooks")]))
    except RebuildError as exc:
        echo(f"error: {exc}")
        return 1
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # the sink (owner of the embedded ClickHouse) and the processors in processes of their own: a processor
    # is bound to one core by its event loop, so the replay takes as many as there are cores
    workers: dict[str, subprocess.Popen] = {}
    for name, role in worker_plan(processors or default_processors(settings)):
        with open(logs / f"rebuild-{name}.log", "ab") as log:
            workers[name] = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--roles", role],
                                             # several workers on one machine: none serves /metrics
                                             env=child_env(replace(settings, worker_metrics_port=None)),
                                             stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
    code = 0
    try:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Bar(*columns, transient=False) as bar:
            replay = bar.add_task("replaying the event log", total=sum(total.values()) or 1)
            sinking = bar.add_task("writing ClickHouse     ", total=None)
            deadline = time.monotonic() + timeout_s
            stable_since: float | None = None
            last: Progress | None = None
            still = StandingStill(STILL_S)
            while True:
                for name, worker in workers.items():
                    if worker.poll() is not None:
                        raise RebuildError(f"the {name} worker exited with code {worker.returncode}; see "
                                           f"{logs / f'rebuild-{name}.log'}")
                now = asyncio.run(progress(settings, total))
                bar.update(replay, completed=now.processed if now.total else 1)
                bar.update(sinking, completed=now.sunk, total=max(now.to_sink, 1))
                # done once the processor has caught up and the sink has drained what it produced,
                # with no new output for quiet_s (the last snapshots and alerts have been written)
                if now.done and last == now:
                    stable_since = stable_since or time.monotonic()
                    if time.monotonic() - stable_since >= quiet_s:
                        break
                else:
                    stable_since = None
                last = now
                if still(now, time.monotonic()):
                    bar.console.print(
                        f"warning: no progress for {STILL_S:.0f} s ({now.processed} of {now.total} events replayed, "
                        f"{now.sunk} of {now.to_sink} records written): a worker may be stuck; see "
                        f"{logs}/rebuild-*.log. The rebuild waits up to {timeout_s:.0f} s in all; Ctrl-C stops it "
                        f"and `enx-streams rebuild` starts it over.")
                if time.monotonic() > deadline:
                    raise RebuildError(f"the rebuild did not finish within {timeout_s:.0f} s; see {logs}/rebuild-*.log")
                time.sleep(0.5)  # progress poll interval
        echo(f"rebuilt from {sum(total.values())} webhook events")
    except RebuildError as exc:
        echo(f"error: {exc}")
        code = 1
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers.values():
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    return code
