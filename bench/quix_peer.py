"""The Python peer of the processor: a Quix Streams 3.28.1 app doing the processor's per-session merge over the
same webhook log, in Quix's RocksDB state store, with the same output (bench/processor.py measures the two in
one run, on one log).

The same as the processor
    - The input: the webhook log (Avro ``WebhookEvent``, single-object encoding), decoded by the repository's
      codec (``streams.avro``); a record that does not decode, or has no key or no ``conf_num``, is skipped, as
      the processor skips it.
    - The state and the rules: per session (the record's key), one part per stage table (``rules.TABLES``), each
      a key of the session's Quix ``State`` (RocksDB, with Quix's changelog topic: a change is a changelog
      record, as the processor's table writes are); every event is ``rules.on_event`` over the session's parts,
      and its ``writes`` go to the state (``None`` deletes).
    - The output, in the processor's order (streams/processor/output.py): the alerts of each transition
      (``SlaAlert``, encoded by the codec when the transition is judged, before its writes), and the session's
      snapshot (``SessionState``, encoded by the codec) once per session and commit, the latest, only when the
      transition changed the state; on the event's partition, keyed by the session. Both are sent and
      delivered at each checkpoint (Quix's sink flush, its first step) before Quix produces the state's
      changelog records and commits the offsets: at-least-once, as the processor's flush.
    - The commit interval (1 s), acks=all, and one process with the log's four partitions.

What differs
    - The SLA watch: the processor keeps a due index per session (``index.set`` after every event) and sweeps
      it every 2 s; the peer has no watch (Quix has no timers). On this log no deadline passes, so the watch
      sweeps nothing in the processor either; its per-event index update is work only the processor does.
    - No dead-lettering, no reconcile topic, no command topic: a rule that raises stops the peer (none does on
      this log); the processor's rejects, findings and watch commands are not exercised here.
    - Each framework's own consumer and producer: Quix's (confluent-kafka, librdkafka) with its defaults
      beside the commit interval; the processor's are faust's and aiokafka's, as it ships.
    - The peer's output goes to topics of its own (``BENCH_SESSIONS_TOPIC``, ``BENCH_ALERTS_TOPIC``), created
      by Quix with the log's partition count.

Checked: the last snapshot per session on the peer's sessions topic equals the processor's (bench/processor.py
compares them in every run: ``quix_sessions_equal``), at 5,000 events (1,250 sessions), 40,000 (10,000) and
200,000 (50,000, two runs). The bench's log raises no alert (every composite is in time), so the alert path is
the same code but not compared.

Run by bench/processor.py as ``bench/.venv-quix/bin/python -m bench.quix_peer`` (a venv of its own, created on
first use by :func:`ensure_venv`), with the repository root on ``PYTHONPATH`` (``streams.avro`` needs fastavro
only, ``streams.processor.rules`` the standard library) and ``BENCH_BOOTSTRAP``, ``BENCH_TOPIC``,
``BENCH_PARTITIONS``, ``BENCH_GROUP``, ``BENCH_SESSIONS_TOPIC``, ``BENCH_ALERTS_TOPIC``, ``BENCH_SLA_S`` and
``BENCH_STATE_DIR`` in the environment. It runs until it is sent SIGTERM."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-quix"
PYTHON = VENV / "bin" / "python"
REQUIREMENTS = ("quixstreams==3.28.1", "fastavro>=1.13,<2")  # fastavro: streams.avro's one dependency

log = logging.getLogger("bench.quix_peer")


def ensure_venv() -> Path:
    """The peer's interpreter, in a venv of its own (created with python3.11 and the requirements on first use:
    quixstreams and the processor's dependencies must not meet in one environment)."""
    if not PYTHON.exists():
        subprocess.run(["python3.11", "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", *REQUIREMENTS], check=True)
    return PYTHON


