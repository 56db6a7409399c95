"""One reconciliation pass, and the loop of the ``reconciler`` worker role.

A pass: read the cursor; ask EnableX's archive and CDR routes for each day of ``[since .. until]`` (by
default ``[cursor day .. today]``); ask ClickHouse which webhook types the log holds for those sessions;
compare (:mod:`.compare`); leave out what the cursor or ``reconcile_findings`` already knows; produce the
rest to ``<prefix>reconcile.v1`` (idempotent producer, ``acks=all``, keyed ``{app_id}/{conf_num}`` like
the log, so a finding lands on its session's partition) and wait for every acknowledgement; only then
write the cursor. A pass that fails anywhere moves nothing, so the next one reads the same days again.

A pass given ``--since``/``--until``/``--room`` remembers what it produced but does not move the cursor:
it did not read what the regular passes read.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from streams.config import Settings
from streams.reconcile import cursor as C
from streams.reconcile.client import EnableXClient, EnableXError
from streams.reconcile.compare import SESSION_UNKNOWN, WEBHOOK_MISSING, Finding, compare, sessions_of
from streams.reconcile.log import QueryFn, clickhouse_query, seen_types, sunk_findings

log = logging.getLogger("streams.reconcile")

Produce = Callable[[Sequence[Finding]], Awaitable[None]]
Echo = Callable[[str], None]
PRODUCE_TIMEOUT_S = 60.0


class ReconcileError(RuntimeError):
    """A pass could not run; the message says what to do."""


@dataclasses.dataclass
class PassSummary:
    since: dt.date
    until: dt.date
    archive_entries: int = 0
    cdr_rows: int = 0
    sessions: int = 0
    findings: list[Finding] = dataclasses.field(default_factory=list)
    already_known: int = 0
    cursor_day: dt.date | None = None

    @property
    def days(self) -> int:
        return (self.until - self.since).days + 1

    def by_kind(self) -> dict[str, int]:
        counts = collections.Counter(f.kind for f in self.findings)
        return {k: counts.get(k, 0) for k in (WEBHOOK_MISSING, SESSION_UNKNOWN)}

    def describe(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in self.by_kind().items())
        return (f"reconciled {self.since}..{self.until} ({self.days} day{'s' if self.days != 1 else ''}): "
                f"{self.archive_entries} archive entries, {self.cdr_rows} CDR rows, {self.sessions} sessions; "
                f"{len(self.findings)} new findings ({kinds}), {self.already_known} already known; "
                f"cursor {self.cursor_day or 'not set'}")


def client_of(settings: Settings, **options: object) -> EnableXClient:
    """The Server API client for these settings (a clear :class:`EnableXError` without credentials)."""
    app_id = settings.enablex_app_id.reveal() if settings.enablex_app_id else ""
    app_key = settings.enablex_app_key.reveal() if settings.enablex_app_key else ""
    return EnableXClient(settings.enablex_api_url, app_id, app_key, **options)  # type: ignore[arg-type]


def _days(since: dt.date, until: dt.date) -> list[dt.date]:
    return [since + dt.timedelta(days=i) for i in range((until - since).days + 1)]


async def reconcile_pass(settings: Settings, api: EnableXClient, query: QueryFn, produce: Produce, *,
                         now_ms: int | None = None, since: dt.date | None = None, until: dt.date | None = None,
                         room: str | None = None, cursor_file: Path | None = None,
                         settle_s: float = C.DEFAULT_SETTLE_S, echo: Echo = log.info) -> PassSummary:
    """Run one pass (see the module's doc) and return what it read and found."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    path = cursor_file or C.cursor_path(settings)
    cursor = C.load(path)
    today = C.utc_day(now_ms)
    explicit = since is not None or until is not None or room is not None
    since = since or cursor.day or C.first_open_day(now_ms, settle_s)
    until = until or today
    if since > until:
        raise ReconcileError(f"--since {since} is after --until {until}: give a period that starts before it ends")
    summary = PassSummary(since, until)
    archive: list[dict] = []
    cdr: list[dict] = []
    for day in _days(since, until):
        day_archive = await api.archive(day, day, room)
        day_cdr = await api.cdr(day, day, room)
        archive += day_archive
        cdr += day_cdr
        echo(f"read {day}: {len(day_archive)} archive entries, {len(day_cdr)} CDR rows"
             + (f" (room {room})" if room else ""))
    summary.archive_entries, summary.cdr_rows = len(archive), len(cdr)
    app_id = settings.enablex_app_id.reveal() if settings.enablex_app_id else None
    sessions = sessions_of(archive, cdr, app_id)
    summary.sessions = len(sessions)
    loop = asyncio.get_running_loop()
    seen = await loop.run_in_executor(None, seen_types, query, sessions) if sessions else {}
    every = compare(archive, cdr, seen, now_ms, settings.reconcile_grace_s, default_app_id=app_id)
    found = [f for f in every if f.finding_id not in cursor.ids()]
    sunk = await loop.run_in_executor(None, sunk_findings, query, [f.finding_id for f in found]) if found else set()
    new = [f for f in found if f.finding_id not in sunk]
    summary.findings = new
    summary.already_known = len(every) - len(new)
    if new:
        await produce(new)
    produced: dict[dt.date, list[str]] = collections.defaultdict(list)
    for f in found:  # the sunk ones too: the next pass need not ask ClickHouse about them again
        day = C.utc_day(f.trans_date) if f.trans_date is not None else today
        produced[max(day, since)].append(f.finding_id)
    moved = cursor.advanced(produced, None if explicit else C.first_open_day(now_ms, settle_s))
    C.save(path, moved)
    summary.cursor_day = moved.day
    return summary


# -- producing -------------------------------------------------------------------------------------

class FindingProducer:
    """Produces findings to ``<prefix>reconcile.v1``: idempotent, ``acks=all``, every send awaited."""

    def __init__(self, settings: Settings) -> None:
        from streams.avro import default_codec

        self.settings = settings
        self.topic = settings.topic("reconcile")
        self.codec = default_codec()
        self._producer = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        from streams.broker.replication import DURABLE_PRODUCER

        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, **DURABLE_PRODUCER,
                                    client_id="enx-streams-reconciler")
        try:
            await producer.start()
        except Exception as exc:
            await producer.stop()
            raise ReconcileError(f"could not reach Kafka at {self.settings.kafka_bootstrap} ({exc}); start it "
                                 f"(`enx-streams kafka start`) or set ENX_KAFKA_BOOTSTRAP") from None
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __call__(self, findings: Sequence[Finding]) -> None:
        assert self._producer is not None, "start() the producer first"
        futures = [await self._producer.send(self.topic, self.codec.encode("ReconcileFinding", f.record()),
                                             key=f.key.encode()) for f in findings]
        try:
            async with asyncio.timeout(PRODUCE_TIMEOUT_S):
                await asyncio.gather(*futures)
        except (TimeoutError, Exception) as exc:
            raise ReconcileError(f"Kafka did not acknowledge the findings on {self.topic} ({exc!r}); the cursor "
                                 f"stays where it was and the next pass produces them again") from None


