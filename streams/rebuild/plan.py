"""The rebuild's rules, pure: what it refuses, what it says it will replace, when it is complete, and which
of the alerts it raised are new (to be published) rather than replayed. No I/O; the caller observes."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping

Positions = Mapping[tuple[str, int], int]  # (topic, partition) -> offset (next to read / end)


def reached(committed: Positions, targets: Positions) -> int:
    """How many of the records below ``targets`` a group has committed (a commit past a target counts as the
    target: records that came later are not this rebuild's to wait for)."""
    return sum(min(committed.get(tp, 0), end) for tp, end in targets.items())


def total(targets: Positions) -> int:
    return sum(targets.values())


def of_topics(positions: Positions, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    wanted = set(topics)
    return {tp: o for tp, o in positions.items() if tp[0] in wanted}


# -- before anything changes -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """What a rebuild would replace, shown before it changes anything."""

    database: str                    # the live database, e.g. enablex
    shadow: str                      # built here, then swapped in: enablex_rebuild
    previous: str                    # the replaced tables are kept here until the next rebuild
    row_counts: Mapping[str, int]    # the live database's tables (views aside) and their rows
    processor_group: str
    sink_group: str
    deleted_topics: tuple[str, ...]  # the processor's changelogs and command topic, the sessions topic
    log_events: int                  # records in the event log now (the replay's target)


def refusals(members: Mapping[str, int], owner: str | None, writers: Iterable[str]) -> list[str]:
    """Why a rebuild must not start: a consumer group with live members, an owner of the embedded directory,
    another writer of the database. Empty: it may."""
    out = [f"consumer group {group} has {n} running member{'s' if n > 1 else ''}"
           for group, n in sorted(members.items()) if n]
    if owner:
        out.append(owner)
    out += [f"ClickHouse is being written: {w}" for w in writers]
    return out


def describe(plan: Plan) -> str:
    """The confirmation text: what the rebuild replaces, named."""
    tables = ", ".join(f"{t} ({n:,} rows)" for t, n in sorted(plan.row_counts.items())) or "(no tables yet)"
    topics = ", ".join(plan.deleted_topics) or "(none yet)"
    return (f"enx-streams rebuild replays the event log ({plan.log_events:,} records now) into a new database "
            f"{plan.shadow} and then swaps it in for {plan.database}. It will replace:\n"
            f"  - ClickHouse database {plan.database}: {tables}; readers keep seeing these rows until the "
            f"swap, after which they stay in {plan.previous} until the next rebuild\n"
            f"  - the processor's state: consumer group {plan.processor_group} and the topics {topics} "
            f"(deleted and rebuilt)\n"
            f"  - the committed offsets of consumer group {plan.sink_group} (set to where the rebuild's sink "
            f"stops)\n"
            f"The event log, the dead letters and the findings are only read; the alerts topic gets only the new "
            f"alerts the replay finds (stalls not paged yet), once each.")


# -- complete, against targets fixed as it goes -----------------------------------------------------

class Stage(enum.Enum):
    REPLAYING = "replaying the event log"          # the processors reach the log's end as of the start
    JUDGING = "deciding the stalls due"            # every stall due at the start decided and written
    SETTLING = "settling the processors"           # the watch's commands of that judgement committed
    WRITING = "writing ClickHouse"                 # the sink has written all of the above
    DONE = "done"


@dataclasses.dataclass(frozen=True)
class Observation:
    """One look at the rebuild from outside: the groups' committed offsets, the topics' ends, and how many
    sessions of the shadow still wait for a stall that was due when the rebuild started (``None``: not
    counted in this look, which is only done while the rebuild judges)."""

    processed: Positions
    sunk: Positions
    ends: Positions
    overdue: int | None = None


@dataclasses.dataclass(frozen=True)
class Completion:
    """Where a rebuild stands. Its targets are end offsets: the inputs' and sources' as of the start, and the
    processors' outputs and commands as of the moment the stage before was complete. Webhooks that keep
    arriving move none of them, so the rebuild finishes under live traffic; the live workers carry on from
    there.

    - REPLAYING: the processors have committed the log and the findings up to their ends at the start.
    - JUDGING: the sink has written every snapshot published until then, and no session of the shadow whose
      webhooks all came before the start is still ``pending`` with a deadline before the start: the watch
      decided every stall that was due then (else the live processor would decide it after the swap and
      publish an alert that may be on the alerts topic already).
    - SETTLING: the processors have committed their command topic up to its end as of then (the alerts of
      those decisions are acknowledged).
    - WRITING: the sink has committed its sources up to their ends at the start and the processors' outputs
      up to their ends as of then.
    """

    inputs: Positions             # the processors' inputs at the start: log and findings
    sources: Positions            # what the sink reads as written before the start: log, dead letters, ...
    outputs_topics: tuple[str, ...]   # the processors' outputs: sessions, the rebuild's alerts
    commands_topic: str
    stage: Stage = Stage.REPLAYING
    outputs: Positions = dataclasses.field(default_factory=dict)   # targets of the outputs, once fixed
    commands: Positions = dataclasses.field(default_factory=dict)  # target of the command topic, once fixed

    def advance(self, seen: Observation) -> Completion:
        """The stage after ``seen`` (several at once if they hold)."""
        now = self
        while True:
            after = now.step(seen)
            if after is now:
                return now
            now = after

    def step(self, seen: Observation) -> Completion:
        """The stage after ``seen``, one at most."""
        outputs_now = of_topics(seen.ends, self.outputs_topics)
        if self.stage is Stage.REPLAYING:
            if reached(seen.processed, self.inputs) < total(self.inputs):
                return self
            return dataclasses.replace(self, stage=Stage.JUDGING, outputs=outputs_now)
        if self.stage is Stage.JUDGING:
            # the stalls counted in this very look: one that ended the replay counted none, and with the sink
            # caught up at once it would otherwise pass as "none due" before the watch had swept once
            if reached(seen.sunk, self.outputs) < total(self.outputs) or seen.overdue is None or seen.overdue:
                return self
            return dataclasses.replace(self, stage=Stage.SETTLING,
                                       commands=of_topics(seen.ends, [self.commands_topic]))
        if self.stage is Stage.SETTLING:
            if reached(seen.processed, self.commands) < total(self.commands):
                return self
            return dataclasses.replace(self, stage=Stage.WRITING, outputs=outputs_now)
        if self.stage is Stage.WRITING:
            targets = {**self.sources, **self.outputs}
            if reached(seen.sunk, targets) < total(targets):
                return self
            return dataclasses.replace(self, stage=Stage.DONE)
        return self

    @property
    def done(self) -> bool:
        return self.stage is Stage.DONE

    def replayed(self, seen: Observation) -> tuple[int, int]:
        """(records of the inputs replayed, of how many): the replay bar."""
        return reached(seen.processed, self.inputs), total(self.inputs)

    def written(self, seen: Observation) -> tuple[int, int]:
        """(records written to the shadow, of how many known so far): the sink's bar."""
        targets = {**self.sources, **(self.outputs or of_topics(seen.ends, self.outputs_topics))}
        return reached(seen.sunk, targets), total(targets)


# -- which alerts are new ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RebuiltAlert:
    partition: int
    key: bytes | None
    value: bytes
    alert_id: str
    detected_at: int  # Unix ms


def new_alerts(rebuilt: Iterable[RebuiltAlert], published: set[str],
               horizon_ms: Mapping[int, int]) -> list[RebuiltAlert]:
    """The alerts of the rebuild to publish on the alerts topic: those not on it yet (by their deterministic
    id, once each) and detected at or after the partition's horizon, the log time up to which the live
    processor had judged it (``received_at`` of the last record it committed; no horizon: it judged nothing
    there). An alert detected earlier belongs to the past the replay re-judged (another SLA, new rules):
    it is in ClickHouse, and pages nobody."""
    out, seen = [], set(published)
    for alert in rebuilt:
        if alert.alert_id in seen:
            continue
        horizon = horizon_ms.get(alert.partition)
        if horizon is not None and alert.detected_at < horizon:
            continue
        seen.add(alert.alert_id)
        out.append(alert)
    return out
