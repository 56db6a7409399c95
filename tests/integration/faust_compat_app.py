"""A tiny faust app with a table, run as a real worker process by test_broker_compat.py.

It counts the values it consumes per key in a changelog-backed table and publishes every new count.
"""

import os

import faust

app = faust.App(
    os.environ["COMPAT_APP_ID"],
    broker=f"kafka://{os.environ['COMPAT_BOOTSTRAP']}",
    store="memory://",
    datadir=os.environ["COMPAT_DATADIR"],
    web_enabled=False,
    topic_partitions=2,
)
raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
source = app.topic(os.environ["COMPAT_IN"], partitions=2, **raw)
sink = app.topic(os.environ["COMPAT_OUT"], partitions=2, **raw)
counts = app.Table("counts", default=int, partitions=2)


@app.agent(source)
async def count(stream):
    async for key, _value in stream.items():
        name = key.decode()
        counts[name] += 1
        await sink.send(key=key, value=str(counts[name]).encode())


if __name__ == "__main__":
    app.main()
