"""The processor's state on disk (streams/processor/state.py), as real worker processes on the real broker.

- A worker stopped and started again on its data directory restores nothing from the changelogs (each
  table partition's RocksDB database holds the offset of the changelog's last record), keeps every session's
  parts, and its SLA watch indexes them again from disk.
- A worker killed with SIGKILL while it processes, started again on its data directory, restores the tail
  its databases lack: no event's effect is lost or applied twice (every session ends with exactly its
  events).
- A partition that moves to another worker: its database is deleted from the first worker's disk once the
  rebalance is over; when it comes back it is restored in full, with what the other worker wrote meanwhile.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from rocksdict import AccessType, Options, Rdict

from streams.config import Settings
from streams.processor import rules
from streams.processor.names import changelog_topic
from streams.processor.watch import partition_of
from tests.polling import poll
from tests.integration.test_processor import APP, PARTITIONS, ROOT, Workers, codec, commits_reach_the_end, confs, \
    event, fresh_settings, produce, read

OFFSET_KEY = b"__faust\0offset__"  # faust's RocksDB store keeps a database's changelog offset under it


class SameDirWorkers(Workers):
    """Workers whose data directories are named, so that one can be started again on its directory."""

    def start_on(self, name: str) -> int:
        i = len(self.procs)
        with open(self.tmp / f"worker-{i}.log", "ab") as out:
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", self.module, "worker", "--roles", "processor",
                 "--kafka-bootstrap", self.settings.kafka_bootstrap, "--topic-prefix", self.settings.topic_prefix,
                 "--partitions", str(PARTITIONS), "--data-dir", str(self.tmp / name),
                 "--transcode-sla-minutes", self.sla],
                env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
        return i

    def stop_one(self, i: int) -> int | None:
        """SIGTERM worker ``i`` and wait for it; its exit code (it counts as gone from then on)."""
        self.procs[i].terminate()
        try:
            code = self.procs[i].wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.procs[i].kill()
            code = self.procs[i].wait()
        self.killed.add(i)
        return code

    def log(self, i: int) -> str:
        return (self.tmp / f"worker-{i}.log").read_text()


def databases(data_dir: Path) -> dict[tuple[str, int], Path]:
    """(table, partition) -> the database directory of every table partition under ``data_dir``."""
    out = {}
    for path in (data_dir / "processor").rglob("*.db"):
        name, _, number = path.name[:-3].rpartition("-")
        if number.isdigit() and name in rules.TABLES:
            out[(name, int(number))] = path
    return out


def persisted_offset(path: Path) -> int | None:
    options = Options(raw_mode=True)
    db = Rdict(str(path), options=options, access_type=AccessType.read_only())
    try:
        value = db.get(OFFSET_KEY)
    finally:
        db.close()
    return None if value is None else int(value)


async def _changelog_ends(settings: Settings) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = {TopicPartition(changelog_topic(settings, t), p): (t, p) for t in rules.TABLES for p in range(PARTITIONS)}
        return {tps[tp]: end for tp, end in (await consumer.end_offsets(list(tps))).items()}
    finally:
        await consumer.stop()


def latest_snapshots(settings: Settings, keys: set[bytes], done, timeout_s: float = 60) -> dict[bytes, dict]:
    """The last snapshot of each of ``keys`` on the sessions topic once ``done(latest)`` holds."""
    latest: dict[bytes, dict] = {}

    def until(got: list) -> bool:
        latest.clear()
        for r in got:
            if r.key in keys and r.value is not None:
                latest[r.key] = codec.decode(r.value)
        return done(latest)

    read(settings, "sessions", until, timeout_s)
    return dict(latest)


def setup(bootstrap: str, tmp_path: Path, prefix: str, per_partition: int
          ) -> tuple[Settings, SameDirWorkers, list[str], set[bytes]]:
    """Fresh topics, workers with a 45-minute SLA (nothing stalls), sessions on every partition and their keys."""
    settings = fresh_settings(bootstrap, tmp_path)
    sessions = confs(prefix, per_partition)
    return settings, SameDirWorkers(settings, tmp_path, sla_minutes="45"), sessions, {f"{APP}/{c}".encode()
                                                                                       for c in sessions}


def reading_starts(log: str) -> dict[tuple[str, int], int]:
    """faust's "Reading Starts At" table of the first recovery in ``log``: (changelog, partition) -> offset."""
    out, topic = {}, ""
    for row in log.split("Reading Starts At", 1)[1].splitlines()[1:]:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if not row.startswith("|"):
            if out:
                break
            continue
        if len(cells) == 3 and cells[1].isdigit():
            topic = topic if cells[0] == "\u3003" else cells[0]
            out[(topic, int(cells[1]))] = int(cells[2])
    return out


