"""``enx-streams deadletters list|show|redrive``: the dead letters of the dead-letter topic, read back.

- :mod:`streams.deadletters.select`: which letters a command is about (pure: filters, origin, app id);
- :mod:`streams.deadletters.topics`: reading a topic to its end as of the start, the redrive ledger (I/O);
- :mod:`streams.deadletters.view`: the lines ``list`` and ``show`` print (pure);
- :mod:`streams.deadletters.redrive`: which of ingest's letters today's rules accept (pure), and appending
  them to the webhook log once (I/O).

The dead-letter topic is the source of truth (kept forever); ClickHouse's ``dead_letters`` is a projection
of it, so these commands read the topic and work the same with embedded ClickHouse and with a server.
"""
