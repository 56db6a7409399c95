"""The worker's ``/metrics`` on the real broker: a real ``enx-streams worker --roles processor,sink`` (embedded
ClickHouse), sessions on the log, and every counter and gauge read back by scraping it with the value it
must have: the records on each topic, the alert of the one stalled session, the rows of each table, the one
undecodable record dead-lettered by the sink, lag 0 on every partition once the commits are in.
"""

from __future__ import annotations

import asyncio
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
from streams.processor.app import command_topic
from streams.sink.consumer import TOPIC_KINDS, sink_group
from streams.worker_metrics import LAG_INTERVAL_S
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
        try:
            samples = scrape(url)
        except OSError:
            return None  # not listening yet
        lag = samples.get("enx_worker_consumer_lag", {})
        sampled_after_alert = by(samples, "enx_processor_alerts_total", "kind").get("transcode_stalled") and \
            0 <= one(samples, "enx_worker_lag_sample_age_seconds")
        ends = _ends_now()
        every_record_sunk = one(samples, "enx_sink_records_total") == sum(ends[t] for t in sink_topics)
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
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    assert code == 0, log.read_text()[-3000:]
