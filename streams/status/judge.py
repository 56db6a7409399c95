"""The judgement of ``enx-streams status``: from the gathered :class:`~streams.status.facts.Facts` to one
check per part of the pipeline and a verdict (pure: no I/O, the time is in the facts).

Degraded, each with what to do:

- the broker does not answer;
- a consumer group (the processor's, the sink's) has no live member (nothing consumes what arrives, so its
  lag can only grow), could not be read, is more than ``max_lag`` records behind, or (the processor) has
  left a webhook waiting longer than ``max_age_s``;
- ingest does not answer its ``/readyz``, refuses webhooks, or cannot reach a broker that status reaches;
- the spool holds a frame older than ``max_age_s``;
- ClickHouse does not answer, or is stale: a webhook received longer than ``max_age_s`` ago is not in it
  yet (the sink has not committed it; it commits only after the insert).

A part that could not be checked because of another's failure (the groups while the broker is down) is
``unknown``, never a second reason.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from streams.status.facts import Facts, Group

OK, DEGRADED, UNKNOWN, INFO = "ok", "degraded", "unknown", "info"
DEFAULT_MAX_LAG = 10_000
DEFAULT_MAX_AGE_S = 120.0
WORKER_COMMAND = {"processor": "enx-streams worker --roles processor", "sink": "enx-streams worker --roles sink"}
WHAT_IT_DOES = {"processor": "no SLA watch runs and no state is derived", "sink": "nothing is written to ClickHouse"}


@dataclass(frozen=True)
class Limits:
    max_lag: int = DEFAULT_MAX_LAG  # records a group may be behind
    max_age_s: float = DEFAULT_MAX_AGE_S  # how long a webhook may wait (processor, ClickHouse, spool)


@dataclass(frozen=True)
class Check:
    name: str
    level: str  # ok, degraded, unknown, info
    detail: str
    why: str | None = None  # when degraded: what is wrong ...
    do: str | None = None  # ... and what to do


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def problems(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.level == DEGRADED)

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        if self.healthy:
            return "healthy"
        return "degraded: " + "; ".join(f"{c.why}, do {c.do}" for c in self.problems)

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1


def age(seconds: float | None) -> str:
    """``42 s``, ``5 min``, ``3.2 h``, ``4.1 d`` (a duration for people)."""
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 300:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def size(nbytes: int | None) -> str:
    if nbytes is None:
        return "?"
    for unit, scale in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def utc(ms: int) -> str:
    """``2026-12-03 16:40:01Z``."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _since(now_ms: int, then_ms: int | None) -> float | None:
    return None if then_ms is None else (now_ms - then_ms) / 1000


def lagging(group: Group, most: int = 6) -> str:
    """The partitions with lag, by topic, e.g. ``enablex.webhooks.v1 p3 12, p0 7; enablex.alerts.v1 p1 1``
    (the largest first; at most ``most`` partitions named)."""
    behind = sorted((p for p in group.partitions if p.lag), key=lambda p: (-p.lag, p.topic, p.partition))
    by_topic: dict[str, list[str]] = {}
    for p in behind[:most]:
        by_topic.setdefault(p.topic, []).append(f"p{p.partition} {p.lag}")
    text = "; ".join(f"{topic} {', '.join(lags)}" for topic, lags in by_topic.items())
    return text + (f"; {len(behind) - most} more partition(s)" if len(behind) > most else "")


# -- the checks ------------------------------------------------------------------------------------

def check_broker(facts: Facts) -> Check:
    b = facts.broker
    if b.reachable:
        return Check("broker", OK, f"Kafka at {b.bootstrap} answers")
    return Check("broker", DEGRADED, f"Kafka at {b.bootstrap} does not answer: {b.error}",
                 why=f"Kafka is unreachable at {b.bootstrap} ({b.error})",
                 do="start the broker (`enx-streams kafka start` on one machine) or set ENX_KAFKA_BOOTSTRAP to a "
                    "broker that runs")


def check_group(facts: Facts, group: Group, limits: Limits) -> Check:
    name = group.role
    if not facts.broker.reachable:
        return Check(name, UNKNOWN, f"group {group.name}: not read (the broker does not answer)")
    start = WORKER_COMMAND.get(group.role, "enx-streams worker")
    if group.error is not None:
        return Check(name, DEGRADED, f"group {group.name}: {group.error}",
                     why=f"consumer group {group.name} could not be read ({group.error})",
                     do="run status again in a moment; if it persists, see the broker's log")
    busy = f"see its workers' logs; if they are busy, not stuck, add workers (`{start}`)"
    lag = group.lag
    where = f" ({lagging(group)})" if lag else ""
    detail = f"group {group.name}: {group.members} member(s), {group.state or '?'}, lag {lag}{where}"
    waiting_s = _since(facts.now_ms, group.oldest_waiting_ms)
    if waiting_s is not None:
        detail += f", oldest waiting {age(waiting_s)}"
    if not group.members:
        wait = f" and {lag} record(s) wait, more with every webhook" if lag else f": {WHAT_IT_DOES.get(name, '')}"
        return Check(name, DEGRADED, detail, why=f"consumer group {group.name} has no live member{wait}",
                     do=f"start a worker: `{start}` (or `enx-streams dev`), and see why the last one stopped")
    if lag > limits.max_lag:
        return Check(name, DEGRADED, detail,
                     why=f"consumer group {group.name} is {lag} records behind (over {limits.max_lag})",
                     do=busy)
    if group.role == "processor" and waiting_s is not None and waiting_s > limits.max_age_s:
        return Check(name, DEGRADED, detail,
                     why=f"consumer group {group.name} has left a webhook waiting {age(waiting_s)} (over "
                         f"{limits.max_age_s:g} s), so stalls are judged late",
                     do=busy)
    return Check(name, OK, detail)


