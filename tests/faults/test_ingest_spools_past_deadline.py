"""Kafka away from ingest past sessions' deadlines: no false stall, and a lost composite paged once.

A real ingest process and a real processor worker on a broker of the test's own, a 15-second SLA, the
default lease (60 s). Two sessions are recorded through ingest; then Kafka goes away from ingest, either
cut off from ingest alone (ingest reaches the broker through a relay, which is cut: the processor keeps its
connection, stays caught up with the log and has the wall clock running past the deadlines) or the broker
itself stopped (SIGTERM) for every client. One session's composite, on time, is posted meanwhile and
answered 202 from ingest's spool; the other's is lost (never posted). Kafka stays away until 20 s past both
deadlines (ten sweeps of the watch), then comes back. Ingest drains its spool, then writes its watermarks
again:

- the session whose composite waited in the spool is ``met`` and never paged;
- the lost one gets exactly one ``transcode_stalled``, raised once ingest was back (its ``detected_at`` is
  at or after Kafka came back), with the deadline it breached;
- ingest's clean stop leaves a ``leaving`` watermark as the last record of every partition;
- a brand-new consumer group replaying the log raises exactly the live run's alerts (ids, kinds, deadlines,
  overdue times).

Without the watermarks' bound (checked by running the first case with ``ENX_INGEST_LEASE_S=0.001`` for the
worker, which releases the clock at once) the worker pages the spooled session at its deadline and closes
the page with a late-delivery ``transcode_recovered`` when the spool drains: the false page of issue 21.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from streams import watermark
from streams.avro import default_codec
from streams.broker.local import LocalKafka, free_port
from streams.config import default_cache_dir
from tests.faults.netcut import TwoDoorKafka
from tests.faults.record import record_result
from tests.integration.test_ingest_spool import Ingest, post
from tests.integration.test_processor import (APP, PARTITIONS, Workers, _ends, alerts_of, fresh_settings,
                                              kinds_per_session, read)
from tests.polling import poll

SLA_MINUTES = "0.25"
SLA_S = 15.0
PAST_DEADLINE_S = 20.0  # how long past the deadlines Kafka stays away: ten sweeps; within the lease (60 s) of the last watermark
codec = default_codec()


def body(type_: str, conf: str, trans_s: float) -> bytes:
    payload: dict = {"type": type_, "app_id": APP, "conf_num": conf, "room_id": "r", "trans_date": int(trans_s)}
    if type_ != "roomdrop":
        payload[type_] = [f"http://f/{conf}/{type_}.mp4"]
    return json.dumps(payload).encode()


def marks_by_partition(records: list) -> dict[int, list[watermark.Mark]]:
    out: dict[int, list[watermark.Mark]] = {}
    for r in records:
        mark = watermark.parse(codec.decode(r.value))
        if mark is not None:
            out.setdefault(r.partition, []).append(mark)
    return out


def session_states(settings, confs: set[str]) -> dict[str, str]:
    """The latest ``sla_state`` of each of ``confs`` on the sessions topic."""
    states: dict[str, str] = {}
    for r in read(settings, "sessions", lambda g: False, 2):
        if r.value is not None:
            s = codec.decode(r.value)
            if s["conf_num"] in confs:
                states[s["conf_num"]] = s["sla_state"]
    return states


def test_kafka_cut_off_from_ingest_only(tmp_path: Path) -> None:
    """Ingest reaches the broker through a relay that is cut; the processor keeps its own connection, stays
    caught up with the log and would judge by the wall clock."""
    broker = TwoDoorKafka(tmp_path / "broker", default_cache_dir(), port=free_port())
    broker.start(timeout_s=90)
    try:
        spools_past_deadlines(broker.bootstrap, broker.relayed_bootstrap, broker.relay.cut, broker.relay.restore,
                              tmp_path, "kafka cut off from ingest")
    finally:
        broker.relay.cut()
        broker.stop()


def test_broker_down(own_broker: LocalKafka, tmp_path: Path) -> None:
    """The broker itself stopped (SIGTERM) and started again on the same data: every client loses it."""
    spools_past_deadlines(own_broker.bootstrap, own_broker.bootstrap, own_broker.stop, own_broker.start, tmp_path,
                          "broker down")


def spools_past_deadlines(bootstrap: str, ingest_bootstrap: str, fail: Callable[[], object],
                          recover: Callable[[], object], tmp_path: Path, label: str) -> None:
    settings = fresh_settings(bootstrap, tmp_path)
    ingest = Ingest(tmp_path, ingest_bootstrap)
    ingest.prefix = settings.topic_prefix
    ingest.env.update(ENX_TOPIC_PREFIX=settings.topic_prefix, ENX_PARTITIONS=str(PARTITIONS))
    workers = Workers(settings, tmp_path, sla_minutes=SLA_MINUTES)
    tag = uuid.uuid4().hex[:6]
    spooled, lost = f"spooled-{tag}", f"lost-{tag}"
    started = time.monotonic()
    try:
        ingest.start()
        workers.start(1)
        workers.ready(1)
        poll("ingest's watermarks on every partition",
             lambda: len(marks_by_partition(read(settings, "webhooks", lambda g: False, 1))) == PARTITIONS,
             30, ingest.log)

        now = time.time()
        for conf in (spooled, lost):
            assert post(ingest.url, body("roomdrop", conf, now))[0] == 202
            assert post(ingest.url, body("recording", conf, now))[0] == 202
        deadline = int(now) + SLA_S

        fail()
        stopped = time.time()
        status, _ = post(ingest.url, body("transcoded", spooled, now + 2))  # on time, answered from the spool
        assert status == 202
        ready = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ingest.port}/readyz", timeout=5).read())
        assert ready["ready_by"] == "spool" and ready["spool_frames"] >= 1, ready
        # the fault's length: the broker stays away until well past both deadlines (pacing, not synchronising)
        time.sleep(max(0.0, deadline + PAST_DEADLINE_S - time.time()))
        back_ms = int(time.time() * 1000)
        recover()

        def lost_paged(got: list) -> bool:
            workers.check_alive()
            return kinds_per_session(alerts_of(got))[(lost, "transcode_stalled")] >= 1

        got = read(settings, "alerts", lost_paged, 90)
        assert lost_paged(got), f"no stall for the lost composite\n{workers.logs()}"
        poll("the spooled composite merged: the session met",
             lambda: session_states(settings, {spooled}).get(spooled) == "met", 60, ingest.log)
        # two sweeps more: nothing else comes
        live = alerts_of(read(settings, "alerts", lambda g: False, 5))
        ours = [a for a in live if a["conf_num"] in (spooled, lost)]
        assert [(a["conf_num"], a["kind"]) for a in ours] == [(lost, "transcode_stalled")], \
            f"{ours}\n{workers.logs()}"
        (stall,) = ours
        assert stall["deadline"] == deadline * 1000
        assert stall["detected_at"] >= back_ms, "paged before ingest was back: judged without its spool"
        assert session_states(settings, {spooled, lost}) == {spooled: "met", lost: "breached"}
        assert ingest.stop() == 0
        marks = marks_by_partition(read(settings, "webhooks", lambda g: False, 3))
        assert all(m[-1].leaving for m in marks.values()) and len(marks) == PARTITIONS, \
            {p: m[-1] for p, m in marks.items()}
        assert workers.stop() == [0]
    finally:
        workers.stop()
        if ingest.proc and ingest.proc.poll() is None:
            ingest.proc.kill()

    # Replay: a brand-new consumer group over the same log, watermarks included, raises the same alerts.
    mark = asyncio.run(_ends(settings, "alerts"))
    group = f"{settings.topic_prefix}replay-{uuid.uuid4().hex[:6]}"
    (tmp_path / "replay").mkdir()
    replay = Workers(settings, tmp_path / "replay", sla_minutes=SLA_MINUTES, env={"ENXTEST_PROCESSOR_GROUP": group})
    try:
        replay.start(1)
        replay.ready(1, group=group)  # caught up with the live log (its probes come after it)
        again = alerts_of(read(settings, "alerts", lambda g: False, 5, start=mark))
    finally:
        assert replay.stop() == [0], replay.logs()
    key = lambda a: (a["alert_id"], a["kind"], a["deadline"], a["overdue_s"])  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, live)), replay.logs()
    record_result(f"ingest spools past deadlines: {label}", sla_s=SLA_S, outage_s=round(back_ms / 1000 - stopped, 1),
                  false_stalls=0, lost_stalls=1, stall_lag_after_back_s=round((stall["detected_at"] - back_ms) / 1000, 1),
                  duration_s=round(time.monotonic() - started, 1),
                  detail="composite spooled by ingest while the broker was down: met, no page; composite lost: "
                         "one stall after ingest was back; replay equals live")
