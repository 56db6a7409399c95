"""The worker's ``/metrics`` on the real broker.

- A real ``enx-streams worker --roles processor,sink`` (embedded ClickHouse), sessions on the log, and every
  counter and gauge read back by scraping it with the value it must have: the records on each topic, the
  alert of the one stalled session, the rows of each table, the one undecodable record dead-lettered by the
  sink, lag 0 on every partition once the commits are in; then a command the processor cannot handle, counted
  as rejected and dead-lettered.
- The lag sampler against a consumer group whose commits the test makes: the lag from the start, then from
  each commit, and the age of the last commit on an injected clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streams.broker.local import free_port
from streams.processor.names import command_topic
from streams.sink.consumer import TOPIC_KINDS, sink_group
from streams.worker_metrics import LAG_INTERVAL_S, LagSampler
from tests.integration.test_processor import APP, PARTITIONS, _send, confs, event, fresh_settings, produce
from tests.polling import poll

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[str, dict[frozenset, float]]


def scrape(url: str) -> Samples:
    """Every sample of the endpoint: name -> {frozenset of label pairs: value}."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    out: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name][frozenset(sample.labels.items())] = sample.value
    return out


def by(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for labels, v in samples.get(name, {}).items()}


def one(samples: Samples, name: str) -> float:
    (value,) = samples[name].values()
    return value


async def _ends(bootstrap: str, topics: list[str]) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        totals: dict[str, int] = defaultdict(int)
        for tp, offset in (await consumer.end_offsets(tps)).items():
            totals[tp.topic] += offset
        return dict(totals)
    finally:
        await consumer.stop()


def test_the_worker_exports_what_it_did(bootstrap: str, tmp_path: Path) -> None:
    settings = fresh_settings(bootstrap, tmp_path)
    port = free_port()
    on_time, stalled = confs("met-", 1), confs("late-", 1)[:1]
    now = time.time()
    events = [event(t, c, now - 30, now) for c in on_time for t in ("roomdrop", "recording", "transcoded")]
    events += [event(t, c, now - 600, now) for c in stalled for t in ("roomdrop", "recording")]  # past its SLA
    produce(settings, events)
    asyncio.run(_send(bootstrap, settings.topic("webhooks"), f"{APP}/junk".encode(), b"not an avro record"))
    log = tmp_path / "worker.log"
    env = dict(os.environ, ENX_WORKER_METRICS_PORT=str(port))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--roles", "processor,sink",
             "--kafka-bootstrap", bootstrap, "--topic-prefix", settings.topic_prefix, "--partitions", str(PARTITIONS),
             "--data-dir", str(tmp_path / "w"), "--transcode-sla-minutes", "0.1"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/metrics"
    processor_topics = [settings.topic("webhooks"), settings.topic("reconcile"), command_topic(settings)]
    sink_topics = [settings.topic(kind) for kind in TOPIC_KINDS]

    def caught_up() -> Samples | None:
        assert proc.poll() is None, f"the worker exited with {proc.returncode}\n{log.read_text()[-3000:]}"
        before = _ends_now()
        try:
            samples = scrape(url)
        except OSError:
            return None  # not listening yet
        lag = samples.get("enx_worker_consumer_lag", {})
        sampled_after_alert = by(samples, "enx_processor_alerts_total", "kind").get("transcode_stalled") and \
            0 <= one(samples, "enx_worker_lag_sample_age_seconds")
        ends = _ends_now()
        # the processor counts an alert when it raises it, and publishes it (with the session's snapshot) at its
        # next flush: caught up once the alert is on its topic and nothing was written around the scrape
        published = ends.get(settings.topic("alerts"), 0) >= 1 and ends == before
        every_record_sunk = published and one(samples, "enx_sink_records_total") == sum(ends[t] for t in sink_topics)
        if sampled_after_alert and every_record_sunk and lag and not any(lag.values()) \
                and len(lag) == PARTITIONS * (len(processor_topics) + len(sink_topics)):
            return samples
        return None

    def _ends_now() -> dict[str, int]:
        return asyncio.run(_ends(bootstrap, sorted(set(processor_topics + sink_topics))))

    try:
        samples = poll("the worker's metrics show every record processed, sunk and committed", caught_up, 120, log)
        ends = _ends_now()
        webhooks = settings.topic("webhooks")

        # the processor: every record of its three topics handled once, none rejected, one stall, one alert
        handled = by(samples, "enx_processor_events_total", "topic")
        assert handled == {t: ends[t] for t in processor_topics if ends.get(t)}, (handled, ends)
        assert handled[webhooks] == len(events) + 1 and handled[command_topic(settings)] >= 1
        assert "enx_processor_rejected_total" not in samples
        assert by(samples, "enx_processor_alerts_total", "kind") == {"transcode_stalled": 1}
        assert one(samples, "enx_processor_open_sessions") == len(on_time) + len(stalled)
        assert one(samples, "enx_processor_sweep_seconds_count") >= 1

        # the sink: every record, the rows of each table, the undecodable one as a dead letter
        rows = by(samples, "enx_sink_rows_inserted_total", "table")
        assert rows == {"webhook_events": len(events), "session_files": 2 * len(on_time) + len(stalled),
                        "sessions": ends[settings.topic("sessions")], "sla_alerts": 1, "dead_letters": 1}, rows
        assert one(samples, "enx_sink_dead_letters_total") == 1
        assert one(samples, "enx_sink_insert_failures_total") == 0
        assert one(samples, "enx_sink_inserts_total") >= len(rows) and one(samples, "enx_sink_commits_total") >= 1

        # lag and commits, per role: every partition of every topic, 0; committed just now; sampled lately
        groups = {(dict(k)["role"], dict(k)["group"]) for k in samples["enx_worker_consumer_lag"]}
        assert groups == {("processor", f"{settings.topic_prefix}processor"), ("sink", sink_group(settings))}
        ages = by(samples, "enx_worker_last_commit_age_seconds", "role")
        assert set(ages) == {"processor", "sink"} and all(0 <= a < 60 for a in ages.values()), ages
        assert 0 <= one(samples, "enx_worker_lag_sample_age_seconds") <= 3 * LAG_INTERVAL_S
        assert samples["process_resident_memory_bytes"]

        # a command the processor cannot handle (its key is no text): rejected, dead-lettered, its partition goes on
        command = json.dumps({"op": "stall", "now": int(now * 1000)}).encode()
        asyncio.run(_send(bootstrap, command_topic(settings), b"\xff\xfe", command))

        poll("the rejected command counted", lambda: by(scrape(url), "enx_processor_rejected_total", "topic"), 60, log)
        # acked once a later record is handled (processor/agent.py): without one its commit would stay behind it
        produce(settings, [event("roomdrop", "after-the-command", now, now)])

        def rejected() -> Samples | None:
            later = caught_up()
            return later if later and by(later, "enx_sink_rows_inserted_total", "table")["dead_letters"] == 2 else None

        later = poll("the rejected command's dead letter sunk, and every commit in", rejected, 60, log)
        assert by(later, "enx_processor_rejected_total", "topic") == {command_topic(settings): 1}
        ends = _ends_now()
        handled = by(later, "enx_processor_events_total", "topic")
        assert handled[command_topic(settings)] + 1 == ends[command_topic(settings)]  # every other one handled
        assert handled[webhooks] == len(events) + 2
        assert by(later, "enx_sink_rows_inserted_total", "table")["webhook_events"] == len(events) + 1
        assert one(later, "enx_sink_dead_letters_total") == 1  # the processor's letter is a record like any other
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    assert code == 0, log.read_text()[-3000:]


