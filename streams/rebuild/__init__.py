"""``enx-streams rebuild``: recompute every projection from the event log, without ever emptying what readers see.

The event log (``<prefix>webhooks.v1``), the dead letters, the reconciler's findings and the alerts topic are
the sources; the processor's state, the sessions topic and the ClickHouse tables are projections. A rebuild:

1. **checks, changing nothing**: the processor's and the sink's consumer groups (and a rebuild's own sink
   group: another rebuild) have no running member; nobody owns the embedded data directory (the rebuild
   takes its owner lock here and holds it to the end, so no sink can start meanwhile); on a ClickHouse
   server, no insert into the database is running. Then it names what it will replace (the database and
   its tables with their rows, the processor's group and topics, the sink group's offsets) and asks, or
   goes on with ``--yes``; without a terminal and without ``--yes`` it refuses. With the embedded engine
   it answers ``enx-streams sql`` itself from here until the swap is done (the old rows, then the new).
2. **resets the processor's Kafka state** (its group, changelogs and command topic; the compacted sessions
   topic is recreated) and builds an empty shadow database ``<db>_rebuild`` with the same numbered
   migrations (after bringing ``<db>`` up to date with them).
3. **replays**: the real processor workers (one per CPU, at most one per partition; ``--processors N``), each
   a process of its own in the processor's group, and a sink in this process that writes the shadow as a
   group of its own (``<sink group>.rebuild``), reading the log, dead letters, findings, sessions, the
   alerts topic's history and the rebuild's alerts topic. A progress bar shows events/s and time left.
4. **is complete against end offsets, never "it stood still"** (:class:`plan.Completion`): the processors
   have committed the log and findings up to their ends *at the start*; every stall that was due when the
   rebuild started is decided and written; the commands of that judgement are committed; the sink has
   written the sources as of the start and all the processors published until then. Webhooks that keep
   arriving move none of these targets, so it finishes under live traffic.
5. **hands over and swaps**: stops the processors (they commit where they are: the live processor carries
   on from there, with the rebuilt state), publishes the new alerts (below), lets the sink write what the
   processors published until they stopped, stops it, sets the live sink group's offsets to where the
   rebuild's sink stopped, and swaps the shadow's tables in with one ``EXCHANGE TABLES`` (shadow.py). The
   replaced tables stay in ``<db>_previous`` until the next rebuild.

**After it** the live workers carry on. The processor resumes from its committed offsets with the rebuilt
tables, so it judges each later webhook once. The live sink resumes from the rebuild's sink's offsets into
the swapped-in tables: nothing the rebuild wrote is read again except what the rebuild's sink had inserted
and not yet committed, whose rows collapse under ``FINAL`` (by event id, session version, alert id), and
nothing between the two is skipped. The alerts the rebuild published (below) come again from the alerts
topic into ``sla_alerts`` and collapse there by their id.

**Replayed alerts page nobody again.** The rebuild's processors publish their alerts to a topic of the
rebuild's own, ``<prefix>alerts.rebuild`` (``ENXREBUILD_ALERTS_TOPIC``), which the rebuild's sink reads
beside the alerts topic's history, so ClickHouse gets all of them. Alert ids are deterministic (one per
session and kind), so once the processors have stopped, an alert of the rebuild whose id is on the alerts
topic already is a replay and is dropped; one that is not, detected at or after the log time up to which the
live processor had judged its partition, is new (a stall of a webhook that came during the rebuild, or one
that fell due while the workers were stopped) and is published onto the alerts topic, once. One the replay
raises for an older past (another SLA, new rules) is in ClickHouse and pages nobody. The rebuild's alerts
topic and its sink group are deleted at the end. (A processor that has to be killed instead of stopping may leave an alert whose
table change it did not write: the live processor would raise that one again; the rebuild says so.)

**If a rebuild stops half-way** (an error, Ctrl-C, the timeout) the live database is untouched and readers
keep the old rows; the new alerts found so far are published as above. The processor's state is the
half-rebuilt one: run ``enx-streams rebuild`` again before starting the workers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from streams import config
from streams.rebuild import kafka, shadow
from streams.rebuild.kafka import RebuildError
from streams.rebuild.plan import Completion, Observation, Plan, Stage, describe, new_alerts, of_topics, reached, \
    refusals, total

__all__ = ["RebuildError", "run", "default_processors", "worker_plan"]

STILL_S = 120.0     # a replay that has not moved for this long is said to (a worker may be stuck)
POLL_S = 0.5        # how often the rebuild looks at the groups' offsets
STOP_S = 120.0      # how long a processor may take to stop before it is killed (killed, its last flush is lost)


def processor_group(settings: config.Settings) -> str:
    from streams.processor.names import app_id

    return app_id(settings)


def command_topic(settings: config.Settings) -> str:
    from streams.processor.names import command_topic as topic

    return topic(settings)


def live_sink_group(settings: config.Settings) -> str:
    from streams.sink.consumer import sink_group

    return sink_group(settings)


def rebuild_sink_group(settings: config.Settings) -> str:
    return live_sink_group(settings) + kafka.REBUILD_SINK_SUFFIX


def live_sink_topics(settings: config.Settings) -> list[str]:
    from streams.sink.consumer import TOPIC_KINDS

    return [settings.topic(kind) for kind in TOPIC_KINDS]


def default_processors(settings: config.Settings) -> int:
    """One processor worker per CPU, at most one per partition (a worker without a partition idles)."""
    return max(1, min(os.cpu_count() or 1, settings.partitions))


def worker_plan(processors: int) -> list[str]:
    """The names of the rebuild's processor workers (for their logs)."""
    return ["processor"] if processors == 1 else [f"processor-{i + 1}" for i in range(processors)]


