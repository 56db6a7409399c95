"""Each remedy the processor has for a defect of faust-streaming 0.15.3, tested by provoking that defect
directly (tests/faults/faulty_worker.py) in a real worker on the real broker, not only by the worker-kill
test that once found it:

- records faust takes as delivered but never hands to the agent (seen around a rebalance): the agent
  notices the hole in the offsets, reads the records back itself and processes them (gaps.py), so every
  session has its state and the group's commit passes the hole;
- a partition assigned to the worker that is never fetched: the SLA watch notices records waiting and
  nothing delivered for 10 s, and seeks the consumer back onto it (``check_progress``);
- records that reach the agent while the tables are being restored: the agent holds them until the
  restore has ended and handles them then, first (restore_buffer.py);
- a table restore that stops reading a changelog partition halfway: the restore watch notices records
  remaining and nothing restored for 10 s, and seeks the consumer back onto it (restore_watch.py).

Without the remedy, the first leaves ten sessions without their event and the commit stuck at the hole
for good; the second leaves a partition's sessions unprocessed for good; the third drops every record
delivered during the restore (neither applied nor acked, and not fetched again: faust sought the partitions
before), until ``check_progress`` notices the partitions' silence 10 s later and seeks them back; the
fourth leaves the worker restoring for good, processing nothing."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest

from streams.processor.watch import partition_of
from tests.integration.test_processor import (APP, PARTITIONS, Workers, codec, commits_reach_the_end, event,
                                              fresh_settings, produce, read)

pytestmark = pytest.mark.faults


def confs_on(prefix: str, partition: int, n: int) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        conf = f"{prefix}{i}"
        if partition_of(f"{APP}/{conf}", PARTITIONS) == partition:
            out.append(conf)
        i += 1
    return out


def sessions_seen(settings, keys: set[bytes], workers: Workers, timeout_s: float) -> set[bytes]:
    def all_seen(got: list) -> bool:
        workers.check_alive()
        return keys <= {r.key for r in got}

    return keys - {r.key for r in read(settings, "sessions", all_seen, timeout_s)}


def test_records_taken_as_delivered_but_never_handed_over_are_read_back(bootstrap: str, tmp_path: Path) -> None:
    settings = fresh_settings(bootstrap, tmp_path)
    sessions = confs_on(f"gap-{uuid.uuid4().hex[:6]}-", 0, 40)
    produce(settings, [event("roomdrop", c, 1.7e9, 1.7e9) for c in sessions])  # offsets 0..39 of partition 0
    workers = Workers(settings, tmp_path, env={"ENXTEST_DEFECT": "undelivered:0:10:20"},
                      module="tests.faults.faulty_worker")
    workers.start(1)
    try:
        missing = sessions_seen(settings, {f"{APP}/{c}".encode() for c in sessions}, workers, 90)
        log = (tmp_path / "worker-0.log").read_text()
        assert log.count("defect: withheld") == 10, f"the defect was not provoked as planned\n{workers.logs()}"
        assert not missing, f"{len(missing)} sessions never processed: {sorted(missing)[:5]}\n{workers.logs()}"
        assert "offsets 10..19" in log and "reading them back" in log, workers.logs()
        commits_reach_the_end(workers, timeout_s=30)
    finally:
        assert workers.stop() == [0], workers.logs()


def test_a_partition_assigned_but_never_fetched_is_sought_again(bootstrap: str, tmp_path: Path) -> None:
    settings = fresh_settings(bootstrap, tmp_path)
    blind = 1
    sessions = {p: confs_on(f"unf-{uuid.uuid4().hex[:6]}-{p}-", p, 5) for p in range(PARTITIONS)}
    produce(settings, [event("roomdrop", c, 1.7e9, 1.7e9) for cs in sessions.values() for c in cs])
    workers = Workers(settings, tmp_path, env={"ENXTEST_DEFECT": f"unfetched:{blind}"},
                      module="tests.faults.faulty_worker")
    workers.start(1)
    try:
        missing = sessions_seen(settings, {f"{APP}/{c}".encode() for cs in sessions.values() for c in cs},
                                workers, 90)
        log = (tmp_path / "worker-0.log").read_text()
        assert "(never fetched)" in log, f"the defect was not provoked\n{workers.logs()}"
        assert not missing, f"{len(missing)} sessions never processed: {sorted(missing)[:5]}\n{workers.logs()}"
        webhooks = settings.topic("webhooks")
        assert f"{webhooks}[{blind}]: nothing received for" in log and "fetched again" in log, workers.logs()
        commits_reach_the_end(workers, timeout_s=30)
    finally:
        assert workers.stop() == [0], workers.logs()


def test_records_delivered_while_the_tables_are_restored_are_held_then_handled(bootstrap: str,
                                                                               tmp_path: Path) -> None:
    settings = fresh_settings(bootstrap, tmp_path)
    sessions = [c for p in range(PARTITIONS) for c in confs_on(f"rst-{uuid.uuid4().hex[:6]}-{p}-", p, 10)]
    produce(settings, [event("roomdrop", c, 1.7e9, 1.7e9) for c in sessions])
    workers = Workers(settings, tmp_path, env={"ENXTEST_DEFECT": "restoring:5"}, module="tests.faults.faulty_worker")
    workers.start(1)
    try:
        missing = sessions_seen(settings, {f"{APP}/{c}".encode() for c in sessions}, workers, 90)
        log = (tmp_path / "worker-0.log").read_text()
        assert "defect: restore begun" in log and "defect: the restore ended" in log, f"the defect was not provoked\n{workers.logs()}"
        assert not missing, f"{len(missing)} sessions never processed: {sorted(missing)[:5]}\n{workers.logs()}"
        # handled by the hold, not by check_progress's seek 10 s later (the backstop that would put back on the
        # consumer the records the agent dropped: the hold's own outcome would not be tested then)
        assert "nothing received for" not in log, f"the records delivered during the restore were dropped and " \
            f"only sought again by check_progress\n{workers.logs()}"
        held = re.findall(r"rebalance done: handling the (\d+) records that arrived meanwhile", log)
        assert held and int(held[0]) > 0, f"no record reached the agent during the restore\n{workers.logs()}"
        commits_reach_the_end(workers, timeout_s=30)
    finally:
        assert workers.stop() == [0], workers.logs()


def latest_states(got: list, keys: set[bytes]) -> dict[bytes, dict]:
    """The last snapshot of each of ``keys`` among the sessions topic's records ``got``."""
    return {r.key: codec.decode(r.value) for r in got if r.key in keys and r.value is not None}


