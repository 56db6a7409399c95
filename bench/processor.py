"""Processor events per second through the tables, beside raw aiokafka consume and decode and a Quix Streams peer.

A log of N webhook events (four per session, every composite within its SLA) is produced once. The raw
figure is one aiokafka consumer reading and Avro-decoding all of it. The processor figure is one real
``enx-streams worker --roles processor`` (a new consumer group) working through the same log: the rate
at which its committed offsets advance, from its first commit to the end (start-up excluded), and its RSS
at the end. Beside them, the ceiling faust itself sets (bench/faust_bare.py: a faust agent that takes the same
log's events and does nothing, once as faust ships, once consuming the way the processor does), so that the
processor's figure can be read against what its framework allows; and the Python peer (bench/quix_peer.py: a
Quix Streams app doing the same per-session merge in RocksDB, with the same output), measured the same way on
the same log. The processor and the peer run alternately, ``runs`` times each (a new consumer group each
time); their figures are the medians, and the last snapshot of every session on the peer's sessions topic
is compared with the processor's (``quix_sessions_equal``)."""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import quix_peer
from bench.common import ROOT, Process, fresh_settings, group_lag, produce_all, rss_mb, session_log
from streams.avro import default_codec
from streams.config import Settings
from streams.rebuild import processor_group


async def raw_consume_eps(settings: Settings, expect: int) -> float:
    codec = default_codec()
    topic = settings.topic("webhooks")
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                max_poll_records=5000, fetch_max_bytes=64 * 1024 * 1024)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n = 0
        started = time.monotonic()
        while n < expect:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    codec.decode(r.value, "WebhookEvent")
                n += len(records)
        return n / (time.monotonic() - started)
    finally:
        await consumer.stop()