class StandingStill:
    """Whether the replay has not moved for ``after_s``: true once per stop of its progress (moving again
    re-arms it). Pure: the caller gives what it saw and the time."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._last: object = None
        self._since = 0.0
        self._told = False

    def __call__(self, seen: object, at_s: float) -> bool:
        if seen != self._last:
            self._last, self._since, self._told = seen, at_s, False
            return False
        if self._told or at_s - self._since < self.after_s:
            return False
        self._told = True
        return True


@dataclasses.dataclass
class _Run:
    """What a rebuild holds while it runs."""

    settings: config.Settings
    echo: Callable[[str], None]
    call: Callable[..., Awaitable[Any]]   # a ClickHouse call off the event loop
    client: Any
    lock: Any
    processor_group: str
    sink_group: str
    alerts_topic: str
    database: str = shadow.migrations.DATABASE
    workers: dict[str, subprocess.Popen] = dataclasses.field(default_factory=dict)
    sink_task: asyncio.Task | None = None
    sink_stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    forwarded: bool = False

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap

    @property
    def logs(self) -> Any:
        return self.settings.data_dir / "logs"


# -- 1. the checks and the plan ---------------------------------------------------------------------

async def _look(settings: config.Settings, call: Callable[..., Awaitable[Any]], client: Any | None,
                owner_refusal: str | None) -> tuple[Plan, list[str], dict[tuple[str, int], int]]:
    """The plan, why it must not run (if so), and the processor's committed offsets: all read, nothing changed."""
    groups = (processor_group(settings), live_sink_group(settings), rebuild_sink_group(settings))
    admin = kafka.admin_client(settings)
    try:
        await admin.start()
        try:
            running = {g: await kafka.members(admin, g) for g in groups}
            before = await kafka.committed(admin, groups[0])
            existing = await admin.list_topics()
        finally:
            await admin.close()
    except Exception as exc:  # noqa: BLE001 - said with what to do
        raise RebuildError(f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc}); start it "
                           f"(`enx-streams kafka start`) or set ENX_KAFKA_BOOTSTRAP") from exc
    if settings.topic("webhooks") not in existing:
        raise RebuildError(f"there is no event log {settings.topic('webhooks')} on {settings.kafka_bootstrap}: "
                           f"nothing to rebuild from (check ENX_TOPIC_PREFIX and ENX_KAFKA_BOOTSTRAP)")
    log_ends = await kafka.end_offsets(settings.kafka_bootstrap, [settings.topic("webhooks")])
    database = shadow.migrations.DATABASE
    counts = await call(shadow.row_counts, client, database) if client is not None else {}
    writing = [] if client is None or settings.clickhouse_is_embedded else await call(shadow.writers, client,
                                                                                        database)
    deleted = [*kafka.processor_state_topics(existing, groups[0]), settings.topic("sessions")]
    plan = Plan(database=database, shadow=shadow.shadow_of(database), previous=shadow.previous_of(database),
                row_counts=counts, processor_group=groups[0], sink_group=groups[1],
                deleted_topics=tuple(t for t in deleted if t in existing), log_events=total(log_ends))
    return plan, refusals(running, owner_refusal, writing), before