def test_a_changelog_partition_the_restore_stopped_reading_is_sought_again(bootstrap: str, tmp_path: Path) -> None:
    settings = fresh_settings(bootstrap, tmp_path)
    sessions = confs_on(f"rst-{uuid.uuid4().hex[:6]}-", 0, 40)
    keys = {f"{APP}/{c}".encode() for c in sessions}
    t = time.time()  # with a 10-hour SLA: nothing stalls, each composite in time makes its session met
    # a first worker records the 40 sessions (roomdrop and recording: offsets 0..39 of partition 0 of the
    # session_end and recording changelogs) and stops cleanly
    produce(settings, [event(kind, c, t, t) for kind in ("roomdrop", "recording") for c in sessions])
    workers = Workers(settings, tmp_path, sla_minutes="600")
    workers.start(1)
    try:
        def recorded(got: list) -> bool:
            workers.check_alive()
            latest = latest_states(got, keys)
            return len(latest) == len(keys) and all(s["recording_files"] == 1 for s in latest.values())

        assert recorded(read(settings, "sessions", recorded, 90)), f"the sessions were not recorded\n{workers.logs()}"
        commits_reach_the_end(workers, timeout_s=30)
    finally:
        assert workers.stop() == [0], workers.logs()
    # a second worker restores them with the defect: the changelogs' partition 0 read up to offset 19 only; then
    # every session's composite, which it judges on the restored parts
    (tmp_path / "restorer").mkdir()
    restorer = Workers(settings, tmp_path / "restorer", sla_minutes="600", env={"ENXTEST_DEFECT": "unrestored:0:20"},
                       module="tests.faults.faulty_worker")
    restorer.start(1)
    produce(settings, [event("transcoded", c, t + 60, t + 60) for c in sessions])
    try:
        def composited(got: list) -> bool:
            restorer.check_alive()
            latest = latest_states(got, keys)
            return len(latest) == len(keys) and all(s["transcoded_files"] == 1 for s in latest.values())

        got = read(settings, "sessions", composited, 90)
        log = (tmp_path / "restorer" / "worker-0.log").read_text()
        # offsets 20..39 of both changelogs' partition 0, each once
        assert log.count("(never restored)") == 40, f"the defect was not provoked as planned\n{restorer.logs()}"
        assert composited(got), f"the composites were not processed\n{restorer.logs()}"
        wrong = sorted(k for k, s in latest_states(got, keys).items()
                       if (s["recording_files"], s["ended_at"] is None, s["sla_state"]) != (1, False, "met"))
        assert not wrong, f"{len(wrong)} sessions judged on parts not restored: {wrong[:5]}\n{restorer.logs()}"
        assert "restoring the tables: nothing read from" in log and "restored again" in log, restorer.logs()
        commits_reach_the_end(restorer, timeout_s=30)
    finally:
        assert restorer.stop() == [0], restorer.logs()