def check_ingest(facts: Facts) -> Check:
    i = facts.ingest
    if not i.answered:
        return Check("ingest", DEGRADED, f"{i.url}: no answer ({i.error})",
                     why=f"ingest does not answer at {i.url} ({i.error})",
                     do="start it (`enx-streams ingest`, or `enx-streams dev`), or point ENX_INGEST_HOST and "
                        "ENX_INGEST_PORT at it")
    if not i.ready:
        return Check("ingest", DEGRADED, f"{i.url}: not ready (Kafka unreachable, spool full)",
                     why="ingest refuses webhooks with 503: it cannot reach Kafka and its spool is full",
                     do="bring Kafka back (ingest drains the spool by itself), or give the spool room "
                        "(ENX_SPOOL_MAX_BYTES, disk space)")
    if not i.kafka and facts.broker.reachable:
        return Check("ingest", DEGRADED, f"{i.url}: ready by {i.ready_by}, but it does not reach Kafka",
                     why=f"ingest at {i.url} does not reach Kafka, which answers here (it spools)",
                     do="check ingest's ENX_KAFKA_BOOTSTRAP and its log; it reconnects by itself once it can")
    return Check("ingest", OK, f"{i.url}: ready by {i.ready_by}")


def check_spool(facts: Facts, limits: Limits) -> Check:
    s = facts.spool
    via = "ingest's /readyz" if s.source == "ingest" else s.path
    if s.source == "none":
        return Check("spool", OK, f"no spool file at {s.path}")
    if s.bytes is None:
        return Check("spool", UNKNOWN, f"{s.path}: not read ({s.error})")
    if not s.bytes:
        return Check("spool", OK, f"empty (from {via})")
    detail = f"{s.frames} frame(s), {size(s.bytes)}, oldest {age(s.oldest_age_s)} (from {via})"
    if s.oldest_age_s is not None and s.oldest_age_s > limits.max_age_s:
        if not facts.broker.reachable:
            do = "bring Kafka back: ingest sends the spool on by itself"
        elif s.source == "ingest":
            do = "see ingest's log: it should be draining the spool into Kafka"
        else:
            do = "start ingest with this data directory (`enx-streams ingest`): it sends the spool on"
        return Check("spool", DEGRADED, detail,
                     why=f"the spool holds {s.frames} webhook(s) not yet in Kafka, the oldest {age(s.oldest_age_s)} "
                         f"old (over {limits.max_age_s:g} s)", do=do)
    return Check("spool", OK, detail)


def check_clickhouse(facts: Facts, limits: Limits) -> Check:
    c, o = facts.clickhouse, facts.owner
    if not c.answered and o.embedded and o.pid is None and not o.command:
        return Check("clickhouse", DEGRADED, f"{c.where}: no answer (no process owns it)",
                     why=f"no process owns the embedded ClickHouse at {o.where}, so nothing writes or answers it",
                     do="start the sink: `enx-streams worker --roles sink` (or `enx-streams dev`), with this data "
                        "directory")
    if not c.answered:
        return Check("clickhouse", DEGRADED, f"{c.where}: no answer ({c.error})",
                     why=f"ClickHouse does not answer ({c.error})",
                     do="see the sink worker's log (it owns an embedded ClickHouse), or check the server and "
                        "ENX_CLICKHOUSE_DSN")
    newest_s = _since(facts.now_ms, c.newest.event_ms)
    detail = f"{c.where}: newest row {age(newest_s) + ' old' if newest_s is not None else 'none (no events)'}"
    sink = next((g for g in facts.groups if g.role == "sink"), None)
    waiting_s = _since(facts.now_ms, sink.oldest_waiting_ms) if sink is not None else None
    if waiting_s is not None and waiting_s > limits.max_age_s:
        return Check("clickhouse", DEGRADED, detail + f", a webhook received {age(waiting_s)} ago not in it yet",
                     why=f"ClickHouse is stale: a webhook received {age(waiting_s)} ago is not in it yet (over "
                         f"{limits.max_age_s:g} s)",
                     do="see the sink worker's log (inserts failing? it retries them) and whether a sink runs")
    return Check("clickhouse", OK, detail)


def check_owner(facts: Facts) -> Check:
    o = facts.owner
    if not o.embedded:
        return Check("owner", INFO, f"a ClickHouse server ({o.where}): no embedded owner")
    if o.pid is None and not o.command:
        return Check("owner", INFO, f"no process owns {o.where}")
    held = f" since {utc(o.since_ms)} ({age(_since(facts.now_ms, o.since_ms))})" if o.since_ms is not None else ""
    return Check("owner", INFO, f"pid {o.pid} ({o.command}) owns {o.where}{held}")


def check_newest(facts: Facts) -> Check:
    log, ch = facts.log, facts.clickhouse.newest
    parts = []
    event_ms = log.event_ms if log.event_ms is not None else ch.event_ms
    parts.append(f"event {age(_since(facts.now_ms, event_ms))} ago" if event_ms is not None else "no event")
    alert_ms, alert = (log.alert_ms, log.alert) if log.alert_ms is not None else (ch.alert_ms, ch.alert)
    parts.append(f"alert {alert} {age(_since(facts.now_ms, alert_ms))} ago" if alert_ms is not None else "no alert")
    return Check("newest", INFO, ", ".join(parts))


def judge(facts: Facts, limits: Limits = Limits()) -> Report:
    checks = [check_broker(facts)]
    checks += [check_group(facts, g, limits) for g in facts.groups]
    checks += [check_ingest(facts), check_spool(facts, limits), check_clickhouse(facts, limits),
               check_owner(facts), check_newest(facts)]
    return Report(tuple(checks))