def main() -> None:
    from quixstreams import Application, State
    from quixstreams.models import TopicConfig
    from quixstreams.models.serializers import Deserializer
    from quixstreams.sinks import BaseSink

    from streams.avro import default_codec
    from streams.processor import rules

    codec = default_codec()
    sla_s = float(os.environ["BENCH_SLA_S"])
    partitions = int(os.environ["BENCH_PARTITIONS"])
    sessions_topic, alerts_topic = os.environ["BENCH_SESSIONS_TOPIC"], os.environ["BENCH_ALERTS_TOPIC"]

    class WebhookDeserializer(Deserializer):
        def __call__(self, value: bytes, ctx: Any) -> dict:
            try:
                return codec.decode(value, "WebhookEvent")
            except Exception as exc:  # noqa: BLE001 - as the processor: a record we cannot read must not stop it
                log.warning("skipping an undecodable record: %s", exc)
                return {}

    class Output(BaseSink):
        """The alerts (in order) and the latest snapshot per session, sent at each checkpoint and delivered
        before Quix goes on to the changelogs and the commit."""

        def __init__(self) -> None:
            super().__init__(on_client_connect_success=lambda: None)
            self.alerts: list[tuple[int, bytes, bytes]] = []
            self.latest: dict[tuple[int, bytes], dict | None] = {}
            self.failed: list[str] = []
            self.producer: Any = None

        def setup(self) -> None:
            self.producer = app.get_producer()

        def add(self, value: Any, key: Any, timestamp: int, headers: Any, topic: str, partition: int,
                offset: int) -> None:
            change, alerts = value
            for alert in alerts:
                self.alerts.append((partition, key, alert))
            if change.changed:
                self.latest[(partition, key)] = change.after

        def delivered(self, err: Any, _msg: Any) -> None:
            if err is not None:
                self.failed.append(str(err))

        def flush(self) -> None:
            produce = self.producer.produce
            for partition, key, alert in self.alerts:
                produce(alerts_topic, alert, key, partition=partition, on_delivery=self.delivered)
            for (partition, key), state in self.latest.items():
                value = None if state is None else codec.encode("SessionState", state)
                produce(sessions_topic, value, key, partition=partition, on_delivery=self.delivered)
            self.alerts, self.latest = [], {}
            left = self.producer.flush(timeout=60)
            if left or self.failed:
                raise RuntimeError(f"the peer's output was not delivered ({left} left, errors {self.failed[:3]})")

    app = Application(broker_address=os.environ["BENCH_BOOTSTRAP"], consumer_group=os.environ["BENCH_GROUP"],
                      auto_offset_reset="earliest", commit_interval=1.0, state_dir=os.environ["BENCH_STATE_DIR"],
                      loglevel="WARNING", processing_guarantee="at-least-once",
                      producer_extra_config={"acks": "all"})
    webhooks = app.topic(os.environ["BENCH_TOPIC"], key_deserializer="bytes", value_deserializer=WebhookDeserializer())
    for name in (sessions_topic, alerts_topic):  # created by Quix at start, as the log is partitioned
        app.topic(name, key_serializer="bytes", value_serializer="bytes",
                  config=TopicConfig(num_partitions=partitions, replication_factor=1))

    def merge(event: dict, state: State) -> tuple[rules.Transition, list[bytes]]:
        """``rules.on_event`` over the session's parts, its writes into the state store."""
        change = rules.on_event({t: state.get(t) for t in rules.TABLES}, event, sla_s)
        alerts = [codec.encode("SlaAlert", a) for a in change.alerts] if change.alerts else []
        for table, part in change.writes.items():
            if part is None:
                state.delete(table)
            else:
                state.set(table, part)
        return change, alerts

    sdf = app.dataframe(webhooks)
    sdf = sdf.filter(lambda event, key, _ts, _headers: bool(key) and event.get("conf_num") is not None,
                     metadata=True)
    sdf = sdf.apply(merge, stateful=True)
    sdf.sink(Output())
    app.run()


if __name__ == "__main__":
    main()