def _refusal_text(reasons: list[str]) -> str:
    return ("error: the rebuild changed nothing, because:\n" + "\n".join(f"  - {r}" for r in reasons) +
            "\nStop every worker and `enx-streams dev` using this deployment (and any other rebuild), then run "
            "`enx-streams rebuild` again.")


# -- 3. the replay ----------------------------------------------------------------------------------

def _start_processors(run: _Run, count: int) -> None:
    from streams.children import child_env

    run.logs.mkdir(parents=True, exist_ok=True)
    # several workers on one machine: none serves /metrics
    env = {**child_env(dataclasses.replace(run.settings, worker_metrics_port=None)),
           "ENXREBUILD_ALERTS_TOPIC": run.alerts_topic}
    for name in worker_plan(count):
        with open(run.logs / f"rebuild-{name}.log", "ab") as log:
            # a process each: a processor is bound to one core by its event loop
            run.workers[name] = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--roles",
                                                  "processor"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, start_new_session=True)


def _start_sink(run: _Run, shadow_db: str) -> None:
    from streams.sink.consumer import SinkTarget, run_sink

    target = SinkTarget(database=shadow_db, group=run.sink_group, extra_topics=((run.alerts_topic, "alerts"),))
    run.sink_task = asyncio.ensure_future(run_sink(run.settings, run.sink_stop, target=target, lock=run.lock))


def _check_running(run: _Run, processors: bool = True) -> None:
    """Raise when a worker (``processors``) or the sink of the rebuild has stopped by itself."""
    for name, worker in run.workers.items() if processors else ():
        if worker.poll() is not None:
            raise RebuildError(f"the {name} worker exited with code {worker.returncode}; see "
                               f"{run.logs / f'rebuild-{name}.log'}")
    if run.sink_task is not None and run.sink_task.done():
        exc = run.sink_task.exception() if not run.sink_task.cancelled() else None
        raise RebuildError(f"the rebuild's sink stopped: {exc!r}")


async def _observe(run: _Run, completion: Completion, shadow_db: str, started_ms: int,
                   admin: Any) -> Observation:
    processed = await kafka.committed(admin, run.processor_group)
    sunk = await kafka.committed(admin, run.sink_group)
    ends = await kafka.end_offsets(run.bootstrap, [*completion.outputs_topics, completion.commands_topic])
    overdue = None
    if completion.stage is Stage.JUDGING:
        overdue = await run.call(shadow.overdue, run.client, shadow_db, started_ms)
    return Observation(processed=processed, sunk=sunk, ends=ends, overdue=overdue)


async def _intruders(run: _Run, admin: Any) -> None:
    """Refuse to go on when a worker of the live deployment joined a group meanwhile."""
    joined = await kafka.members(admin, run.processor_group) - len(run.workers)
    if joined > 0:
        raise RebuildError(f"{joined} more member(s) joined the processor group {run.processor_group} during the "
                           f"rebuild: stop that worker")
    if await kafka.members(admin, live_sink_group(run.settings)):
        raise RebuildError(f"a sink joined the group {live_sink_group(run.settings)} during the rebuild: stop it")


