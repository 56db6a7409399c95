"""streams/rebuild/: the pure parts of a rebuild (what it refuses and names, when it is complete, which alerts
are new, the swap's statements, the shadow's migrations); the replay itself is
tests/integration/test_rebuild.py on the real broker and ClickHouse."""

from __future__ import annotations

import pytest

from streams import config
from streams.rebuild import StandingStill, default_processors, worker_plan
from streams.rebuild.plan import Completion, Observation, Plan, RebuiltAlert, Stage, describe, new_alerts, \
    refusals
from streams.rebuild.shadow import swap_statement
from streams.sink.migrations import MigrationError, for_database

LOG, FINDINGS, DEAD, ALERTS = "p.webhooks.v1", "p.reconcile.v1", "p.deadletter.v1", "p.alerts.v1"
SESSIONS, REBUILT, COMMANDS = "p.sessions.v1", "p.alerts.rebuild", "p.processor-commands"


@pytest.mark.parametrize("cpus,partitions,expected", [(2, 8, 2), (8, 2, 2), (1, 8, 1), (None, 8, 1), (4, 4, 4)])
def test_one_processor_per_cpu_at_most_one_per_partition(monkeypatch: pytest.MonkeyPatch, cpus: int | None,
                                                         partitions: int, expected: int) -> None:
    monkeypatch.setattr("streams.rebuild.os.cpu_count", lambda: cpus)
    assert default_processors(config.Settings(partitions=partitions)) == expected


def test_the_processors_are_named_for_their_logs() -> None:
    assert worker_plan(1) == ["processor"]
    assert worker_plan(3) == ["processor-1", "processor-2", "processor-3"]


def test_a_replay_standing_still_is_told_once_per_stop() -> None:
    still = StandingStill(after_s=120)
    assert not still("at 10", 0) and not still("at 10", 119)
    assert still("at 10", 120)  # stood still for 120 s
    assert not still("at 10", 500)  # told once
    assert not still("at 11", 501) and not still("at 11", 620)
    assert still("at 11", 621)  # moved, then stood still again: told again


def test_refused_for_a_running_member_an_owner_or_a_writer_and_not_otherwise() -> None:
    assert refusals({"g.processor": 0, "sink": 0}, None, []) == []
    out = refusals({"g.processor": 2, "sink": 0}, "owned by pid 7 (enx-streams dev)", ["user default, query q"])
    assert out == ["consumer group g.processor has 2 running members", "owned by pid 7 (enx-streams dev)",
                   "ClickHouse is being written: user default, query q"]


def test_the_confirmation_names_the_database_its_tables_and_rows_and_the_kafka_state() -> None:
    text = describe(Plan(database="enablex", shadow="enablex_rebuild", previous="enablex_previous",
                         row_counts={"webhook_events": 1234, "sessions": 5}, processor_group="p.processor",
                         sink_group="enx-streams-sink.p", deleted_topics=("p.processor-recording-changelog",
                                                                          SESSIONS), log_events=1300))
    for part in ("enablex_rebuild", "ClickHouse database enablex", "webhook_events (1,234 rows)", "sessions (5 rows)",
                 "enablex_previous", "consumer group p.processor", "p.processor-recording-changelog", SESSIONS,
                 "enx-streams-sink.p", "1,300 records"):
        assert part in text, part


def completion() -> Completion:
    return Completion(inputs={(LOG, 0): 100, (FINDINGS, 0): 2}, sources={(LOG, 0): 100, (DEAD, 0): 3, (ALERTS, 0): 4},
                      outputs_topics=(SESSIONS, REBUILT), commands_topic=COMMANDS)


def seen(processed: dict, sunk: dict, ends: dict, overdue: int | None = 0) -> Observation:
    return Observation(processed=processed, sunk=sunk, ends=ends, overdue=overdue)


def test_complete_against_the_ends_at_the_start_while_the_log_grows() -> None:
    c = completion()
    ends = {(SESSIONS, 0): 50, (REBUILT, 0): 5, (COMMANDS, 0): 7}
    # behind: the log has grown to 150 since, which is not this rebuild's to wait for
    c = c.advance(seen({(LOG, 0): 99, (FINDINGS, 0): 2}, {}, ends))
    assert c.stage is Stage.REPLAYING and c.replayed(seen({(LOG, 0): 99}, {}, ends)) == (99, 102)
    # past the start's end: the outputs' ends as of now are the next targets
    c = c.advance(seen({(LOG, 0): 150, (FINDINGS, 0): 2}, {}, ends))
    assert c.stage is Stage.JUDGING and c.outputs == {(SESSIONS, 0): 50, (REBUILT, 0): 5}
    # the sink has written those snapshots, but stalls that were due are still pending: wait
    written = {(SESSIONS, 0): 50, (REBUILT, 0): 5}
    c = c.advance(seen({(LOG, 0): 160}, written, {**ends, (SESSIONS, 0): 60}, overdue=3))
    assert c.stage is Stage.JUDGING
    # decided: the command topic's end as of now is the target
    c = c.advance(seen({(LOG, 0): 160}, written, {(SESSIONS, 0): 63, (REBUILT, 0): 8, (COMMANDS, 0): 10}))
    assert c.stage is Stage.SETTLING and c.commands == {(COMMANDS, 0): 10}
    c = c.advance(seen({(LOG, 0): 170, (COMMANDS, 0): 10}, written, {(SESSIONS, 0): 64, (REBUILT, 0): 8,
                                                                       (COMMANDS, 0): 12}))
    assert c.stage is Stage.WRITING and c.outputs == {(SESSIONS, 0): 64, (REBUILT, 0): 8}
    # the sink must have the sources as of the start and those outputs; more beyond them changes nothing
    short = {(LOG, 0): 100, (DEAD, 0): 3, (ALERTS, 0): 4, (SESSIONS, 0): 63, (REBUILT, 0): 8}
    assert not c.advance(seen({}, short, {})).done
    assert c.advance(seen({}, {**short, (SESSIONS, 0): 64, (LOG, 0): 180}, {(SESSIONS, 0): 99})).done


