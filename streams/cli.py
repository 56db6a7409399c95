"""The ``enx-streams`` entry point: parses the command line, then calls the roles.

Every ``ENX_*`` setting of :mod:`streams.config` is mirrored by a flag on every command
(``ENX_DATA_DIR`` <-> ``--data-dir``), added by :func:`with_settings`, so a setting cannot exist in
one place and not the other. Roles are imported inside their command: ``enx-streams kafka status``
does not pay for faust or chdb.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from typing import Annotated, Any, Callable, Optional

import typer
from rich.markup import escape  # help texts are rich markup: "[env X]" would vanish, "[/x]" fails

from streams import config
from streams.status import DEFAULT_TIMEOUT_S
from streams.status.judge import DEFAULT_MAX_AGE_S, DEFAULT_MAX_LAG

app = typer.Typer(help="enx-streams: EnableX session webhooks -> Kafka -> Faust -> ClickHouse.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
kafka_app = typer.Typer(help="The local Apache Kafka broker (KRaft), or a local cluster, for one machine and for tests.",
                        no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")


def fail(message: str, code: int = 1) -> None:
    """Print an error that says what to do next and exit non-zero."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def with_settings(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command one ``--flag`` per setting and pass it the loaded :class:`config.Settings`.

    The command declares a ``settings: config.Settings`` parameter; its other parameters stay as they are.
    """
    # eval_str: this module's annotations are strings (``from __future__ import annotations``), and typer
    # reads a ``__signature__`` as it is, so an unevaluated ``Annotated[..., typer.Option(help=...)]`` lost
    # its option's help and checks (``rebuild --processors 0`` was accepted)
    own = [p for name, p in inspect.signature(fn, eval_str=True).parameters.items() if name != "settings"]
    own_names = {p.name for p in own}
    extra = []
    for s in config.SETTINGS:
        if s.field in own_names:
            continue
        extra.append(inspect.Parameter(
            s.field, inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[Optional[str], typer.Option(s.flag, help=escape(f"{s.help} [env {s.env}]"),
                                                             show_default=False, rich_help_panel="Settings")]))

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        overrides = {s.field: kwargs.pop(s.field) for s in config.SETTINGS if s.field in kwargs
                     and s.field not in own_names}
        try:
            settings = config.load(**overrides)
        except config.SettingsError as exc:
            fail(str(exc), code=2)
        return fn(settings=settings, **kwargs)

    wrapper.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
    return wrapper


# -- kafka ------------------------------------------------------------------------------------------

PortOption = Annotated[Optional[int], typer.Option("--port", help="broker port, the first broker's in a cluster "
                                                   "(default: the port of ENX_KAFKA_BOOTSTRAP, 9092)")]
BrokersOption = Annotated[Optional[int], typer.Option(
    "--brokers", min=1, help="brokers of the local cluster on ports N, N+1, ... (a KRaft quorum of three "
    "controllers from 3 up; default: the cluster in the data dir, else 1)")]


def _local_kafka(settings: config.Settings, port: int | None, brokers: int | None = None):
    """The single local broker, or the local cluster when ``--brokers`` is above 1 or the data dir holds one."""
    from streams.broker.local import LocalKafka, LocalKafkaCluster, cluster_size

    if port is None:
        port = _port_of(settings.kafka_bootstrap)
    size = cluster_size(settings.data_dir)
    if (brokers or 1) > 1 or size:  # a cluster's layout in the data dir says its size (and refuses another)
        return LocalKafkaCluster(settings.data_dir, settings.cache_dir, brokers=brokers or size, port=port,
                                 replication=settings.kafka_replication)
    return LocalKafka(settings.data_dir, settings.cache_dir, port=port)


def _port_of(bootstrap: str) -> int:
    first = bootstrap.split(",")[0]
    try:
        return int(first.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 9092


@kafka_app.command("start")
@with_settings
def kafka_start(settings: config.Settings, port: PortOption = None, brokers: BrokersOption = None,
                timeout: Annotated[Optional[float], typer.Option(
                    help="seconds to wait for the broker(s) (default 90, 180 for a cluster)")] = None) -> None:
    """Start the local broker, or with --brokers 3 a cluster (resolving the jars with Maven on first use), and
    wait until every broker answers."""
    from streams.broker.local import BrokerError

    try:
        broker = _local_kafka(settings, port, brokers)
        status = broker.start(timeout_s=timeout or broker.START_TIMEOUT_S, echo=lambda m: typer.echo(m, err=True))
    except BrokerError as exc:
        fail(str(exc))
    typer.echo(status.describe())


@kafka_app.command("stop")
@with_settings
def kafka_stop(settings: config.Settings, port: PortOption = None, brokers: BrokersOption = None) -> None:
    """Stop the local broker (or every broker of the local cluster): SIGTERM, wait, then report."""
    from streams.broker.local import BrokerError

    try:
        typer.echo(_local_kafka(settings, port, brokers).stop())
    except BrokerError as exc:
        fail(str(exc))


@kafka_app.command("status")
@with_settings
def kafka_status(settings: config.Settings, port: PortOption = None, brokers: BrokersOption = None) -> None:
    """Say whether the local broker (or each broker of the cluster) runs, and the bootstrap address. Exit 0 when
    running (every broker), 3 when not (or not every broker)."""
    from streams.broker.local import BrokerError

    try:
        status = _local_kafka(settings, port, brokers).status()
    except BrokerError as exc:
        fail(str(exc))
    typer.echo(status.describe())
    raise typer.Exit(0 if status.running else 3)


@kafka_app.command("jars")
@with_settings
def kafka_jars(settings: config.Settings) -> None:
    """Resolve the pinned broker's jars with Maven into the cache (done by the install; safe to rerun)."""
    from streams.broker.local import BrokerError, pinned_kafka_version, resolve_jars

    try:
        lib = resolve_jars(settings.cache_dir, pinned_kafka_version(), echo=lambda m: typer.echo(m, err=True))
    except BrokerError as exc:
        fail(str(exc))
    typer.echo(f"Kafka {pinned_kafka_version()} jars ready in {lib}")