async def _commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def sampled(sampler: LagSampler) -> None:
    """One sample, once the broker has a group coordinator (a fresh broker has none until its offsets topic
    exists; the sampler's thread retries the same way, keeping its last sample meanwhile)."""
    from aiokafka.errors import GroupCoordinatorNotAvailableError

    def once() -> bool:
        try:
            asyncio.run(_sampled(sampler))
        except GroupCoordinatorNotAvailableError:
            return False
        return True

    poll("a sample of the group's offsets", once, 30)


async def _sampled(sampler: LagSampler) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=sampler.bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=sampler.bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        await sampler.sample(admin, consumer)
    finally:
        await consumer.stop()
        await admin.close()


def test_the_lag_sampler_reads_the_group_from_the_broker(bootstrap: str, tmp_path: Path) -> None:
    settings = fresh_settings(bootstrap, tmp_path)
    topic, group = settings.topic("alerts"), f"{settings.topic_prefix}test-group"
    per_partition = confs("lag-", 3)  # three sessions on each partition
    produce(settings, [event("roomdrop", c, 0, 0) for c in per_partition], "alerts")
    now = [1000.0]
    sampler = LagSampler(bootstrap, {"sink": (group, [topic])}, clock=lambda: now[0])

    def exported() -> tuple[dict[int, float], float, float]:
        samples: Samples = defaultdict(dict)
        for family in sampler.collect():
            for sample in family.samples:
                samples[sample.name][frozenset(sample.labels.items())] = sample.value
        labels = [dict(k) for k in samples["enx_worker_consumer_lag"]]
        assert all(x.keys() - {"partition"} == {"role", "group", "topic"} and (x["role"], x["group"], x["topic"])
                   == ("sink", group, topic) for x in labels), labels
        lag = {int(dict(k)["partition"]): v for k, v in samples["enx_worker_consumer_lag"].items()}
        return lag, one(samples, "enx_worker_last_commit_age_seconds"), one(samples, "enx_worker_lag_sample_age_seconds")

    assert exported() == ({}, 0.0, -1)  # nothing sampled yet
    now[0] = 1010.0
    sampled(sampler)
    assert exported() == ({p: 3 for p in range(PARTITIONS)}, 10.0, 0.0)  # never committed: from the start

    asyncio.run(_commit(bootstrap, group, {TopicPartition(topic, 0): 1, TopicPartition(topic, 1): 3}))
    now[0] = 1020.0
    sampled(sampler)
    assert exported() == ({0: 2, 1: 0, 2: 3, 3: 3}, 0.0, 0.0)  # the commit moved: the last commit is now

    now[0] = 1080.0
    sampled(sampler)
    now[0] = 1090.0
    assert exported() == ({0: 2, 1: 0, 2: 3, 3: 3}, 70.0, 10.0)  # nothing committed since