def test_stages_that_hold_at_once_are_passed_at_once() -> None:
    everything = {(LOG, 0): 100, (FINDINGS, 0): 2, (DEAD, 0): 3, (ALERTS, 0): 4, (SESSIONS, 0): 9, (REBUILT, 0): 1,
                  (COMMANDS, 0): 0}
    assert completion().advance(seen(everything, everything, {(SESSIONS, 0): 9, (REBUILT, 0): 1})).done


def test_stalls_not_counted_in_the_look_that_ended_the_replay_keep_it_judging() -> None:
    """Found by the rebuild test under live traffic: the replay of a short log ended within one look, in which
    the sink had caught up too; the stalls were not counted in it (only a judging look counts them), and the
    rebuild passed the judgement before the watch had swept once. The live processor then raised every stall
    again after the swap, each already on the alerts topic."""
    everything = {(LOG, 0): 100, (FINDINGS, 0): 2, (DEAD, 0): 3, (ALERTS, 0): 4, (SESSIONS, 0): 9, (REBUILT, 0): 1,
                  (COMMANDS, 0): 0}
    c = completion().advance(seen(everything, everything, {(SESSIONS, 0): 9, (REBUILT, 0): 1}, overdue=None))
    assert c.stage is Stage.JUDGING
    assert c.advance(seen(everything, everything, {(SESSIONS, 0): 9, (REBUILT, 0): 1}, overdue=2)).stage \
        is Stage.JUDGING
    assert c.advance(seen(everything, everything, {(SESSIONS, 0): 9, (REBUILT, 0): 1}, overdue=0)).done


def test_an_empty_log_is_complete_once_the_sink_has_the_sources() -> None:
    empty = Completion(inputs={(LOG, 0): 0}, sources={(LOG, 0): 0, (DEAD, 0): 2}, outputs_topics=(SESSIONS,),
                       commands_topic=COMMANDS)
    assert not empty.advance(seen({}, {}, {})).done
    assert empty.advance(seen({}, {(DEAD, 0): 2}, {})).done


def alert(alert_id: str, detected_at: int, partition: int = 0) -> RebuiltAlert:
    return RebuiltAlert(partition, b"k", b"v" + alert_id.encode(), alert_id, detected_at)


def test_only_new_alerts_are_published_once() -> None:
    rebuilt = [alert("old", 100), alert("new", 5000), alert("new", 5000), alert("past", 200, partition=1),
               alert("fresh", 300, partition=2)]
    # "old" is on the alerts topic; "past" was detected before what the live processor had judged of partition 1
    # (a replay judging the past again); partition 2 was never judged live: "fresh" is new there
    out = new_alerts(rebuilt, {"old"}, {0: 1000, 1: 1000})
    assert [a.alert_id for a in out] == ["new", "fresh"]


def test_the_swap_exchanges_what_both_have_and_moves_what_only_the_shadow_has() -> None:
    assert swap_statement("enablex", "enablex_rebuild", ["a", "b"], ["a", "b", "c"]) == [
        "EXCHANGE TABLES enablex.`a` AND enablex_rebuild.`a`, enablex.`b` AND enablex_rebuild.`b`",
        "RENAME TABLE enablex_rebuild.`c` TO enablex.`c`"]


def test_the_migrations_build_another_database() -> None:
    assert for_database("CREATE DATABASE IF NOT EXISTS enablex", "enablex_rebuild") == \
        "CREATE DATABASE IF NOT EXISTS enablex_rebuild"
    sql = ("CREATE MATERIALIZED VIEW IF NOT EXISTS enablex.events_per_minute_mv TO enablex.events_per_minute AS "
           "SELECT type FROM enablex.webhook_events WHERE app_id != 'enablex'")
    assert for_database(sql, "shadow") == (
        "CREATE MATERIALIZED VIEW IF NOT EXISTS shadow.events_per_minute_mv TO shadow.events_per_minute AS "
        "SELECT type FROM shadow.webhook_events WHERE app_id != 'enablex'")
    assert for_database(sql, "enablex") == sql
    with pytest.raises(MigrationError, match="plain ClickHouse database name"):
        for_database(sql, "x; DROP DATABASE enablex")