def started_with_sessions(workers: SameDirWorkers, directory: str, sessions: list[str]) -> tuple[int, float]:
    """A worker on ``directory`` ready, and a ``roomdrop`` of each of ``sessions`` processed; (its index, now)."""
    i = workers.start_on(directory)
    workers.ready(1)
    now = time.time()
    produce(workers.settings, [event("roomdrop", c, now, now) for c in sessions])
    latest_snapshots(workers.settings, {f"{APP}/{c}".encode() for c in sessions}, lambda got: len(got) == len(sessions))
    return i, now


def on_disk_offsets(settings: Settings, data_dir: Path) -> tuple[dict, dict]:
    """(each written table partition's changelog end - 1, the offset its database under ``data_dir`` holds)."""
    ends = asyncio.run(_changelog_ends(settings))
    on_disk = databases(data_dir)
    written = {tp: end - 1 for tp, end in ends.items() if end > 0}
    return written, {tp: persisted_offset(on_disk[tp]) for tp in written}


def test_a_restarted_worker_restores_nothing_and_keeps_every_session(bootstrap: str, tmp_path: Path) -> None:
    settings, workers, sessions, keys = setup(bootstrap, tmp_path, "kept-", 25)
    try:
        first, now = started_with_sessions(workers, "w", sessions)
        # and one session per partition whose deadline passes while no worker runs: only a watch that indexed
        # it again from disk stalls it
        due = confs("due-", 1)
        deadline = now + 40
        produce(settings, [event("recording", c, deadline - 2700, now) for c in due]
                + [event("recording", c, now + 1, now + 1) for c in sessions])
        latest_snapshots(settings, keys, lambda got: len(got) == len(keys) and all(
            s["version"] == 2 for s in got.values()))
        commits_reach_the_end(workers)
        assert workers.stop_one(first) == 0, workers.logs()
        assert time.time() < deadline - 5, "the first worker ran past the due sessions' deadline"
        # every database holds its changelog up to the last record: nothing to restore
        written, held = on_disk_offsets(settings, tmp_path / "w")
        assert written and held == written

        again = workers.start_on("w")
        workers.ready(1)
        assert "Restoring state from changelog topics" not in workers.log(again), workers.logs()
        # the SLA watch indexes them again from disk (the first start's probe sessions too)
        line = poll("the SLA watch's index rebuilt", lambda: next(
            (x for x in workers.log(again).splitlines() if "SLA watch:" in x and "sessions indexed" in x), None),
            30, tmp_path / f"worker-{again}.log")
        assert int(line.split("SLA watch: ", 1)[1].split()[0]) >= len(sessions) + len(due), line
        stalled = {f"{APP}/{c}".encode() for c in due}

        def stalls(got: list) -> bool:
            return {r.key for r in got if codec.decode(r.value)["kind"] == "transcode_stalled"} >= stalled

        alerts = read(settings, "alerts", stalls, max(10.0, deadline + 30 - time.time()))
        assert stalls(alerts) and len(alerts) == len(due), (alerts, workers.logs())
        assert workers.stop_one(again) == 0, workers.logs()
        written, held = on_disk_offsets(settings, tmp_path / "w")  # its probe sessions were written meanwhile
        assert held == written

        # meanwhile another worker (its own directory: a full restore) processes half of them
        other = workers.start_on("other")
        workers.ready(1)
        later = time.time()
        produce(settings, [event("transcoded", c, later, later) for c in sessions[::2]])
        latest_snapshots(settings, keys, lambda got: sum(s["version"] == 3 for s in got.values()) == len(sessions[::2]))
        commits_reach_the_end(workers)
        assert workers.stop_one(other) == 0, workers.logs()
        # back on its own directory, the worker restores only the tail the other one wrote
        tail = workers.start_on("w")
        workers.ready(1)
        assert "Restoring state from changelog topics" in workers.log(tail), workers.logs()
        starts = reading_starts(workers.log(tail))
        assert {tp: starts[(changelog_topic(settings, tp[0]), tp[1])] for tp in held} == held, starts
        produce(settings, [event("transcoded", c, later, later) for c in sessions[1::2]])
        final = latest_snapshots(settings, keys, lambda got: len(got) == len(keys) and all(
            s["version"] == 3 for s in got.values()))
        assert {s["sla_state"] for s in final.values()} == {"met"}
        assert all(s["ended_at"] is not None and s["recording_at"] is not None for s in final.values())
        commits_reach_the_end(workers)
    finally:
        codes = workers.stop()
    assert codes == [0], workers.logs()


