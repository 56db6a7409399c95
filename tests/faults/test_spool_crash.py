"""Ingest's spool SIGKILLed at every step of its drain, its appends and its repair, then restarted: every record
that was acknowledged as durable (fsynced into the spool: what ingest answers 202 for) is in the Kafka log,
and the spool drains new records afterwards.

Each step is its own test. A child process (tests/faults/spool_crash_child.py) runs the product's
``DurableProducer`` on the spool against the real broker and SIGKILLs itself exactly at the step (the
product has no crash hook: the child patches the spool's calls of ``os`` and a few methods); the test
checks that it died there, starts it again on the same spool with three new records (accepted before it
reaches Kafka, behind whatever the crash left), and reads the step's topic back whole. A record may be in
the log twice (design.md: at-least-once, every projection deduplicates by ``event_id``), but only as many
as the step explains: the batch whose marker was not yet written, or the whole spool when its marker was
reset and the file not yet cut.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.avro import default_codec
from streams.broker.limits import MAX_MESSAGE_BYTES
from streams.broker.topics import TopicSpec, ensure_topics
from streams.ingest.producer import REPLAY_BATCH
from streams.ingest.spool import encode_frame, read_frames
from tests.faults import spool_crash_child
from tests.faults.record import record_result
from tests.faults.spool_crash_child import FRESH, crafted_record, record

N = 700  # frames in the spool: a batch of REPLAY_BATCH and a second one of 200
SECOND = N - REPLAY_BATCH
TORN_AT = 300  # the append that is torn (or not fsynced) when the process dies
CORRUPT_AT = 600  # the frame a bad block hits, in the spool's unacknowledged part
POISON_AT = 100  # a frame Kafka refuses for good (larger than any request)


@dataclass(frozen=True)
class Case:
    step: str
    setup: str  # "drain" (a full spool replayed), "append", "crafted", "torn_tail", "cut_out", "refused", "legacy"
    resent: int  # the most records this kill may put in the log twice
    what: str
    crash: str = ""  # the child's step, when not ``step``

    @property
    def kill(self) -> str:
        return self.crash or self.step


CASES = [
    Case("batch_acked_marker_not_written", "drain", SECOND, "batch 2 acknowledged by Kafka, its marker not written"),
    Case("marker_tmp_not_renamed", "drain", SECOND, "batch 2's marker in spool.tmp, fsynced, not renamed"),
    Case("marker_renamed_dir_not_fsynced", "drain", 0, "batch 2's marker renamed, the directory not fsynced"),
    Case("marker_written", "drain", 0, "batch 1's marker written, batch 2 not read yet"),
    Case("drained_not_reset", "drain", 0, "everything acknowledged, the reset not begun"),
    Case("reset_marker_tmp_not_renamed", "drain", 0, "the reset's marker 0 written, not renamed"),
    Case("reset_marker_renamed_dir_not_fsynced", "drain", N, "the marker reset to 0 (renamed), dir not fsynced"),
    Case("reset_marker_written_not_truncated", "drain", N, "the marker reset to 0, the file not truncated"),
    Case("truncated_not_fsynced", "drain", 0, "the file truncated, not fsynced"),
    Case("truncated", "drain", 0, "the file truncated and fsynced"),
    Case("append_torn", "append", 0, f"append {TORN_AT} half written (a torn frame), Kafka away"),
    Case("append_written_not_fsynced", "append", 0, f"append {TORN_AT} written whole, not fsynced"),
    Case("append_torn_holding_a_frame", "crafted", 0,
         f"append {TORN_AT} half written, its record holding the bytes of an intact frame (a room_id)",
         crash="append_torn"),
    Case("repair_torn_tail_cut_not_fsynced", "torn_tail", 0, "at start: a torn tail cut, not fsynced"),
    Case("cut_out_quarantined_not_rebuilt", "cut_out", 0,
         "at start: a corrupt middle frame copied to quarantine/, the spool not rebuilt"),
    Case("cut_out_marker_reset_not_replaced", "cut_out", REPLAY_BATCH,
         "at start: the spool rebuilt without the corrupt frame, the marker reset, not renamed over it"),
    Case("cut_out_replaced_dir_not_fsynced", "cut_out", 0,
         "at start: the rebuilt spool renamed over the old one, the directory not fsynced"),
    Case("refused_quarantined_not_acked", "refused", 0,
         "a frame Kafka refuses moved to quarantine/, its acknowledgement not written"),
    Case("old_order_truncated_not_reset", "legacy", 0,
         f"a spool emptied in the order before issue 17 (truncated, killed before its marker was reset), then "
         f"{N} webhooks while Kafka is away"),
]


@pytest.fixture(scope="module")
def topics(bootstrap: str) -> dict[str, str]:
    """One single-partition topic per step (the log's order is the spool's), sized as the webhook log."""
    prefix = f"k{uuid.uuid4().hex[:8]}."
    names = {case.step: f"{prefix}{case.step}" for case in CASES}
    asyncio.run(ensure_topics(bootstrap, [TopicSpec(name, 1, {"max.message.bytes": str(MAX_MESSAGE_BYTES)})
                                          for name in names.values()]))
    return names


# The children are forked from a server that has imported the child module (and aiokafka, fastavro) once:
# each is still a process of its own, SIGKILLed for real, but starts in milliseconds, not half a second.
FORKS = multiprocessing.get_context("forkserver")
FORKS.set_forkserver_preload(["tests.faults.spool_crash_child"])


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str  # stdout and stderr


def child(*args: str, crash: str | None = None) -> Run:
    argv = [*(["--crash", crash, "--nth", str(TORN_AT)] if crash else []), *args]
    with tempfile.NamedTemporaryFile("r", suffix=".out") as out:
        process = FORKS.Process(target=spool_crash_child.run_logged, args=(argv, out.name))
        process.start()
        process.join(60)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise AssertionError(f"the child {argv} ran 60 s\n{out.read()[-3000:]}")
        return Run(process.exitcode, out.read())


def acked_ids(run: Run) -> list[str]:
    return [line.split()[1] for line in run.stdout.splitlines() if line.startswith("acked ")]


def killed(run: Run, step: str) -> None:
    assert run.returncode == -signal.SIGKILL, (
        f"the child was to die at {step} but exited {run.returncode}: the step was never reached\n"
        f"{run.stdout[-3000:]}")


def fill(spool_dir: Path, topic: str, tag: str, poison_at: int | None = None) -> list[str]:
    """N records in the spool, acknowledged: the bytes N appends write (ingest's ``deliver`` while Kafka is
    away), in one write and one fsync, which is all that differs (700 fsyncs cost seconds on a busy disk)."""
    frames, ids = [], []
    for i in range(N):
        if i == poison_at:
            frames.append(encode_frame(topic, b"poison", b"\x00" * (MAX_MESSAGE_BYTES + 1)))
        key, value, event_id = record(tag, i)
        frames.append(encode_frame(topic, key, value))
        ids.append(event_id)
    spool_dir.mkdir(parents=True)
    with open(spool_dir / "spool.log", "wb") as f:
        f.write(b"".join(frames))
        f.flush()
        os.fsync(f.fileno())
    return ids


def frames_of(path: Path) -> list:
    with open(path, "rb") as f:
        return read_frames(f, 0)[0]


def event_id(value: bytes) -> str:
    try:
        return default_codec().decode(value)["event_id"]
    except Exception:  # noqa: BLE001 - whatever it is, it is no record ingest accepted: the test names it
        return f"not a WebhookEvent: {value[:60]!r}"


def log_of(bootstrap: str, topic: str) -> list[str]:
    """Every event id in the topic, read to its end offset (the producer that wrote it has stopped)."""
    async def run() -> list[str]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            ids: list[str] = []
            while await consumer.position(tp) < end:
                for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                    ids += [event_id(r.value) for r in records]
            return ids
        finally:
            await consumer.stop()

    return asyncio.run(run())


@dataclass
class Before:
    """What a kill left: the records acknowledged so far, and what may or must not be in the log."""
    acked: list[str]
    never_acked: set[str] = field(default_factory=set)  # the kill interrupted them before their 202
    quarantined: bytes | None = None  # what must be found whole in quarantine/


def kill_at(case: Case, spool_dir: Path, topic: str, bootstrap: str) -> Before:
    """Prepare the spool for the case and run the child until it dies at the case's step."""
    tag = case.step
    if case.setup in ("append", "crafted"):
        crafted = case.setup == "crafted"
        count = TORN_AT - 1 if crafted else N
        run = child("deliver", str(spool_dir), topic, tag, str(count), *(["--crafted"] if crafted else []),
                    crash=case.kill)
        killed(run, case.kill)
        assert len(acked_ids(run)) == TORN_AT - 1, f"{len(acked_ids(run))} records acknowledged before the kill"
        torn = crafted_record(topic) if crafted else (*record(tag, TORN_AT - 1), b"")
        if crafted:  # the question is posed: the torn frame's bytes hold the other frame whole
            assert torn[3] in (spool_dir / "spool.log").read_bytes()
        return Before(acked_ids(run), never_acked={torn[2]})
    before = Before(fill(spool_dir, topic, tag, poison_at=POISON_AT if case.setup == "refused" else None))
    if case.setup == "torn_tail":  # what a kill in the middle of the next append leaves
        with open(spool_dir / "spool.log", "ab") as f:
            f.write(encode_frame(topic, b"k", record(tag, N)[1])[:-7])
    if case.setup == "cut_out":
        # a first run drains batch 1 and dies with its marker written; then a bad block hits a frame after it
        killed(child("drain", str(spool_dir), bootstrap, topic, crash="marker_written"), "marker_written")
        frames = frames_of(spool_dir / "spool.log")
        start, end = frames[CORRUPT_AT - 1].end, frames[CORRUPT_AT].end
        with open(spool_dir / "spool.log", "r+b") as f:
            f.seek(end - 20)
            byte = f.read(1)[0]
            f.seek(end - 20)
            f.write(bytes([byte ^ 0xFF]))
            f.seek(start)
            before.quarantined = f.read(end - start)
        before.acked.remove(record(tag, CORRUPT_AT)[2])  # the bad block took it; it is kept in quarantine/
    killed(child("drain", str(spool_dir), bootstrap, topic, crash=case.kill), case.kill)
    if case.setup == "legacy":  # the upgraded ingest starts while Kafka is away and accepts more, unacknowledged
        run = child("deliver", str(spool_dir), topic, f"{tag}-during-the-outage", str(N))
        assert run.returncode == 0, run.stdout[-3000:]
        before.acked += acked_ids(run)
    return before


