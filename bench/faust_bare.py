"""The ceiling faust-streaming itself sets: a faust worker whose agent iterates the webhook log and does
nothing with it (no decode, no table, no output), with the processor's consumer settings.

Run as ``python -m bench.faust_bare`` (bench/processor.py does) with ``BENCH_BOOTSTRAP``, ``BENCH_TOPIC``,
``BENCH_PARTITIONS``, ``BENCH_EVENTS`` and ``BENCH_APP_ID`` in the environment; it prints
``faust_bare_eps=<events per second>`` from its first event to the last, and exits."""

from __future__ import annotations

import os
import sys
import tempfile
import time

import faust


def main() -> None:
    expect = int(os.environ["BENCH_EVENTS"])
    app = faust.App(os.environ["BENCH_APP_ID"], broker=f"kafka://{os.environ['BENCH_BOOTSTRAP']}",
                    store="memory://", datadir=tempfile.mkdtemp(prefix="faust-bare-"), web_enabled=False,
                    topic_partitions=int(os.environ["BENCH_PARTITIONS"]), topic_disable_leader=True,
                    consumer_auto_offset_reset="earliest", stream_wait_empty=False)
    topic = app.topic(os.environ["BENCH_TOPIC"], key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw")
    seen = {"n": 0, "first": 0.0}

    @app.agent(topic)
    async def bare(stream: faust.Stream) -> None:
        async for _event in stream.events():
            if seen["n"] == 0:
                seen["first"] = time.monotonic()
            seen["n"] += 1
            if seen["n"] >= expect:
                took = time.monotonic() - seen["first"]
                print(f"faust_bare_eps={(expect - 1) / took:.1f}", flush=True)
                os._exit(0)  # the figure is out: no orderly shutdown to wait for

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


if __name__ == "__main__":
    main()
