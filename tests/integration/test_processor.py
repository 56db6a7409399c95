"""The processor on the real broker, as real ``enx-streams worker --roles processor`` processes.

- Live SLA with 1, then 2, then 3 workers, one of them killed with SIGKILL before a deadline: with a
  6-second SLA and no other traffic, every recorded session without a composite gets exactly one
  ``transcode_stalled`` record on the alerts topic within 30 s of its deadline, a later composite exactly
  one ``transcode_recovered`` with its overdue time, and on-time sessions nothing; then the group's
  commits reach the end of the log (no event left unacked behind a rebalance or a restore).
- Replay of that same log by a brand-new consumer group at full speed: exactly the alerts the live run
  raised (same ids, deadlines and overdue times; ``detected_at`` is when each was raised: the wall clock
  live, the log's time in the replay), nothing for the on-time sessions.
- A historical log consumed at full speed with the clock moved days ahead: alerts by event time only, and
  sessions whose last activity is older than the retention leave the tables with a tombstone on the
  compacted sessions topic, the others stay.
- Records the processor cannot handle (a recording whose deadline no Avro long holds, a command whose key
  is no text): each on the dead-letter topic with its coordinates, the rest of its partition processed
  and committed; a worker whose events all fail stops with an error, committing nothing, and so does a
  restarted one.

Alerts are counted as records, not distinct ids: a doubled alert would show.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.avro import default_codec
from streams.broker.topics import contract_topics, ensure_topics
from streams.config import Settings
from streams.events import event_id_of
from streams.processor.app import command_topic
from streams.processor.watch import partition_of
from tests.offsets import behind
from tests.polling import task_dumps

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
SLA_S = 6.0  # --transcode-sla-minutes 0.1
APP = "app"
codec = default_codec()


# -- helpers ----------------------------------------------------------------------------------------

def event(type_: str, conf: str, trans_s: float, received_s: float) -> dict:
    payload = {"type": type_, "app_id": APP, "conf_num": conf, "trans_date": trans_s, "n": uuid.uuid4().hex}
    files = [{"kind": type_, "url": f"http://f/{conf}/{type_}", "stage": None, "size_bytes": None}] \
        if type_ in ("recording", "transcoded") else []
    return {"event_id": event_id_of(payload), "received_at": int(received_s * 1000), "type": type_, "app_id": APP,
            "room_id": "room", "conf_num": conf, "trans_date": int(trans_s * 1000), "files": files,
            "destination": None, "raw": "{}", "source": None}


def confs(prefix: str, per_partition: int) -> list[str]:
    """Session numbers covering every partition ``per_partition`` times (so every worker owns some)."""
    out: list[str] = []
    seen: Counter = Counter()
    i = 0
    while len(out) < per_partition * PARTITIONS:
        conf = f"{prefix}{i}"
        p = partition_of(f"{APP}/{conf}", PARTITIONS)
        if seen[p] < per_partition:
            seen[p] += 1
            out.append(conf)
        i += 1
    return out


async def _produce(settings: Settings, records: list[dict], short: str, schema: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=5)
    await producer.start()
    try:
        for r in records:
            await producer.send(settings.topic(short), codec.encode(schema, r),
                                key=f"{r['app_id']}/{r['conf_num']}".encode())
        await producer.flush()
    finally:
        await producer.stop()


def produce(settings: Settings, events: list[dict], short: str = "webhooks", schema: str = "WebhookEvent") -> None:
    """``events`` on a contract topic (the webhook log by default), keyed by session like ingest does."""
    asyncio.run(_produce(settings, events, short, schema))


async def _read(settings: Settings, short: str, until: Callable[[list], bool], timeout_s: float,
                start: dict[int, int] | None) -> list:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    got: list = []
    try:
        tps = [TopicPartition(settings.topic(short), p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        for tp in tps:
            if start:
                consumer.seek(tp, start.get(tp.partition, 0))
            else:
                await consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not until(got):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(records)
    finally:
        await consumer.stop()
    return got


def read(settings: Settings, short: str, until: Callable[[list], bool], timeout_s: float,
         start: dict[int, int] | None = None) -> list:
    """Records of a topic from the beginning (or ``start`` offsets) until ``until(records)`` or the timeout."""
    return asyncio.run(_read(settings, short, until, timeout_s, start))


async def _ends(settings: Settings, short: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic(short), p) for p in range(PARTITIONS)]
        return {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def _members(settings: Settings, group: str) -> tuple[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group])
    except Exception as exc:  # noqa: BLE001 - e.g. no coordinator yet on a fresh broker: not ready
        return type(exc).__name__, 0
    finally:
        await admin.close()
    g = described[0].groups[0]
    return g[2], len(g[5])


def alerts_of(records: list) -> list[dict]:
    return [codec.decode(r.value) for r in records]


def kinds_per_session(alerts: list[dict]) -> Counter:
    return Counter((a["conf_num"], a["kind"]) for a in alerts)


class Workers:
    """Real worker processes (``python -m streams.cli worker --roles processor``, or ``module``)."""

    def __init__(self, settings: Settings, tmp: Path, sla_minutes: str = "0.1", env: dict | None = None,
                 module: str = "streams.cli") -> None:
        self.settings = settings
        self.module = module  # what runs the CLI (tests/faults/faulty_worker.py: a worker with a defect provoked)
        self.tmp = tmp
        self.sla = sla_minutes
        self.env = dict(os.environ, **(env or {}))
        self.procs: list[subprocess.Popen] = []
        self.killed: set[int] = set()

    def start(self, n: int) -> None:
        for _ in range(n):
            i = len(self.procs)
            with open(self.tmp / f"worker-{i}.log", "ab") as out:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", self.module, "worker", "--roles", "processor",
                     "--kafka-bootstrap", self.settings.kafka_bootstrap, "--topic-prefix", self.settings.topic_prefix,
                     "--partitions", str(PARTITIONS), "--data-dir", str(self.tmp / f"w{i}"),
                     "--transcode-sla-minutes", self.sla],
                    env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait(timeout=10)
        self.killed.add(i)

    @property
    def alive(self) -> int:
        return sum(1 for p in self.procs if p.poll() is None)

    def logs(self) -> str:
        """Every worker's rebalances, recoveries, alerts and warnings, the tail of its log, and where each
        live one was waiting (its asyncio tasks)."""
        files = [self.tmp / f"worker-{i}.log" for i in range(len(self.procs))]
        marks = ("WARNING", "ERROR", "alert ", "not applied", "indexed on", "_on_partitions_assigned",
                 "Restoring state", "Done reading", "Worker ready")
        texts = [f.read_text() for f in files]
        # every worker's events first, then the tails, then the task dumps: a truncated report still shows
        # what each worker did
        events = [f"--- {f.name}: events\n" + "\n".join(
            [line[:300] for line in text.splitlines() if any(m in line for m in marks)][-60:])
            for f, text in zip(files, texts)]
        tails = [f"--- {f.name}: tail\n{text[-2000:]}" for f, text in zip(files, texts)]
        return "\n".join(events + tails) + f"\n{task_dumps(self.procs, files)}"

    def failed(self, i: int, timeout_s: float = 90) -> str:
        """Worker ``i`` exits with an error within ``timeout_s``; its log. It counts as gone from then on (not
        among the clean stops of ``stop``)."""
        deadline = time.monotonic() + timeout_s
        while self.procs[i].poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)  # poll interval, bounded by the deadline
        code = self.procs[i].poll()
        assert code not in (None, 0), f"worker {i} did not stop with an error (exit code {code})\n{self.logs()}"
        self.killed.add(i)
        return (self.tmp / f"worker-{i}.log").read_text()

    def check_alive(self) -> None:
        dead = [i for i, p in enumerate(self.procs) if i not in self.killed and p.poll() is not None]
        assert not dead, f"workers {dead} exited\n{self.logs()}"

    def stop(self) -> list[int | None]:
        """SIGTERM every live worker; their exit codes (a clean stop is 0)."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for i, p in enumerate(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if i not in self.killed:
                codes.append(p.returncode)
        return codes

    def ready(self, members: int, group: str | None = None, timeout_s: float = 90) -> None:
        """``members`` workers in a stable group, and every partition processed again (a probe session per
        partition has its snapshot): each has an owner whose tables are restored."""
        group = group or f"{self.settings.topic_prefix}processor"
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            state, n = asyncio.run(_members(self.settings, group))
            if state == "Stable" and n == members:
                break
            assert time.monotonic() < deadline, f"group {group}: {state} with {n} members\n{self.logs()}"
            time.sleep(0.3)  # poll interval, bounded by the deadline
        probes = confs(f"probe-{uuid.uuid4().hex[:6]}-", 1)
        now = time.time()
        produce(self.settings, [event("roomdrop", c, now, now) for c in probes])
        keys = {f"{APP}/{c}".encode() for c in probes}

        def all_seen(got: list) -> bool:
            self.check_alive()
            return keys <= {r.key for r in got}

        got = read(self.settings, "sessions", all_seen, max(1.0, deadline - time.monotonic()))
        if not all_seen(got):
            missing = sorted(keys - {r.key for r in got})
            raise AssertionError(f"probes not processed: {missing} of {sorted(keys)} after "
                                 f"{timeout_s - (deadline - time.monotonic()):.0f} s\n{self.logs()}")