async def _provision(settings: Settings) -> None:
    from streams.broker.topics import contract_topics, ensure_topics

    await ensure_topics(settings.kafka_bootstrap, contract_topics(settings), settings.kafka_replication)


async def run_once(settings: Settings, *, since: dt.date | None = None, until: dt.date | None = None,
                   room: str | None = None, echo: Echo = log.info, query: QueryFn | None = None,
                   client_options: dict | None = None) -> PassSummary:
    """One pass with production parts: the Server API, ClickHouse through ``run_query``, Kafka."""
    api = client_of(settings, **(client_options or {}))
    producer = FindingProducer(settings)
    try:
        try:
            await _provision(settings)
        except Exception as exc:  # noqa: BLE001 - said plainly with what to do
            raise ReconcileError(f"could not provision {settings.topic('reconcile')} on {settings.kafka_bootstrap}"
                                 f" ({exc}); is Kafka running (`enx-streams kafka start`)?") from None
        await producer.start()
        summary = await reconcile_pass(settings, api, query or clickhouse_query(settings), producer,
                                       since=since, until=until, room=room, echo=echo)
    finally:
        await producer.stop()
        await api.close()
    echo(summary.describe())
    return summary


async def run_forever(settings: Settings, stop: asyncio.Event, *, query: QueryFn | None = None,
                      on_pass: Callable[[PassSummary], None] | None = None) -> None:
    """The ``reconciler`` role: a pass every ``ENX_RECONCILE_INTERVAL_S`` until ``stop`` is set. A failed pass
    is logged with what to do and retried sooner (from 5 s, doubling up to the interval)."""
    from streams.sink.query import QueryError
    from streams.reconcile.cursor import CursorError

    interval = settings.reconcile_interval_s
    retry = min(5.0, interval)
    log.info("reconciler: every %.0f s against %s (grace %.0f s)", interval, settings.enablex_api_url,
             settings.reconcile_grace_s)
    while not stop.is_set():
        wait = interval
        try:
            summary = await run_once(settings, query=query)
            if on_pass is not None:
                on_pass(summary)
            retry = min(5.0, interval)
        except (EnableXError, ReconcileError, QueryError, CursorError) as exc:
            log.error("reconciler: %s", exc)
            wait, retry = retry, min(interval, retry * 2)
        except Exception:  # noqa: BLE001 - the role keeps running; the next pass tries again
            log.exception("reconciler: the pass failed")
            wait, retry = retry, min(interval, retry * 2)
        try:
            await asyncio.wait_for(stop.wait(), timeout=wait)
        except asyncio.TimeoutError:
            pass
