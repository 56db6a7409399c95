"""``enx-streams status``: the health of the whole pipeline. :mod:`gather` reads (every read bounded by a
timeout), :mod:`judge` decides (pure), :mod:`render` shows (a table with the verdict first, or JSON)."""

DEFAULT_TIMEOUT_S = 4.0  # what each check (Kafka, ingest, ClickHouse) may take
