-- 002: the contract tables (design.md, "ClickHouse"). All times DateTime64(3, 'UTC').
-- Every table is a ReplacingMergeTree keyed by what identifies a row, so a record the sink delivers
-- twice (at-least-once) collapses when read with FINAL. No PARTITION BY: a repeated webhook delivery keeps
-- its event_id but gets a new received_at, and rows only collapse within one partition.

-- One row per accepted webhook (event_id is derived from the payload: a repeated delivery collapses).
CREATE TABLE IF NOT EXISTS enablex.webhook_events
(
    event_id    String,
    received_at DateTime64(3, 'UTC'),
    type        LowCardinality(String),
    app_id      String,
    room_id     Nullable(String),
    conf_num    String COMMENT '\'\' when the event names no session',
    trans_date  Nullable(DateTime64(3, 'UTC')),
    file_count  UInt32,
    total_bytes UInt64,
    destination LowCardinality(String) COMMENT 'file-transfer destination name, \'\' when none',
    raw         String COMMENT 'the body exactly as received'
)
ENGINE = ReplacingMergeTree
ORDER BY (app_id, conf_num, event_id);

-- One row per file URL named by any event.
CREATE TABLE IF NOT EXISTS enablex.session_files
(
    event_id    String,
    received_at DateTime64(3, 'UTC'),
    type        LowCardinality(String),
    app_id      String,
    conf_num    String,
    kind        LowCardinality(String) COMMENT 'recording, transcoded, chatdata or transferred',
    url         String,
    stage       Nullable(String),
    size_bytes  Nullable(UInt64),
    destination LowCardinality(String),
    trans_date  Nullable(DateTime64(3, 'UTC'))
)
ENGINE = ReplacingMergeTree
ORDER BY (app_id, conf_num, event_id, kind, url);

-- The latest state of each session: the highest version wins; read with FINAL.
CREATE TABLE IF NOT EXISTS enablex.sessions
(
    app_id              String,
    conf_num            String,
    room_id             Nullable(String),
    version             UInt64,
    ended_at            Nullable(DateTime64(3, 'UTC')),
    recording_at        Nullable(DateTime64(3, 'UTC')),
    transcoded_at       Nullable(DateTime64(3, 'UTC')),
    delivered_at        Nullable(DateTime64(3, 'UTC')),
    chat_at             Nullable(DateTime64(3, 'UTC')),
    recording_files     UInt32,
    transcoded_files    UInt32,
    delivered_files     UInt32,
    chat_files          UInt32,
    recording_latency_s Nullable(Float64),
    transcode_latency_s Nullable(Float64),
    delivery_latency_s  Nullable(Float64),
    chat_latency_s      Nullable(Float64),
    sla_deadline        Nullable(DateTime64(3, 'UTC')),
    sla_state           LowCardinality(String) COMMENT 'pending, met, breached, recovered or not_applicable',
    stalled_at          Nullable(DateTime64(3, 'UTC')),
    last_event_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (app_id, conf_num);

-- One row per SLA alert (alert_id is deterministic: one per session and kind).
CREATE TABLE IF NOT EXISTS enablex.sla_alerts
(
    alert_id    String,
    kind        LowCardinality(String) COMMENT 'transcode_stalled or transcode_recovered',
    app_id      String,
    conf_num    String,
    room_id     Nullable(String),
    deadline    DateTime64(3, 'UTC'),
    detected_at DateTime64(3, 'UTC'),
    overdue_s   Nullable(Float64)
)
ENGINE = ReplacingMergeTree
ORDER BY alert_id;

-- One row per rejected body (from ingest) or undecodable record (from the sink).
CREATE TABLE IF NOT EXISTS enablex.dead_letters
(
    id          String,
    received_at DateTime64(3, 'UTC'),
    reason      String,
    reason_code LowCardinality(String) COMMENT 'the part of reason before the first \':\'',
    raw         String,
    source      Nullable(String) COMMENT 'source address, or topic/partition/offset of an undecodable record',
    headers     Map(String, String)
)
ENGINE = ReplacingMergeTree
ORDER BY id;

-- The live-recording / streaming error-code catalogue (filled by 004). The key includes the description
-- because the seed lists 7000 three times under one operation (Generic Error) with three descriptions.
CREATE TABLE IF NOT EXISTS enablex.error_codes
(
    code        UInt16,
    operation   String,
    description String
)
ENGINE = ReplacingMergeTree
ORDER BY (code, operation, description);