def _bar() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, \
        TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} events/s" if speed else "- events/s")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                    TextColumn("left"), TimeRemainingColumn(), TimeElapsedColumn(), transient=False)


async def _follow(run: _Run, completion: Completion, shadow_db: str, started_ms: int,
                  timeout_s: float) -> Completion:
    """Until complete (plan.Completion), with the progress bar."""
    admin = kafka.admin_client(run.settings)
    await admin.start()
    still = StandingStill(STILL_S)
    deadline = time.monotonic() + timeout_s
    try:
        with _bar() as bar:
            replay = bar.add_task("replaying the event log", total=max(total(completion.inputs), 1))
            writing = bar.add_task("writing ClickHouse     ", total=None)
            while True:
                _check_running(run)
                await _intruders(run, admin)
                seen = await _observe(run, completion, shadow_db, started_ms, admin)
                done, of = completion.replayed(seen)
                bar.update(replay, completed=done if of else 1)
                wrote, of_written = completion.written(seen)
                bar.update(writing, completed=wrote, total=max(of_written, 1))
                after = completion.advance(seen)
                if after.stage is not completion.stage:
                    bar.console.print(f"{completion.stage.value}: done" +
                                      ("" if after.done else f"; now {after.stage.value}"))
                completion = after
                if completion.done:
                    return completion
                if still((completion.stage, seen.processed, seen.sunk, seen.overdue), time.monotonic()):
                    bar.console.print(
                        f"warning: no progress for {STILL_S:.0f} s ({completion.stage.value}; {done} of {of} events "
                        f"replayed, {wrote} of {of_written} records written"
                        f"{'' if seen.overdue is None else f', {seen.overdue} stalls due'}): a worker "
                        f"may be stuck; see {run.logs}/rebuild-*.log. The rebuild waits up to {timeout_s:.0f} s "
                        f"in all; Ctrl-C stops it and `enx-streams rebuild` starts it over.")
                if time.monotonic() > deadline:
                    raise RebuildError(f"the rebuild did not finish within {timeout_s:.0f} s "
                                       f"({completion.stage.value}); see {run.logs}/rebuild-*.log")
                await asyncio.sleep(POLL_S)  # progress poll interval
    finally:
        await admin.close()


# -- 5. the hand-over ---------------------------------------------------------------------------------