def commits_reach_the_end(workers: Workers, timeout_s: float = 15) -> None:
    """The processor group's committed offsets reach the end of the log (a commit interval is 1 s)."""
    settings = workers.settings
    webhooks, group = settings.topic("webhooks"), f"{settings.topic_prefix}processor"
    deadline = time.monotonic() + timeout_s
    while any((left := asyncio.run(behind(settings.kafka_bootstrap, group, webhooks, PARTITIONS))).values()) \
            and time.monotonic() < deadline:
        time.sleep(0.3)  # poll interval, bounded by the deadline
    assert not any(left.values()), f"records past the committed offsets: {left}\n{workers.logs()}"


def fresh_settings(bootstrap: str, tmp: Path) -> Settings:
    settings = Settings(data_dir=tmp, kafka_bootstrap=bootstrap, topic_prefix=f"p{uuid.uuid4().hex[:8]}.",
                        partitions=PARTITIONS)
    asyncio.run(ensure_topics(bootstrap, contract_topics(settings)))
    return settings


# -- live, 1/2/3 workers, a kill; then a replay by a new consumer group --------------------------------

def test_live_sla_with_1_2_3_workers_a_kill_and_a_replay(bootstrap: str, tmp_path: Path) -> None:
    settings = fresh_settings(bootstrap, tmp_path)
    workers = Workers(settings, tmp_path)
    expected: Counter = Counter()
    lags: list[float] = []

    def phase(label: str, kill: int | None = None) -> None:
        on_time, stalled = confs(f"{label}-ok-", 1), confs(f"{label}-late-", 2)
        recovering = stalled[::2]
        now = time.time()
        batch = [event("roomdrop", c, now, now) for c in on_time + stalled]
        batch += [event("recording", c, now + 0.5, now) for c in on_time + stalled]
        batch += [event("transcoded", c, now + 2, now) for c in on_time]
        produce(settings, batch)
        deadline = now + SLA_S
        if kill is not None:
            workers.kill(kill)  # before the deadline: the others take its partitions over
        assert time.time() < deadline, "the batch took longer than the SLA to produce"

        def stalls_seen(got: list) -> bool:
            workers.check_alive()
            seen = kinds_per_session(alerts_of(got))
            return all(seen[(c, "transcode_stalled")] for c in stalled)

        got = read(settings, "alerts", stalls_seen, 60)
        assert stalls_seen(got), f"{label}: stalls missing\n{workers.logs()}"
        lags.append(time.time() - deadline)
        assert time.time() - deadline < 30, f"{label}: stalls {time.time() - deadline:.1f} s after the deadline"
        late = time.time()
        produce(settings, [event("transcoded", c, late, late) for c in recovering])

        def recoveries_seen(got: list) -> bool:
            seen = kinds_per_session(alerts_of(got))
            return all(seen[(c, "transcode_recovered")] for c in recovering)

        got = read(settings, "alerts", recoveries_seen, 30)
        assert recoveries_seen(got), f"{label}: recoveries missing\n{workers.logs()}"
        for a in alerts_of(got):
            if a["kind"] == "transcode_recovered" and a["conf_num"] in recovering:
                assert a["overdue_s"] >= (late - deadline) - 1, a
        expected.update({(c, "transcode_stalled"): 1 for c in stalled})
        expected.update({(c, "transcode_recovered"): 1 for c in recovering})

    try:
        workers.start(1)
        workers.ready(1)
        phase("one")
        workers.start(1)
        workers.ready(2)
        phase("two")
        workers.start(1)
        workers.ready(3)
        phase("three", kill=1)  # one of three killed with SIGKILL before the deadline
        assert workers.alive == 2
        # every alert, exactly once; a little longer than two sweeps shows that nothing more comes
        total = sum(expected.values())
        got = read(settings, "alerts", lambda g: len(g) > total, 5)
        live = alerts_of(got)
        assert kinds_per_session(live) == expected, f"{kinds_per_session(live) - expected} / " \
                                                    f"{expected - kinds_per_session(live)}\n{workers.logs()}"
        assert max(lags) < 30
        print(f"stall alert lag after the deadline per phase: {[round(x, 1) for x in lags]} s")
        commits_reach_the_end(workers)  # every event acked, none left behind a rebalance or a restore
    finally:
        codes = workers.stop()
    assert codes == [0, 0], f"a worker did not stop cleanly on SIGTERM: {codes}\n{workers.logs()}"

    # Replay: a brand-new consumer group over the whole log at full speed raises exactly the same alerts.
    mark = asyncio.run(_ends(settings, "alerts"))
    group = f"{settings.topic_prefix}replay-{uuid.uuid4().hex[:6]}"
    replay = Workers(settings, tmp_path / "replay", env={"ENXTEST_PROCESSOR_GROUP": group})
    (tmp_path / "replay").mkdir()
    try:
        replay.start(1)
        got = read(settings, "alerts", lambda g: len(g) >= len(live), 90, start=mark)
        replay.ready(1, group=group)  # caught up with the live log (the probes come after it)
        got = read(settings, "alerts", lambda g: len(g) > len(live), 5, start=mark)
    finally:
        replay_codes = replay.stop()
    key = lambda a: (a["alert_id"], a["kind"], a["deadline"], a["overdue_s"])  # noqa: E731
    assert sorted(map(key, alerts_of(got))) == sorted(map(key, live)), replay.logs()
    assert replay_codes == [0]


