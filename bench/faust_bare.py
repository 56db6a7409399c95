"""The ceiling faust-streaming itself sets: a faust worker whose agent takes the webhook log's events and
does nothing with them (no decode, no table, no output), with the processor's consumer settings.

Two ways (``BENCH_MODE``): ``shipped``, faust as it comes (its consumer, the agent iterating its stream);
``lean``, the way the processor consumes (streams/internals/lean_consumer.py's consumer handing the records
to an inbox of the processor's size, the agent taking them from it and acking each, a turn of the event loop
every 200).

Run as ``python -m bench.faust_bare`` (bench/processor.py does) with ``BENCH_BOOTSTRAP``, ``BENCH_TOPIC``,
``BENCH_PARTITIONS``, ``BENCH_EVENTS``, ``BENCH_APP_ID`` and ``BENCH_MODE`` in the environment; it prints
``faust_bare_eps=<events per second>`` from its first event to the last, and exits."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time

import faust

from streams.processor.app import INBOX_RECORDS


def main() -> None:
    expect = int(os.environ["BENCH_EVENTS"])
    app = faust.App(os.environ["BENCH_APP_ID"], broker=f"kafka://{os.environ['BENCH_BOOTSTRAP']}",
                    store="memory://", datadir=tempfile.mkdtemp(prefix="faust-bare-"), web_enabled=False,
                    topic_partitions=int(os.environ["BENCH_PARTITIONS"]), topic_disable_leader=True,
                    consumer_auto_offset_reset="earliest", stream_wait_empty=False)
    lean = os.environ.get("BENCH_MODE", "shipped") == "lean"
    topic = app.topic(os.environ["BENCH_TOPIC"], key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw")
    if lean:
        from streams.internals import lean_consumer
        from streams.processor.inbox import Inbox

        inbox = Inbox(INBOX_RECORDS)
        lean_consumer.install(app, {os.environ["BENCH_TOPIC"]: inbox})
    seen = {"n": 0, "first": 0.0}

    def saw() -> None:
        if seen["n"] == 0:
            seen["first"] = time.monotonic()
        seen["n"] += 1
        if seen["n"] >= expect:
            took = time.monotonic() - seen["first"]
            print(f"faust_bare_eps={(expect - 1) / took:.1f}", flush=True)
            os._exit(0)  # the figure is out: no orderly shutdown to wait for

    @app.agent(topic)
    async def bare(stream: faust.Stream) -> None:
        if not lean:
            async for _event in stream.events():
                saw()
            return
        await stream.maybe_start()
        ack = app.consumer.ack
        while True:
            await inbox.wait()
            for message in inbox.take():
                saw()
                ack(message)
                if seen["n"] % 200 == 0:
                    await asyncio.sleep(0)

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


if __name__ == "__main__":
    main()
