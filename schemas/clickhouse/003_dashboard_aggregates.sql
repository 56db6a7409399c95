-- 003: per-minute aggregates for the dashboards, fed by materialized views on insert.
-- They count inserted rows, so a record the sink redelivers may be counted twice; a panel that needs exact
-- counts reads the base tables with FINAL. The backfill statements fill a target from its base table only
-- while the target is empty (a database that had rows before this migration), so a rerun adds nothing.

CREATE TABLE IF NOT EXISTS enablex.events_per_minute
(
    minute DateTime('UTC'),
    type   LowCardinality(String),
    app_id String,
    events UInt64
)
ENGINE = SummingMergeTree
ORDER BY (minute, type, app_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS enablex.events_per_minute_mv TO enablex.events_per_minute
AS SELECT
    toDateTime(toStartOfMinute(received_at), 'UTC') AS minute,
    type,
    app_id,
    toUInt64(count()) AS events
FROM enablex.webhook_events
GROUP BY minute, type, app_id;

INSERT INTO enablex.events_per_minute (minute, type, app_id, events)
SELECT toDateTime(toStartOfMinute(received_at), 'UTC') AS minute, type, app_id, toUInt64(count()) AS events
FROM enablex.webhook_events FINAL
WHERE (SELECT count() FROM enablex.events_per_minute) = 0
GROUP BY minute, type, app_id;

CREATE TABLE IF NOT EXISTS enablex.dead_letters_per_minute
(
    minute      DateTime('UTC'),
    reason_code LowCardinality(String),
    rejected    UInt64
)
ENGINE = SummingMergeTree
ORDER BY (minute, reason_code);

CREATE MATERIALIZED VIEW IF NOT EXISTS enablex.dead_letters_per_minute_mv TO enablex.dead_letters_per_minute
AS SELECT
    toDateTime(toStartOfMinute(received_at), 'UTC') AS minute,
    reason_code,
    toUInt64(count()) AS rejected
FROM enablex.dead_letters
GROUP BY minute, reason_code;

INSERT INTO enablex.dead_letters_per_minute (minute, reason_code, rejected)
SELECT toDateTime(toStartOfMinute(received_at), 'UTC') AS minute, reason_code, toUInt64(count()) AS rejected
FROM enablex.dead_letters FINAL
WHERE (SELECT count() FROM enablex.dead_letters_per_minute) = 0
GROUP BY minute, reason_code;