# -- a historical log at full speed, days later: event time and retention ----------------------------

def test_replay_of_a_historical_log_and_retention(bootstrap: str, tmp_path: Path) -> None:
    settings = fresh_settings(bootstrap, tmp_path)
    now = int(time.time())  # whole seconds: event times in ms are exact
    sla = 45 * 60
    old_start, new_start = now - 6 * 3600, now - 3600
    log: list[dict] = []
    plan = {}
    for i in range(12):
        t = old_start + i * 60 if i < 8 else new_start + i * 10
        conf = f"{'old' if i < 8 else 'new'}{i}"
        composite = {3: None, 5: t + sla + 900}.get(i, t + 1800)  # old3 stalls, old5 comes 15 min late
        plan[conf] = composite
        log += [event("roomdrop", conf, t, t), event("recording", conf, t + 60, t + 60)]
        if composite is not None:
            log.append(event("transcoded", conf, composite, composite))
    log.sort(key=lambda e: e["received_at"])
    produce(settings, log)

    # One fresh worker (a new consumer group) over the whole log at full speed, its clock moved so that the
    # 7-day retention ends two hours ago: the old sessions' last activity is older than that, the new ones'
    # is not.
    offset_s = 7 * 86400 - 2 * 3600
    workers = Workers(settings, tmp_path, sla_minutes="45", env={"ENXTEST_CLOCK_OFFSET_S": str(offset_s)})
    old = {f"{APP}/{c}".encode() for c in plan if c.startswith("old")}
    try:
        workers.start(1)

        def all_gone(got: list) -> bool:
            workers.check_alive()
            return old <= {r.key for r in got if r.value is None}

        got = read(settings, "sessions", all_gone, 90)
        assert all_gone(got), workers.logs()
        workers.ready(1)  # the probes after the log: the worker has caught up
        got = read(settings, "sessions", lambda g: False, 5)  # and two sweeps later...
        alerts = alerts_of(read(settings, "alerts", lambda g: False, 1))
    finally:
        codes = workers.stop()
    assert codes == [0]
    final = {}
    for r in got:
        final[r.key] = r.value
    sessions = {k: v for k, v in final.items() if not k.startswith(b"app/probe")}
    assert {k for k, v in sessions.items() if v is None} == old  # left the tables, tombstoned
    kept = {k: codec.decode(v) for k, v in sessions.items() if v is not None}
    assert set(kept) == {f"{APP}/{c}".encode() for c in plan if c.startswith("new")}
    assert {s["sla_state"] for s in kept.values()} == {"met"}
    assert sum(1 for r in got if r.value is None) == len(old)  # one tombstone each
    assert kinds_per_session(alerts) == Counter({("old3", "transcode_stalled"): 1, ("old5", "transcode_stalled"): 1,
                                                 ("old5", "transcode_recovered"): 1})
    recovered = next(a for a in alerts if a["kind"] == "transcode_recovered")
    assert recovered["overdue_s"] == 900.0