@pytest.mark.parametrize("case", CASES, ids=[c.step for c in CASES])
def test_killed_at_a_step_loses_no_acknowledged_record(case: Case, bootstrap: str, topics: dict[str, str],
                                                       tmp_path: Path) -> None:
    started = time.monotonic()
    topic, spool_dir = topics[case.step], tmp_path / "spool"
    before = kill_at(case, spool_dir, topic, bootstrap)

    restart = child("drain", str(spool_dir), bootstrap, topic, "--fresh", f"{case.step}-fresh")
    assert restart.returncode == 0 and "drained" in restart.stdout, \
        f"the restarted spool did not drain (exit {restart.returncode})\n{restart.stdout[-3000:]}"
    fresh = acked_ids(restart)
    assert len(fresh) == FRESH
    assert os.path.getsize(spool_dir / "spool.log") == 0 and (spool_dir / "spool.acked").read_text() == "0"

    log = log_of(bootstrap, topic)
    counts = Counter(log)
    expected = set(before.acked) | set(fresh)
    lost = expected - set(counts)
    assert not lost, f"{len(lost)} acknowledged records are not in the log, e.g. {sorted(lost)[:3]}"
    unexpected = set(counts) - expected - before.never_acked
    assert not unexpected, (f"{len(unexpected)} records in the log were never acknowledged nor being appended "
                            f"at the kill, e.g. {sorted(unexpected)[:3]}")
    resent = sum(n - 1 for n in counts.values())
    assert resent <= case.resent, f"{resent} records in the log twice; this step can explain {case.resent}"
    if case.kill == "append_torn":
        assert not before.never_acked & set(counts), "the torn frame reached the log"
    assert log[-FRESH:] == fresh, "the records accepted on the restarted spool are not last, in order"

    moved = sorted((spool_dir / "quarantine").iterdir()) if (spool_dir / "quarantine").exists() else []
    if case.setup == "cut_out":
        assert moved and all(p.read_bytes() == before.quarantined for p in moved), "the corrupt frame is not kept whole"
    elif case.setup == "refused":
        assert moved and all([(f.key, len(f.value)) for f in frames_of(p)] == [(b"poison", MAX_MESSAGE_BYTES + 1)]
                             for p in moved), "the refused frame is not kept whole"
    else:
        assert not moved, f"frames moved to quarantine: {moved} (a torn tail is cut, not quarantined)"

    record_result(f"spool killed: {case.step}", acknowledged=len(expected), lost=0, in_log=len(log),
                  duplicated=resent, duplicates_allowed=case.resent, quarantine_files=len(moved),
                  duration_s=round(time.monotonic() - started, 1), detail=case.what)