@kafka_app.command("topics")
@with_settings
def kafka_topics(settings: config.Settings) -> None:
    """Create (or check) the five contract topics on ENX_KAFKA_BOOTSTRAP."""
    from streams.broker.topics import TopicConflict, contract_topics, ensure_topics

    try:
        report = asyncio.run(ensure_topics(settings.kafka_bootstrap, contract_topics(settings),
                                           settings.kafka_replication))
    except TopicConflict as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a connection error, said plainly
        fail(f"could not reach Kafka at {settings.kafka_bootstrap} ({exc}); start it with "
             f"`enx-streams kafka start` or set ENX_KAFKA_BOOTSTRAP")
    for line in report:
        typer.echo(line)


# -- roles ------------------------------------------------------------------------------------------
# Each command parses, then hands the loaded Settings to its role. The roles live in their own packages
# (streams.ingest, streams.processor, streams.sink) and never import each other.

@app.command("ingest")
@with_settings
def ingest(settings: config.Settings,
           allow_anonymous: Annotated[bool, typer.Option(
               "--allow-anonymous", help="listen on a non-loopback address with no credential")] = False) -> None:
    """Run the HTTP ingest service: POST /webhooks/enablex or /webhooks/enablex/{token} -> the Avro event log."""
    from streams.ingest.service import StartRefused, run

    try:
        code = run(settings, allow_anonymous=allow_anonymous)
    except StartRefused as exc:
        fail(str(exc), code=2)
    raise typer.Exit(code)