# -- workers joining while the others work through a backlog ------------------------------------------

class Backlog:
    """Keeps producing sessions (three events each, a day old) from a thread of its own until stopped, so that
    whatever the processor's speed, records are in flight while workers join. At most ``limit`` events."""

    def __init__(self, settings: Settings, limit: int = 300_000) -> None:
        self.settings, self.limit = settings, limit
        self.produced = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.error: BaseException | None = None

    async def _run(self) -> None:
        start = time.time() - 86_400  # a day old: judged by event time, nothing alerts
        try:
            while not self._stop.is_set() and self.produced < self.limit:
                n = self.produced // 3
                await _produce(self.settings, [event(kind, f"j{n + i}", start + k, start + k) for i in range(1000)
                                               for k, kind in enumerate(("roomdrop", "recording", "transcoded"))],
                               "webhooks", "WebhookEvent")
                self.produced += 3000
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def __enter__(self) -> Backlog:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert self.error is None, f"the backlog's producer failed: {self.error!r}"


def test_workers_joining_under_a_backlog_leave_no_event_uncommitted(bootstrap: str, tmp_path: Path) -> None:
    """Each join is a rebalance while the others have events in flight: after it, the group's commits must
    still reach the end of the log (an event taken while faust settles the rebalance, and not handled
    again after it, would hold its partition's commits back for good; a rebuild once waited on one)."""
    settings = fresh_settings(bootstrap, tmp_path)
    start = time.time() - 86_400  # a day old: judged by event time, nothing alerts
    log = [event(kind, f"b{i}", start + i * 0.01 + k, start + i * 0.01 + k)
           for i in range(15_000) for k, kind in enumerate(("roomdrop", "recording", "transcoded"))]
    produce(settings, log)
    webhooks, group = settings.topic("webhooks"), f"{settings.topic_prefix}processor"

    def left() -> int:
        try:
            return sum(asyncio.run(behind(bootstrap, group, webhooks, PARTITIONS)).values())
        except Exception:  # noqa: BLE001 - no coordinator for the group yet: nothing committed
            return len(log)

    workers = Workers(settings, tmp_path)
    try:
        workers.start(1)
        deadline = time.monotonic() + 60
        while left() > len(log) * 3 / 4 and time.monotonic() < deadline:
            workers.check_alive()  # until a quarter of the log is committed
            time.sleep(0.3)  # poll interval, bounded by the deadline
        with Backlog(settings) as backlog:
            for joining in (2, 3):
                workers.start(1)
                deadline, behind_at_join = time.monotonic() + 90, []
                while (state := asyncio.run(_members(settings, group))) != ("Stable", joining):
                    workers.check_alive()
                    behind_at_join.append(left())
                    assert time.monotonic() < deadline, f"group {group}: {state}\n{workers.logs()}"
                    time.sleep(0.3)  # poll interval, bounded by the deadline
                assert max(behind_at_join, default=0) > 0, f"worker {joining} joined with nothing in flight " \
                                                          f"({backlog.produced} produced)\n{workers.logs()}"
        commits_reach_the_end(workers, timeout_s=120)
        workers.check_alive()
    finally:
        codes = workers.stop()
    assert codes == [0, 0, 0], workers.logs()


