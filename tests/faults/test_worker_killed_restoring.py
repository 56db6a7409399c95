"""The survivor of test_worker_killed.py's kill SIGKILLed in turn, while it restores its tables.

Two processor workers through the same log of 80,000 events; one SIGKILLed under load (as in
test_worker_killed.py); once the survivor has begun restoring the tables of the partitions it takes over (faust's
"Restoring state from changelog topics" in its log), it is SIGKILLed too, before its restore is done (its log
says so: no "Done reading from changelog topics" after that line, and a killed process writes nothing more).
A fresh worker then restores every table from the changelogs alone and finishes the log: the same end checks
as test_worker_killed.py (every event exactly once in ClickHouse under ``FINAL``, every session's state equal
to a clean replay, exactly the expected alert ids).
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from tests.faults.pipeline import assert_replayed
from tests.faults.record import record_result
from tests.faults.test_worker_killed import one_killed_under_load
from tests.polling import poll

RESTORING = "Restoring state from changelog topics"  # faust's Recovery, once the changelogs are sought
# faust's Recovery, once every active changelog is read (also, wrongly, when a rebalance interrupts a restore: its
# RebalanceAgain is swallowed there; that would fail this test, never pass it: no rebalance is due at the kill)
RESTORED = "Done reading from changelog topics"
REMAINING = re.compile(r"total remaining=(\d+)")  # faust's Recovery every 5 s while it restores
# the tables faust's Recovery logs before it restores: each changelog partition's highwater, and where it starts
HIGHWATERS, STARTS = "Highwater for active changelog partitions", "active offsets at start of reading"
ROW = re.compile(r"^\|\s*(\S+)\s*\|\s*(\d+)\s*\|\s*(-?\d+)\s*\|$")


def restore_state(text: str) -> str:
    """Where a worker's log ``text`` (read from some point on) leaves its table restore: "none" begun,
    "restoring" (the last one begun is not done) or "restored"."""
    begun = text.rfind(RESTORING)
    if begun < 0:
        return "none"
    return "restored" if RESTORED in text[begun:] else "restoring"


def logged_offsets(text: str, title: str) -> dict[tuple[str, int], int]:
    """The last table titled ``title`` in faust's log ``text``: (changelog topic, partition) -> offset."""
    out: dict[tuple[str, int], int] = {}
    topic = ""
    for line in text[text.rfind(title):].splitlines()[1:]:
        if not line.startswith(("|", "+")):
            break
        if m := ROW.match(line.strip()):
            topic = topic if m[1] == "\u3003" else m[1]  # faust writes a ditto mark for a repeated topic
            out[(topic, int(m[2]))] = int(m[3])
    return out


def to_restore(text: str) -> int:
    """The changelog records the last restore begun in ``text`` had to read (faust's highwater is the last
    offset, the start the last offset already restored, -1 for none)."""
    begun = text[:text.rfind(RESTORING)]
    starts = logged_offsets(begun, STARTS)
    return sum(max(0, hw - starts.get(tp, -1)) for tp, hw in logged_offsets(begun, HIGHWATERS).items())


def test_survivor_killed_while_restoring(bootstrap: str, tmp_path: Path) -> None:
    started = time.monotonic()
    survivor_log = tmp_path / "p1.log"
    mark = {"p1": 0}

    def mark_survivor_log() -> None:
        mark["p1"] = survivor_log.stat().st_size if survivor_log.exists() else 0

    def since_kill() -> str:
        with survivor_log.open("rb") as f:
            f.seek(mark["p1"])
            return f.read().decode(errors="replace")

    with one_killed_under_load(tmp_path, bootstrap, before_kill=mark_survivor_log) as (pipeline, log_events, left):
        killed_at = time.monotonic()
        # the survivor takes the killed worker's partitions over once its session has timed out (10 s), and
        # restores their tables (and its own partitions' changes since its last restore) from the changelogs
        poll("the survivor restoring its tables", lambda: restore_state(since_kill()) == "restoring", 90,
             pipeline.all_logs(), interval_s=0.02)
        restoring_after_s = time.monotonic() - killed_at
        pipeline.procs["p1"].send_signal(signal.SIGKILL)
        pipeline.procs["p1"].wait(timeout=10)
        text = since_kill()
        assert restore_state(text) == "restoring", (
            "the survivor's restore was done before its kill landed: it tested no kill during a restore\n"
            f"{text[-3000:]}")
        remaining = [int(n) for n in REMAINING.findall(text[text.rfind(RESTORING):])]
        records = to_restore(text)
        assert records > 0, f"the survivor's restore had nothing to read: it tested no kill during a restore\n{text[-3000:]}"
        pipeline.start("p2", "processor")  # a fresh worker: every table from the changelogs alone
        now_ms = int(time.time() * 1000)
        figures = assert_replayed(pipeline.settings, log_events, now_ms, pipeline.all_logs())
        record_result("survivor killed while restoring", events=figures["events"],
                      duration_s=round(time.monotonic() - started, 1), lost=0, duplicated_after_final=0,
                      alerts=figures["alerts"], alert_rows_before_final=figures["alert_rows_before_final"],
                      uncommitted_at_first_kill=left, restore_begun_after_s=round(restoring_after_s, 1),
                      changelog_records_to_restore=records, restore_remaining_logged=remaining[-1] if remaining else None,
                      detail="one of two processor workers SIGKILLed under load, then the survivor SIGKILLed "
                             "while restoring its tables; a fresh worker finishes")
