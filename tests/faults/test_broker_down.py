"""The broker stopped for a minute under steady ingest: every POST still gets 202 (from the fsynced spool),
and after the restart every accepted event is in the log exactly once.

The broker is a real one of this test's own (the shared one stays up for the other tests), stopped with
SIGTERM and started again on the same data directory and port FAULTS_OUTAGE_S later (60 s by default).
Posts come from four concurrent clients at a steady rate before, during and after the outage.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from streams.broker.local import LocalKafka
from tests.faults.record import record_result
from tests.integration.test_ingest_spool import Ingest, event_ids_in_log, poll

OUTAGE_S = float(os.environ.get("FAULTS_OUTAGE_S", "60"))
RATE_PER_S = 20
CLIENTS = 4


def body(i: int) -> bytes:
    kind = ("roomdrop", "recording", "transcoded", "file-transfer", "chatdata")[i % 5]
    return json.dumps({"type": kind, "trans_date": 1764000000 + i, "app_id": "app-outage", "room_id": "r",
                       "conf_num": str(i // 5), "n": i}).encode()


class Load:
    """Posts numbered bodies at a steady rate from several clients; remembers every answer."""

    def __init__(self, url: str, make_body: Callable[[int], bytes] = body, rate_per_s: int = RATE_PER_S) -> None:
        self.url = url
        self.make_body = make_body
        self.rate_per_s = rate_per_s
        self.next = 0
        self.lock = threading.Lock()
        self.accepted: list[str] = []
        self.failures: list[tuple[int, str]] = []
        self.slowest_s = 0.0

    def _post(self, i: int) -> None:
        request = urllib.request.Request(self.url, data=self.make_body(i), method="POST",
                                         headers={"Content-Type": "application/json"})
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
                status = response.status
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, {"error": exc.read().decode(errors="replace")}
        except OSError as exc:
            status, answer = 0, {"error": repr(exc)}
        with self.lock:
            self.slowest_s = max(self.slowest_s, time.monotonic() - started)
            if status == 202:
                self.accepted.append(answer["event_id"])
            else:
                self.failures.append((status, answer.get("error", "")))

    def run(self, seconds: float, pool: ThreadPoolExecutor, until: threading.Event | None = None) -> None:
        """Post for ``seconds``, or until ``until`` is set; then wait for every answer."""
        end = time.monotonic() + seconds
        futures = []
        while time.monotonic() < end and not (until and until.is_set()):
            tick = time.monotonic()
            for _ in range(self.rate_per_s // 10):
                with self.lock:
                    i, self.next = self.next, self.next + 1
                futures.append(pool.submit(self._post, i))
            time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))  # pacing the load, not synchronising
        for f in futures:
            f.result()


def test_broker_down_for_a_minute_under_steady_ingest(own_broker: LocalKafka, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path, own_broker.bootstrap)
    ingest.start()
    load = Load(ingest.url)
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            load.run(5, pool)
            own_broker.stop()
            outage_started = time.monotonic()
            load.run(OUTAGE_S, pool)
            ready = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ingest.port}/readyz", timeout=5).read())
            assert ready["ready_by"] == "spool" and ready["spool_bytes"] > 0, ready
            own_broker.start()
            outage = time.monotonic() - outage_started
            load.run(5, pool)
        assert not load.failures, f"{len(load.failures)} posts not accepted, e.g. {load.failures[:3]}"
        assert len(load.accepted) == load.next
        found = event_ids_in_log(own_broker.bootstrap, f"{ingest.prefix}webhooks.v1", len(load.accepted),
                                 timeout_s=120)
        counts = Counter(found)
        lost = set(load.accepted) - set(counts)
        doubled = {i: n for i, n in counts.items() if n > 1}
        assert not lost and not doubled and set(counts) == set(load.accepted), \
            f"lost {len(lost)}, doubled {len(doubled)}, unexpected {len(set(counts) - set(load.accepted))}"
        poll("the spool drained", lambda: json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{ingest.port}/readyz", timeout=5).read())["ready_by"] == "kafka", 60, ingest.log)
        assert ingest.stop() == 0
        record_result("broker down", events=len(load.accepted), outage_s=round(outage, 1),
                      duration_s=round(time.monotonic() - started, 1), non_202=0, lost=0, duplicated=0,
                      slowest_post_s=round(load.slowest_s, 2),
                      detail=f"{CLIENTS} clients at {RATE_PER_S}/s; broker SIGTERMed, restarted on the same data")
    finally:
        if ingest.proc and ingest.proc.poll() is None:
            ingest.proc.kill()
