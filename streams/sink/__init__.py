"""The ClickHouse projection: migrations, the batched idempotent sink worker and the query path.

- :mod:`streams.sink.clickhouse`: connecting (embedded ``chdb://`` or a server) and the one-owner rule of
  an embedded data directory;
- :mod:`streams.sink.migrations`: the numbered migrations of ``schemas/clickhouse/``;
- :mod:`streams.sink.rows` and :mod:`streams.sink.batcher`: pure record -> row and batching rules;
- :mod:`streams.sink.consumer`: the sink worker (``run_sink``);
- :mod:`streams.sink.owner` and :mod:`streams.sink.query`: ``enx-streams sql`` through the owner process.

Importing this package imports nothing heavy: chdb and aiokafka load only in the modules that need them.
"""