def test_a_worker_killed_while_processing_restores_the_tail_it_lacks(bootstrap: str, tmp_path: Path) -> None:
    settings, workers, sessions, keys = setup(bootstrap, tmp_path, "killed-", 500)
    types = ("roomdrop", "recording", "transcoded", "chatdata")
    try:
        _first, now = started_with_sessions(workers, "w", sessions)
        produce(settings, [event(t, c, now + i, now + i) for i, t in enumerate(types[1:], 1) for c in sessions])
        # killed while it works through the second batch: some of it applied and committed, some only in the
        # changelog or its database, some not at all
        latest_snapshots(settings, keys, lambda got: sum(s["version"] > 1 for s in got.values()) > 200)
        workers.kill(0)
        workers.start_on("w")
        workers.ready(1)
        final = latest_snapshots(settings, keys, lambda got: len(got) == len(keys) and all(
            s["version"] == len(types) for s in got.values()), timeout_s=90)
        wrong = {k: s["version"] for k, s in final.items() if s["version"] != len(types)}
        assert not wrong and len(final) == len(keys), f"{len(wrong)} sessions wrong: {list(wrong.items())[:5]}\n" \
                                                      f"{workers.logs()}"
        assert {s["sla_state"] for s in final.values()} == {"met"}
        commits_reach_the_end(workers)
    finally:
        codes = workers.stop()
    assert codes == [0], workers.logs()


def test_a_partition_that_moves_away_is_deleted_and_restored_in_full_when_it_returns(bootstrap: str,
                                                                                   tmp_path: Path) -> None:
    settings, workers, sessions, keys = setup(bootstrap, tmp_path, "moved-", 10)
    try:
        _first, now = started_with_sessions(workers, "a", sessions)
        commits_reach_the_end(workers)
        assert {p for _t, p in databases(tmp_path / "a")} == set(range(PARTITIONS))
        workers.start_on("b")
        workers.ready(2)
        produce(settings, [event("recording", c, now + 1, now + 1) for c in sessions])
        latest_snapshots(settings, keys, lambda got: len(got) == len(keys) and all(
            s["version"] == 2 for s in got.values()))
        commits_reach_the_end(workers)

        def split() -> tuple[set[int], set[int]]:
            return {p for _t, p in databases(tmp_path / "a")}, {p for _t, p in databases(tmp_path / "b")}

        deadline = time.monotonic() + 30
        while (parts := split()) and (parts[0] & parts[1] or parts[0] | parts[1] != set(range(PARTITIONS))):
            assert time.monotonic() < deadline, f"both workers hold a partition's database: {parts}\n{workers.logs()}"
            time.sleep(0.3)  # poll interval, bounded by the deadline
        moved = parts[1]
        assert moved and parts[0], parts
        assert workers.stop_one(1) == 0, workers.logs()
        workers.ready(1)
        later = time.time()
        produce(settings, [event("transcoded", c, later, later) for c in sessions])
        final = latest_snapshots(settings, keys, lambda got: len(got) == len(keys) and all(
            s["version"] == 3 for s in got.values()))
        assert {s["sla_state"] for s in final.values()} == {"met"}, final
        back = [c for c in sessions if partition_of(f"{APP}/{c}", PARTITIONS) in moved]
        assert back and all(final[f"{APP}/{c}".encode()]["recording_at"] is not None for c in back)
        assert {p for _t, p in databases(tmp_path / "a")} == set(range(PARTITIONS))
    finally:
        codes = workers.stop()
    assert codes == [0], workers.logs()