def faust_bare_eps(settings: Settings, expect: int, mode: str = "shipped", timeout_s: float = 600) -> float:
    """Events per second of a faust agent that only takes the log's events (its first to its last); ``mode``:
    faust as shipped, or consuming the way the processor does (bench/faust_bare.py)."""
    env = {**os.environ, "BENCH_MODE": mode,
           "BENCH_BOOTSTRAP": settings.kafka_bootstrap, "BENCH_TOPIC": settings.topic("webhooks"),
           "BENCH_PARTITIONS": str(settings.partitions), "BENCH_EVENTS": str(expect),
           "BENCH_APP_ID": f"bench-faust-bare-{uuid.uuid4().hex[:8]}"}
    done = subprocess.run([sys.executable, "-m", "bench.faust_bare"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout_s)
    found = re.search(r"faust_bare_eps=([0-9.]+)", done.stdout + done.stderr)
    if found is None:
        raise RuntimeError(f"bench.faust_bare printed no figure (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return float(found.group(1))


def drain_eps(settings: Settings, worker: Process, group: str, timeout_s: float = 1800) -> tuple[float, float, float]:
    """(events per second, seconds from the start to the first commit, RSS in MB at the end) of ``worker``
    working through the log as ``group``: the rate at which the group's committed offsets advance, from its
    first commit until nothing is left."""
    topic = settings.topic("webhooks")
    started = time.monotonic()
    first: tuple[float, int] | None = None
    try:
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            worker.check()
            lag = asyncio.run(group_lag(settings.kafka_bootstrap, group, topic, settings.partitions))
            now = time.monotonic()
            if lag is not None and first is None:
                first = (now, lag)
            if lag == 0 and first is not None:
                done = first[1]  # what was left at the first commit has been processed since
                eps = done / (now - first[0]) if now > first[0] and done else float("nan")
                return eps, first[0] - started, rss_mb(worker.pid)
            time.sleep(0.5)  # progress poll interval
        raise TimeoutError(f"{worker.log.name}: the log was not processed within {timeout_s} s")
    finally:
        worker.stop()


def processor_eps(settings: Settings, work: Path, run: int = 0, tree: Path = ROOT) -> tuple[float, float, float]:
    """One processor worker (a consumer group and changelogs of its own) through the log: :func:`drain_eps`.
    ``tree``: the checkout whose processor runs (``BENCH_BASELINE_TREE``, below)."""
    label = "" if tree == ROOT else "baseline-"
    group = f"{processor_group(settings)}-{label}{run}"
    worker = Process(settings, ["worker", "--roles", "processor"], work / "logs" / f"bench-processor-{label}{run}.log",
                     env={"ENXTEST_PROCESSOR_GROUP": group}, cwd=tree)
    return drain_eps(settings, worker, group)


def quix_topics(settings: Settings) -> tuple[str, str]:
    """The peer's own sessions and alerts topics."""
    return f"{settings.topic_prefix}quix.sessions", f"{settings.topic_prefix}quix.alerts"


def quix_eps(settings: Settings, work: Path, run: int = 0) -> tuple[float, float, float]:
    """The Quix Streams peer (bench/quix_peer.py, a consumer group and state of its own) through the log:
    :func:`drain_eps`."""
    group = f"{settings.topic_prefix}quix-peer-{run}"
    sessions, alerts = quix_topics(settings)
    env = {"PYTHONPATH": str(ROOT), "BENCH_BOOTSTRAP": settings.kafka_bootstrap,
           "BENCH_TOPIC": settings.topic("webhooks"), "BENCH_PARTITIONS": str(settings.partitions),
           "BENCH_GROUP": group, "BENCH_SESSIONS_TOPIC": sessions, "BENCH_ALERTS_TOPIC": alerts,
           "BENCH_SLA_S": str(settings.transcode_sla_seconds), "BENCH_STATE_DIR": str(work / f"quix-state-{run}")}
    peer = Process(settings, [], work / "logs" / f"bench-quix-{run}.log", env=env,
                   command=[str(quix_peer.ensure_venv()), "-m", "bench.quix_peer"])
    return drain_eps(settings, peer, group)


async def last_snapshots(bootstrap: str, topic: str, partitions: int) -> dict[bytes, dict | None]:
    """The last record of every key on ``topic`` (a SessionState topic), decoded (None: a tombstone)."""
    codec = default_codec()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=5000)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        raw: dict[bytes, bytes | None] = {}
        left = {tp for tp, end in ends.items() if end > 0}
        while left:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                raw.update((r.key, r.value) for r in records)
            left = {tp for tp in left if await consumer.position(tp) < ends[tp]}
        return {k: None if v is None else codec.decode(v, "SessionState") for k, v in raw.items()}
    finally:
        await consumer.stop()


def differences(ours: dict[bytes, dict | None], theirs: dict[bytes, dict | None], show: int = 3) -> list[str]:
    """What tells the two sets of final session states apart (empty when they are equal): the keys only one
    has, then the keys whose states differ, the first ``show`` of each named."""
    out = []
    only_ours, only_theirs = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
    if only_ours:
        out.append(f"{len(only_ours)} sessions only in the first, e.g. {only_ours[:show]}")
    if only_theirs:
        out.append(f"{len(only_theirs)} sessions only in the second, e.g. {only_theirs[:show]}")
    differ = sorted(k for k in ours.keys() & theirs.keys() if ours[k] != theirs[k])
    for k in differ[:show]:
        a, b = ours[k] or {}, theirs[k] or {}
        fields = sorted(f for f in a.keys() | b.keys() if a.get(f) != b.get(f))
        out.append(f"{k!r}: {', '.join(f'{f} {a.get(f)!r} != {b.get(f)!r}' for f in fields)}")
    if len(differ) > show:
        out.append(f"... {len(differ)} sessions differ")
    return out


def run(bootstrap: str, work: Path, events: int = 200_000, runs: int = 2) -> dict[str, object]:
    settings = fresh_settings(bootstrap, work)
    n = asyncio.run(produce_all(settings, session_log(events // 4, int(time.time() * 1000) - 86_400_000)))
    raw = asyncio.run(raw_consume_eps(settings, n))
    bare = faust_bare_eps(settings, n)
    lean = faust_bare_eps(settings, n, mode="lean")
    ours: list[tuple[float, float, float]] = []
    theirs: list[tuple[float, float, float]] = []
    # BENCH_BASELINE_TREE: another checkout of this repository (an earlier commit) whose processor runs beside,
    # alternately, through the same log: what a change costs or gains, measured in one run on one machine
    baseline_tree = os.environ.get("BENCH_BASELINE_TREE")
    before: list[tuple[float, float, float]] = []
    for i in range(runs):  # alternately, so that a slow spell of the machine falls on both
        ours.append(processor_eps(settings, work, i))
        if baseline_tree:
            before.append(processor_eps(settings, work, i, tree=Path(baseline_tree)))
        theirs.append(quix_eps(settings, work, i))
    eps, startup, rss = (statistics.median([r[j] for r in ours]) for j in range(3))
    q_eps, q_startup, q_rss = (statistics.median([r[j] for r in theirs]) for j in range(3))
    final = asyncio.run(last_snapshots(settings.kafka_bootstrap, settings.topic("sessions"), settings.partitions))
    diff = differences(final, asyncio.run(last_snapshots(settings.kafka_bootstrap, quix_topics(settings)[0],
                                                         settings.partitions)))
    if diff:
        print("   the Quix peer's final session states differ from the processor's:\n   " + "\n   ".join(diff))
    compared: dict[str, object] = {}
    if before:
        b_eps, b_rss = statistics.median([r[0] for r in before]), statistics.median([r[2] for r in before])
        compared = {"processor_baseline_eps": round(b_eps, 1),
                    "processor_baseline_eps_runs": [round(r[0], 1) for r in before],
                    "processor_baseline_rss_mb": round(b_rss, 1), "processor_vs_baseline_ratio": round(eps / b_eps, 3),
                    "processor_vs_baseline_ratio_runs": [round(a[0] / b[0], 3) for a, b in zip(ours, before)],
                    "processor_baseline_tree": baseline_tree}
    return {**compared, "processor_eps": round(eps, 1), "raw_consume_eps": round(raw, 1),
            "processor_vs_raw_ratio": round(eps / raw, 3), "processor_events": n,
            "faust_bare_eps": round(bare, 1), "faust_bare_vs_raw_ratio": round(bare / raw, 3),
            "processor_vs_faust_bare_ratio": round(eps / bare, 3),
            "faust_lean_bare_eps": round(lean, 1), "faust_lean_bare_vs_raw_ratio": round(lean / raw, 3),
            "processor_vs_faust_lean_bare_ratio": round(eps / lean, 3),
            "processor_startup_s": round(startup, 1), "processor_rss_mb": round(rss, 1),
            "processor_eps_runs": [round(r[0], 1) for r in ours],
            "quix_eps": round(q_eps, 1), "quix_eps_runs": [round(r[0], 1) for r in theirs],
            "quix_startup_s": round(q_startup, 1), "quix_rss_mb": round(q_rss, 1),
            "processor_vs_quix_ratio": round(eps / q_eps, 3),
            "processor_vs_quix_ratio_runs": [round(a[0] / b[0], 3) for a, b in zip(ours, theirs)],
            "processor_vs_quix_rss_ratio": round(rss / q_rss, 3), "quix_sessions_equal": bool(final) and not diff,
            "quix_sessions_compared": len(final)}
