"""Webhook to ClickHouse ``FINAL`` latency, deadline-to-alert-row lag on a quiet log, and rebuild speed.

One stack as ``enx-streams dev`` runs it: a worker with both roles (owner of the embedded ClickHouse) and
ingest, with a 6-second SLA. Events are posted at a steady rate; ClickHouse is polled (through the owner's
query socket, as ``enx-streams sql`` does) for when each becomes visible under ``FINAL``. Then sessions
with a recording and no composite are posted and nothing else: each alert row's lag is the time it is
first seen minus its deadline. Finally the stack is stopped, the log grown, and ``enx-streams rebuild``
timed over the whole of it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp

from bench.common import Process, fresh_settings, percentile, produce_all, session_log, wait_for
from streams import rebuild
from streams.rebuild import kafka as rebuild_kafka
from streams.config import Settings
from streams.sink.query import QueryError, run_query

SLA_MINUTES = 0.1


def query(settings: Settings, sql: str) -> list[dict]:
    return [json.loads(line) for line in run_query(settings, sql, "JSONEachRow", timeout_s=30).decode().splitlines()]


def _sql_ready(settings: Settings) -> bool:
    try:
        return bool(query(settings, "SELECT count() AS n FROM enablex.webhook_events"))
    except (QueryError, OSError):
        return False


class Seen:
    """Polls a query in a thread; remembers when each key was first returned."""

    def __init__(self, settings: Settings, sql: str, interval_s: float = 0.1) -> None:
        self.first: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(settings, sql, interval_s), daemon=True)
        self._thread.start()

    def _run(self, settings: Settings, sql: str, interval_s: float) -> None:
        while not self._stop.is_set():
            now = time.time()
            try:
                for row in query(settings, sql):
                    self.first.setdefault(row["k"], now)
            except (QueryError, OSError):
                pass
            self._stop.wait(interval_s)  # poll interval

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


async def _post_steady(url: str, bodies: list[tuple[str, bytes]], rate: float) -> dict[str, float]:
    """Post at ``rate`` per second; the time each was sent, by key; raises on anything but 202."""
    sent: dict[str, float] = {}

    async def one(session: aiohttp.ClientSession, key: str, body: bytes, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))  # the scheduled time of this post
        sent[key] = time.time()
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
            answer = await response.json()
            if response.status != 202:
                raise RuntimeError(f"{response.status}: {answer}")

    start = time.monotonic() + 0.2
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, k, b, start + i / rate) for i, (k, b) in enumerate(bodies)))
    return sent


def _body(type_: str, app: str, conf: str, trans_s: float) -> bytes:
    return json.dumps({"type": type_, "app_id": app, "conf_num": conf, "trans_date": round(trans_s, 3),
                       "recording": [f"https://f/{conf}.mkv"]} if type_ == "recording" else
                      {"type": type_, "app_id": app, "conf_num": conf, "trans_date": round(trans_s, 3)}).encode()


def run(bootstrap: str, work: Path, events: int = 1000, rate: float = 50.0, stalls: int = 20,
        rebuild_events: int = 200_000) -> dict[str, float]:
    settings = fresh_settings(bootstrap, work, transcode_sla_minutes=SLA_MINUTES)
    worker = Process(settings, ["worker", "--roles", "processor,sink"], work / "logs" / "bench-e2e-worker.log")
    ingest = Process(settings, ["ingest"], work / "logs" / "bench-e2e-ingest.log")
    url = f"http://127.0.0.1:{settings.ingest_port}/webhooks/enablex"
    try:
        wait_for("ClickHouse through the worker", lambda: worker.check() or _sql_ready(settings), 120)
        wait_for("ingest", lambda: urllib.request.urlopen(url.replace("/webhooks/enablex", "/readyz"),
                                                          timeout=2).status == 200, 60)
        # 1. webhook -> ClickHouse FINAL
        seen = Seen(settings, "SELECT conf_num AS k FROM enablex.webhook_events FINAL WHERE app_id = 'e2e'")
        now = time.time()
        bodies = [(f"c{i}", _body("roomdrop", "e2e", f"c{i}", now)) for i in range(events)]
        sent = asyncio.run(_post_steady(url, bodies, rate))
        wait_for("every event in ClickHouse", lambda: len(seen.first) >= events, 120)
        seen.stop()
        latencies = [seen.first[k] - sent[k] for k in sent]
        # 2. deadline -> alert row, on a quiet log
        alerts = Seen(settings, "SELECT conf_num AS k FROM enablex.sla_alerts FINAL "
                                "WHERE app_id = 'lag' AND kind = 'transcode_stalled'")
        now = time.time()
        stalled = [(f"r{i}", _body(t, "lag", f"r{i}", now)) for i in range(stalls) for t in ("roomdrop", "recording")]
        asyncio.run(_post_steady(url, [(f"{k}-{n}", b) for n, (k, b) in enumerate(stalled)], 200))
        deadline = now + SLA_MINUTES * 60
        wait_for("every stall alert in ClickHouse", lambda: len(alerts.first) >= stalls, 120)
        alerts.stop()
        lags = [t - deadline for t in alerts.first.values()]
        worker.check()
    finally:
        ingest.stop()
        worker.stop()
    # 3. rebuild over a grown log
    asyncio.run(produce_all(settings, session_log(rebuild_events // 4, int(time.time() * 1000) - 86_400_000)))
    total = sum(asyncio.run(rebuild_kafka.end_offsets(settings.kafka_bootstrap, [settings.topic("webhooks")])).values())
    started = time.monotonic()
    code = rebuild.run(settings, echo=lambda _m: None, yes=True)
    took = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"rebuild failed; see {settings.data_dir / 'logs'}/rebuild-*.log")
    return {"e2e_p99_s": round(percentile(latencies, 99), 2), "e2e_p50_s": round(percentile(latencies, 50), 2),
            "e2e_events": events, "e2e_rate_per_s": rate,
            "alert_lag_max_s": round(max(lags), 2), "alert_lag_min_s": round(min(lags), 2),
            "rebuild_eps": round(total / took, 1), "rebuild_events": total, "rebuild_s": round(took, 1)}