@app.command("worker")
@with_settings
def worker(settings: config.Settings,
           roles: Annotated[str, typer.Option(help="comma-separated: processor, sink, reconciler")] = "processor,sink") -> None:
    """Run a worker: the processor (state tables, SLA watch), the ClickHouse sink and/or the reconciler."""
    from streams.worker import parse_roles, run

    try:
        chosen = parse_roles(roles)
    except ValueError as exc:
        fail(str(exc), code=2)
    raise typer.Exit(run(settings, chosen))


@app.command("migrate")
@with_settings
def migrate(settings: config.Settings) -> None:
    """Apply the numbered ClickHouse migrations (does nothing when rerun)."""
    from streams.sink.migrations import run_cli

    raise typer.Exit(run_cli(settings, echo=typer.echo))


@app.command("sql")
@with_settings
def sql(settings: config.Settings, query: Annotated[str, typer.Argument(help="the SQL to run")],
        format: Annotated[str, typer.Option("--format", help="any ClickHouse output format")] = "PrettyCompact") -> None:
    """Run SQL on the configured ClickHouse and print it (embedded: through the process that owns it, or
    read-only in this process when none runs)."""
    from streams.sink.query import QueryError, run_query

    try:
        out = run_query(settings, query, format, notice=lambda m: typer.echo(m, err=True))
    except QueryError as exc:
        fail(str(exc))
    sys.stdout.buffer.write(out)
    sys.stdout.flush()


@app.command("simulate")
@with_settings
def simulate(settings: config.Settings,
             url: Annotated[str, typer.Option(help="ingest webhook URL")] = "http://localhost:8080/webhooks/enablex",
             sessions: Annotated[int, typer.Option(help="sessions to simulate")] = 100,
             rate: Annotated[float, typer.Option(help="events per second")] = 50.0,
             duplicates: Annotated[float, typer.Option(help="share of events delivered twice (0-1)")] = 0.05,
             out_of_order: Annotated[float, typer.Option("--out-of-order", help="share of sessions delivered out of order (0-1)")] = 0.1,
             stalled: Annotated[float, typer.Option(help="share of recorded sessions whose transcode never comes (0-1)")] = 0.05,
             seed: Annotated[int, typer.Option(help="random seed (same seed, same traffic)")] = 1) -> None:
    """Post realistic EnableX traffic (both payload shapes, all types) to an ingest URL."""
    from streams.simulate import SimulationError, run

    try:
        summary = run(url=url, sessions=sessions, rate=rate, duplicates=duplicates, out_of_order=out_of_order,
                      stalled=stalled, seed=seed)
    except SimulationError as exc:
        fail(str(exc))
    typer.echo(summary)


@app.command("dev")
@with_settings
def dev(settings: config.Settings) -> None:
    """The whole pipeline on one machine: local Kafka, ingest on :8080, processor + sink, embedded ClickHouse."""
    from streams.dev import run

    raise typer.Exit(run(settings, echo=lambda m: typer.echo(m, err=False)))


@app.command("rebuild")
@with_settings
def rebuild(settings: config.Settings,
            processors: Annotated[Optional[int], typer.Option(
                "--processors", min=1, help="processor workers replaying the log in parallel "
                "[default: one per CPU, at most one per partition]")] = None,
            yes: Annotated[bool, typer.Option(
                "--yes", help="go ahead without asking (it still refuses while a worker runs)")] = False) -> None:
    """Recompute the projections (state tables, sessions topic, ClickHouse tables) from the event log, into a
    shadow database swapped in at the end; checks first and asks before it replaces anything."""
    import sys

    from streams.rebuild import run

    confirm = (lambda question: typer.confirm(question, default=False)) if sys.stdin.isatty() else None
    raise typer.Exit(run(settings, echo=typer.echo, processors=processors, yes=yes, confirm=confirm))