# -- records the processor cannot handle ---------------------------------------------------------------

def poison(conf: str, now: float) -> dict:
    """A recording (no roomdrop) timed near the end of Avro's long: its deadline, its time plus the SLA,
    is a value SessionState cannot hold. Ingest refuses such a time; an older version or another producer
    could have written it, and the log keeps it forever."""
    e = event("recording", conf, now, now)
    e["trans_date"] = 2**63 - 1000
    e["raw"] = json.dumps({"type": "recording", "app_id": APP, "conf_num": conf, "trans_date": e["trans_date"]})
    return e


def test_a_record_the_processor_cannot_handle_is_dead_lettered_and_the_rest_flows(bootstrap: str,
                                                                                  tmp_path: Path) -> None:
    settings = fresh_settings(bootstrap, tmp_path)
    bad, late = confs("bad-", 1), confs("late-", 1)  # one of each per partition, the bad one first
    now = time.time()
    produce(settings, [poison(c, now) for c in bad] + [event("roomdrop", c, now, now) for c in late]
            + [event("recording", c, now + 0.5, now) for c in late])
    bad_keys = {f"{APP}/{c}".encode() for c in bad}
    logged = read(settings, "webhooks", lambda g: len(g) >= 3 * PARTITIONS, 10)
    coordinates = {f"{r.topic}/{r.partition}/{r.offset}": r for r in logged if r.key in bad_keys}
    assert len(coordinates) == len(bad)
    workers = Workers(settings, tmp_path)
    try:
        workers.start(1)

        def stalls_seen(got: list) -> bool:
            workers.check_alive()
            return {(c, "transcode_stalled") for c in late} <= set(kinds_per_session(alerts_of(got)))

        # the sessions after each bad record in its partition go on: their stalls come on time
        got = read(settings, "alerts", stalls_seen, 60)
        assert stalls_seen(got), workers.logs()
        assert kinds_per_session(alerts_of(got)) == Counter({(c, "transcode_stalled"): 1 for c in late})
        letters = [codec.decode(r.value) for r in read(settings, "deadletter", lambda g: len(g) > len(bad), 3)]
        assert sorted(d["source"] for d in letters) == sorted(coordinates), workers.logs()
        for d in letters:
            record = coordinates[d["source"]]
            assert d["reason"].startswith("processor_failed: ValueError: ") and "sla_deadline" in d["reason"], d
            assert d["id"].startswith("processor-")
            assert d["raw"] == codec.decode(record.value)["raw"].encode()  # the body EnableX sent
            assert d["headers"] == {"kafka_key": record.key.decode()}
            assert int(now * 1000) <= d["received_at"] <= time.time() * 1000  # when it failed
        assert not bad_keys & {r.key for r in read(settings, "sessions", lambda g: False, 1)}  # nothing applied
        commits_reach_the_end(workers)  # every event acked, the bad ones included
        log_text = (tmp_path / "worker-0.log").read_text()
        assert log_text.count("could not be processed and was not applied") == len(bad)
        assert "`enx-streams rebuild` processes it again" in log_text

        # a command whose judgement fails is dead-lettered too: one whose key is no text (the watch never sends
        # one; another producer could)
        command = json.dumps({"op": "stall", "now": int(now * 1000)}).encode()
        asyncio.run(_send(settings.kafka_bootstrap, command_topic(settings), b"\xff\xfe", command))
        got = read(settings, "deadletter", lambda g: len(g) > len(bad), 30)
        (letter,) = [codec.decode(r.value) for r in got if codec.decode(r.value)["source"] not in coordinates]
        assert letter["source"].startswith(f"{command_topic(settings)}/"), letter
        assert letter["reason"].startswith("processor_failed: UnicodeDecodeError: "), letter
        assert letter["raw"] == command and letter["headers"] == {"kafka_key": "\ufffd\ufffd"}, letter
        assert abs(letter["received_at"] / 1000 - time.time()) < 120  # when it failed
        workers.check_alive()
    finally:
        codes = workers.stop()
    assert codes == [0], workers.logs()