async def _stop_processors(run: _Run) -> None:
    for worker in run.workers.values():
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for name, worker in run.workers.items():
        try:
            await asyncio.to_thread(worker.wait, STOP_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            await asyncio.to_thread(worker.wait)
            run.echo(f"warning: the {name} worker did not stop within {STOP_S:.0f} s and was killed: an alert it "
                     f"raised last may be raised again by the live processor")


async def _forward_new_alerts(run: _Run, horizon: dict[int, int]) -> int:
    """Publish on the alerts topic the rebuild's alerts that are new (plan.new_alerts); once per rebuild."""
    if run.forwarded:
        return 0
    run.forwarded = True
    alerts_topic = run.settings.topic("alerts")
    published = kafka.alert_ids(await kafka.read_all(run.bootstrap, alerts_topic))
    rebuilt = kafka.rebuilt_alerts(await kafka.read_all(run.bootstrap, run.alerts_topic))
    fresh = new_alerts(rebuilt, published, horizon)
    sent = await kafka.publish(run.bootstrap, alerts_topic, fresh)
    run.echo(f"alerts: {len(rebuilt)} raised by the replay, {sent} of them new and published on {alerts_topic}; "
             f"the others were on it already (or judge the past again) and page nobody")
    return sent


async def _drain_sink(run: _Run, sources: dict, timeout_s: float) -> None:
    """Once the processors have stopped: the sink writes everything they published, then stops."""
    outputs = await kafka.end_offsets(run.bootstrap, [run.settings.topic("sessions"), run.alerts_topic])
    targets = {**sources, **outputs}
    admin = kafka.admin_client(run.settings)
    await admin.start()
    deadline = time.monotonic() + timeout_s
    try:
        while reached(await kafka.committed(admin, run.sink_group), targets) < total(targets):
            _check_running(run, processors=False)  # stopped on purpose
            if time.monotonic() > deadline:
                raise RebuildError(f"the rebuild's sink did not write the processors' last records within "
                                   f"{timeout_s:.0f} s")
            await asyncio.sleep(POLL_S)  # sink progress poll, bounded by the deadline
    finally:
        await admin.close()
    await _stop_sink(run)


async def _stop_sink(run: _Run) -> None:
    if run.sink_task is None:
        return
    run.sink_stop.set()
    task, run.sink_task = run.sink_task, None
    try:
        await task
    except Exception as exc:  # noqa: BLE001 - reported; the caller decides
        raise RebuildError(f"the rebuild's sink stopped with an error: {exc}") from exc


async def _sink_handover(run: _Run) -> dict[tuple[str, int], int]:
    """Where the live sink is to carry on: where the rebuild's sink stopped, on every partition the live sink
    reads (0 where it wrote nothing). Refuses when a live sink has joined its group meanwhile."""
    admin = kafka.admin_client(run.settings)
    await admin.start()
    try:
        if await kafka.members(admin, live_sink_group(run.settings)):
            raise RebuildError(f"a sink joined {live_sink_group(run.settings)} before the swap: stop it")
        sunk = await kafka.committed(admin, run.sink_group)
    finally:
        await admin.close()
    topics = live_sink_topics(run.settings)
    ends = await kafka.end_offsets(run.bootstrap, topics)
    return {tp: sunk.get(tp, 0) for tp in of_topics(ends, topics)}


async def _hand_over(run: _Run, offsets: dict[tuple[str, int], int]) -> None:
    """After the swap: the live sink group's offsets moved. Should that fail, the live sink reads again from its
    own offsets into the swapped-in tables: rows it writes twice collapse under FINAL, none is skipped."""
    try:
        await kafka.set_offsets(run.bootstrap, live_sink_group(run.settings), offsets)
    except Exception as exc:  # noqa: BLE001 - said, with what it means
        run.echo(f"warning: could not set the offsets of {live_sink_group(run.settings)} ({exc!r}): the live sink "
                 f"will read again from where it stopped before the rebuild (rows collapse under FINAL)")


# -- the whole rebuild ---------------------------------------------------------------------------------

async def _replay(run: _Run, before: dict[tuple[str, int], int], processors: int, timeout_s: float) -> int:
    settings = run.settings
    log, reconcile = settings.topic("webhooks"), settings.topic("reconcile")
    started_ms = int(time.time() * 1000)
    horizon = await kafka.log_times(run.bootstrap, of_topics(before, [log]))
    inputs = await kafka.end_offsets(run.bootstrap, [log, reconcile])
    sources = await kafka.end_offsets(run.bootstrap, [log, settings.topic("deadletter"), reconcile,
                                                      settings.topic("alerts")])
    swapped = False
    try:
        await kafka.reset(settings, run.processor_group, run.sink_group, run.echo)
        shadow_db = await run.call(shadow.create, run.client, run.database, run.echo)
        run.echo(f"building {shadow_db}; readers keep seeing {run.database} until the swap")
        _start_sink(run, shadow_db)
        _start_processors(run, processors)
        completion = Completion(inputs=inputs, sources=sources,
                                outputs_topics=(settings.topic("sessions"), run.alerts_topic),
                                commands_topic=command_topic(settings))
        await _follow(run, completion, shadow_db, started_ms, timeout_s)
        await _stop_processors(run)
        await _forward_new_alerts(run, horizon)
        await _drain_sink(run, sources, timeout_s)
        offsets = await _sink_handover(run)
        previous = await run.call(shadow.swap, run.client, run.database, shadow_db)
        swapped = True
        await _hand_over(run, offsets)
        run.echo(f"swapped the rebuilt tables into {run.database}; the replaced ones are in {previous} until the "
                 f"next rebuild (`DROP DATABASE {previous}` frees them now)")
        try:
            await kafka.forget(settings, run.alerts_topic, run.sink_group)
        except Exception as exc:  # noqa: BLE001 - the rebuild is done; the next one deletes them anyway
            run.echo(f"warning: could not delete {run.alerts_topic} and group {run.sink_group} ({exc!r}); the next "
                     f"rebuild does")
        run.echo(f"rebuilt from {total(inputs)} records of the event log and the findings (webhooks, and ingest's "
                 f"watermarks while it ran); start the workers: the processor "
                 f"carries on from the rebuild's offsets, the sink from where the rebuild's sink stopped")
        return 0
    finally:
        if not swapped:
            await _stop_processors(run)
            try:
                await _forward_new_alerts(run, horizon)
            finally:
                run.sink_stop.set()
                if run.sink_task is not None:
                    await asyncio.gather(run.sink_task, return_exceptions=True)
                run.echo(f"the rebuild stopped before the swap: {run.database} is untouched (readers keep the old "
                         f"rows); the processor's state is half rebuilt, so run `enx-streams rebuild` again before "
                         f"starting the workers")


async def _main(settings: config.Settings, echo: Callable[[str], None], yes: bool,
                confirm: Callable[[str], bool] | None, timeout_s: float, processors: int | None) -> int:
    from streams.sink.clickhouse import OwnerError, OwnerLock, connect, settings_path

    loop = asyncio.get_running_loop()
    # SIGTERM stops it as Ctrl-C does: the processors stopped, the new alerts published, what it left said
    loop.add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="enx-rebuild-ch")

    def call(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return loop.run_in_executor(executor, fn, *args)

    path = settings_path(settings)
    lock: Any = None
    client: Any = None
    server: Any = None
    try:
        owner_refusal = None
        if path is not None:
            try:
                lock = OwnerLock.acquire(path, "enx-streams rebuild")
            except OwnerError as exc:
                owner_refusal = str(exc).split("; an embedded data directory")[0]
        if owner_refusal is None and (path is None or path.is_dir()):
            client = await call(connect, settings)
        plan, reasons, before = await _look(settings, call, client, owner_refusal)
        if reasons:
            echo(_refusal_text(reasons))
            return 1
        if client is None:  # an embedded directory that does not exist yet: created only once the checks passed
            client = await call(connect, settings)
        if lock is not None:
            from streams.sink.owner import serve_queries

            reader = await call(lambda: connect(settings, readonly=True))
            server = await serve_queries(settings, reader)  # readers are answered from here on
        echo(describe(plan))
        if not yes:
            if confirm is None:
                echo("error: not confirmed, nothing changed: run `enx-streams rebuild --yes` to go ahead without a "
                     "question (or run it in a terminal to be asked)")
                return 2
            if not await asyncio.to_thread(confirm, "Replace them?"):
                echo("nothing changed")
                return 1
        run = _Run(settings=settings, echo=echo, call=call, client=client, lock=lock,
                   processor_group=plan.processor_group, sink_group=rebuild_sink_group(settings),
                   alerts_topic=kafka.rebuild_alerts_topic(settings))
        return await _replay(run, before, processors or default_processors(settings), timeout_s)
    except RebuildError as exc:
        echo(f"error: {exc}")
        return 1
    finally:
        if server is not None:
            await server.close()
        if client is not None:
            await call(client.close)
        executor.shutdown(wait=True)
        if lock is not None:
            lock.release()


def run(settings: config.Settings, echo: Callable[[str], None] = print, *, yes: bool = False,
        confirm: Callable[[str], bool] | None = None, timeout_s: float = 3600.0,
        processors: int | None = None) -> int:
    """Check, confirm (``yes``, else ``confirm(question)``; neither: refuse), then rebuild into the shadow and
    swap it in. 0 when rebuilt; 1 when refused or failed (nothing replaced); 2 when not confirmed."""
    try:
        return asyncio.run(_main(settings, echo, yes, confirm, timeout_s, processors))
    except (KeyboardInterrupt, asyncio.CancelledError):
        echo("interrupted: the rebuild stopped (what that left is said above)")
        return 130