@app.command("status")
@with_settings
def status(settings: config.Settings,
           format: Annotated[str, typer.Option("--format", help="text (a table, the verdict first) or json")] = "text",
           max_lag: Annotated[int, typer.Option(
               "--max-lag", min=0,
               help="records a consumer group may be behind before it is degraded")] = DEFAULT_MAX_LAG,
           max_age: Annotated[float, typer.Option(
               "--max-age", min=0, help="seconds a webhook may wait (unprocessed, not in ClickHouse, in the "
               "spool) before it is degraded")] = DEFAULT_MAX_AGE_S,
           timeout: Annotated[float, typer.Option(
               "--timeout", min=0.1,
               help="seconds each check may take (Kafka, ingest, ClickHouse)")] = DEFAULT_TIMEOUT_S) -> None:
    """The pipeline's health: broker, consumer lag, ingest and its spool, the ClickHouse owner, freshness.
    Exit 0 when healthy, 1 when degraded (the verdict says why and what to do)."""
    import logging

    from streams.status import gather, judge, render

    if format not in ("text", "json"):
        fail(f"--format {format!r}: give text or json", code=2)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # an unreachable broker is the report's to say
    facts = gather.gather(settings, timeout_s=timeout)
    report = judge.judge(facts, judge.Limits(max_lag=max_lag, max_age_s=max_age))
    typer.echo(render.as_json(report, facts) if format == "json" else render.table(report))
    raise typer.Exit(report.exit_code)


def _day(value: str | None, flag: str):
    import datetime as dt

    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        fail(f"{flag} {value!r} is not a date: give YYYY-MM-DD (UTC)", code=2)


@app.command("reconcile")
@with_settings
def reconcile(settings: config.Settings,
              since: Annotated[Optional[str], typer.Option(
                  "--since", help="first day to read, YYYY-MM-DD UTC [default: the cursor's day]")] = None,
              until: Annotated[Optional[str], typer.Option(
                  "--until", help="last day to read, YYYY-MM-DD UTC [default: today]")] = None,
              room: Annotated[Optional[str], typer.Option(
                  "--room", help="read only this room_id")] = None) -> None:
    """One reconciliation pass: what EnableX's Server API holds that no webhook brought -> enablex.reconcile.v1."""
    from streams.reconcile.client import EnableXError
    from streams.reconcile.cursor import CursorError
    from streams.reconcile.run import ReconcileError, run_once
    from streams.sink.query import QueryError

    first, last = _day(since, "--since"), _day(until, "--until")
    if not settings.enablex_app_id or not settings.enablex_app_key:
        fail("the reconciler needs EnableX's Server API credentials: set ENX_ENABLEX_APP_ID and ENX_ENABLEX_APP_KEY "
             "(the project's APP_ID and APP_KEY in the EnableX portal)", code=2)
    try:
        asyncio.run(run_once(settings, since=first, until=last, room=room, echo=typer.echo))
    except (EnableXError, ReconcileError, QueryError, CursorError) as exc:
        fail(str(exc))


# -- dead letters -----------------------------------------------------------------------------------

deadletters_app = typer.Typer(help="The dead letters of the dead-letter topic: list, show, redrive.",
                              no_args_is_help=True)
app.add_typer(deadletters_app, name="deadletters")
ReasonOption = Annotated[Optional[str], typer.Option(
    "--reason", help="only reasons starting with this (a code such as app_id_not_allowed, or more)")]
SinceOption = Annotated[Optional[str], typer.Option(
    "--since", help="only letters received since: a duration (30m, 6h, 7d, 2w) or an ISO date/datetime (UTC)")]
AppIdOption = Annotated[Optional[str], typer.Option("--app-id", help="only bodies naming this app_id")]


def _letter_filter(reason: str | None, since: str | None, app_id: str | None,
                   origin: str | None = None) -> Filter:  # noqa: F821 - the module is imported lazily
    import time

    from streams.deadletters.select import FilterError, make_filter

    try:
        return make_filter(reason, since, app_id, int(time.time() * 1000), origin)
    except FilterError as exc:
        fail(str(exc), code=2)


def _progress(topic: str, read: int, total: int) -> None:
    typer.echo(f"read {read}/{total} records of {topic}", err=True)