async def _send(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def test_a_worker_whose_events_mostly_fail_stops_instead_of_dead_lettering_them_all(bootstrap: str,
                                                                                    tmp_path: Path) -> None:
    from streams.processor.rejects import LIMIT

    settings = fresh_settings(bootstrap, tmp_path)
    now = time.time()
    produce(settings, [poison(f"bad{i}", now) for i in range(LIMIT + 50)])
    webhooks, group = settings.topic("webhooks"), f"{settings.topic_prefix}processor"
    workers = Workers(settings, tmp_path)
    try:
        for i in range(2):  # a supervisor restarting the worker: it stops at the same place
            workers.start(1)
            log_text = workers.failed(i)
            assert "stopping the worker" in log_text and f"{LIMIT + 1} of the last" in log_text, log_text[-3000:]
            assert log_text.count("could not be processed and was not applied") == LIMIT + 1, log_text[-3000:]
            # no event was handled, so none of the dead-lettered ones was acked: nothing is committed
            left = asyncio.run(behind(bootstrap, group, webhooks, PARTITIONS))
            assert sum(left.values()) == LIMIT + 50, f"committed past failed events: {left}\n{log_text[-3000:]}"
        letters = read(settings, "deadletter", lambda g: len(g) > 2 * (LIMIT + 1), 3)
        assert LIMIT < len(letters) <= 2 * (LIMIT + 1), f"{len(letters)} dead letters\n{log_text[-3000:]}"
    finally:
        workers.stop()
