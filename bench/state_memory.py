"""Worker RSS with many open sessions: N sessions that each have a recording and await their composite
(``pending``: nothing may leave the tables), processed by one real processor worker; its resident memory
is sampled against the number of events it has committed. With fewer than a million sessions the
one-million figure is extrapolated from the slope of those samples (and marked so)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.common import Process, fresh_settings, group_lag, produce_all, rss_mb, webhook
from streams.rebuild import processor_group

MILLION = 1_000_000


def open_sessions(n: int, now_ms: int):
    for i in range(n):
        yield webhook("recording", "mem", f"m{i}", now_ms - 60_000, now_ms)


def run(bootstrap: str, work: Path, sessions: int = MILLION, timeout_s: float = 3600) -> dict[str, object]:
    settings = fresh_settings(bootstrap, work)
    n = asyncio.run(produce_all(settings, open_sessions(sessions, int(time.time() * 1000))))
    worker = Process(settings, ["worker", "--roles", "processor"], work / "logs" / "bench-memory.log")
    samples: list[tuple[int, float]] = []
    try:
        time.sleep(3)  # the worker starting up before its first sample (a benchmark: no assertion rests on it)
        base = rss_mb(worker.pid)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            worker.check()
            lag = asyncio.run(group_lag(settings.kafka_bootstrap, processor_group(settings), settings.topic("webhooks"),
                                        settings.partitions))
            if lag is not None:
                samples.append((n - lag, rss_mb(worker.pid)))
                if lag == 0:
                    break
            time.sleep(1.0)  # sampling interval
        else:
            raise TimeoutError(f"{n} sessions not processed within {timeout_s} s")
        final = rss_mb(worker.pid)
    finally:
        worker.stop()
    if n >= MILLION:
        figure, extrapolated = final, False
    else:
        (x0, y0), (x1, y1) = samples[len(samples) // 4], samples[-1]
        slope = (y1 - y0) / (x1 - x0) if x1 > x0 else 0.0
        figure, extrapolated = final + slope * (MILLION - n), True
    return {"worker_rss_mb_1m_sessions": round(figure, 1), "worker_rss_extrapolated": extrapolated,
            "worker_rss_sessions_measured": n, "worker_rss_mb_measured": round(final, 1),
            "worker_rss_mb_at_start": round(base, 1)}