@deadletters_app.command("list")
@with_settings
def deadletters_list(settings: config.Settings, reason: ReasonOption = None, since: SinceOption = None,
                     app_id: AppIdOption = None,
                     origin: Annotated[Optional[str], typer.Option(
                         "--origin", help="only letters of: ingest, processor, sink")] = None,
                     limit: Annotated[int, typer.Option("--limit", min=0, help="the newest N (0: all)")] = 50,
                     format: Annotated[str, typer.Option("--format", help="text or json (one object a line)")] = "text") -> None:
    """List dead letters (newest last): received_at, id, origin, app_id, reason, and whether redriven."""
    import json

    from streams.deadletters import topics, view

    if format not in ("text", "json"):
        fail(f"--format {format!r}: give text or json", code=2)
    selection = _letter_filter(reason, since, app_id, origin)
    try:
        letters, undecodable = asyncio.run(topics.read_dead_letters(settings, _progress, keep=selection.matches))
        ledger = asyncio.run(topics.read_ledger(settings))
    except topics.DeadLettersError as exc:
        fail(str(exc))
    matching = sorted(letters, key=lambda x: x["received_at"])
    chosen = matching[-limit:] if limit else matching
    for letter in chosen:
        entry = ledger.get(letter["id"])
        typer.echo(json.dumps(view.as_json(letter, entry)) if format == "json" else view.list_line(letter, entry))
    typer.echo(f"{len(chosen)} of {len(matching)} matching dead letter(s) shown"
               + (" (the newest; --limit 0 shows all)" if len(chosen) < len(matching) else "")
               + (f"; {undecodable} undecodable record(s) skipped" if undecodable else ""), err=True)


@deadletters_app.command("show")
@with_settings
def deadletters_show(settings: config.Settings,
                     letter_id: Annotated[str, typer.Argument(help="the dead letter id (deadletter_id of the 400/403)")],
                     format: Annotated[str, typer.Option("--format", help="text or json")] = "text") -> None:
    """Show one dead letter: reason, source, headers, the body, and its redrive."""
    import json

    from streams.deadletters import topics, view

    if format not in ("text", "json"):
        fail(f"--format {format!r}: give text or json", code=2)
    try:
        found, _ = asyncio.run(topics.read_dead_letters(settings, _progress, keep=lambda x: x["id"] == letter_id))
        ledger = asyncio.run(topics.read_ledger(settings))
    except topics.DeadLettersError as exc:
        fail(str(exc))
    if not found:
        fail(f"no dead letter {letter_id!r} on {settings.topic('deadletter')}; `enx-streams deadletters list` "
             f"shows the ids")
    letter = found[-1]
    entry = ledger.get(letter_id)
    typer.echo(json.dumps(view.as_json(letter, entry), indent=2) if format == "json" else view.show_text(letter, entry))


@deadletters_app.command("redrive")
@with_settings
def deadletters_redrive(settings: config.Settings, reason: ReasonOption = None, since: SinceOption = None,
                        app_id: AppIdOption = None,
                        dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be appended; "
                                                              "append and record nothing")] = False) -> None:
    """Append ingest's dead letters that today's rules accept (this version's parser, ENX_ALLOWED_APP_IDS as set
    here: set it as ingest has it) to the webhook log, once, with the event ids ingest would have given them."""
    from streams.deadletters import redrive, topics

    selection = _letter_filter(reason, since, app_id)
    try:
        summary = redrive.run(settings, selection, dry_run=dry_run, echo=lambda m: typer.echo(m, err=True),
                              progress=_progress)
    except topics.DeadLettersError as exc:
        fail(str(exc))
    typer.echo(summary.describe(dry_run))


# -- settings ---------------------------------------------------------------------------------------

@app.command("settings")
@with_settings
def show_settings(settings: config.Settings) -> None:
    """Print the effective settings (secrets masked)."""
    for env, value in settings.describe().items():
        typer.echo(f"{env}={value}")


def main() -> None:  # pragma: no cover - console script
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
