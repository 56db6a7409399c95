-- 005: the reconciler's findings (issue 19): what EnableX's Server API holds that no webhook brought.
-- finding_id is deterministic (one per session and missing type), so a finding produced twice collapses
-- under FINAL. Files a finding names also go to session_files, marked source 'reconcile' (event_id is the
-- finding_id); rows from webhooks are source 'webhook'.
CREATE TABLE IF NOT EXISTS enablex.reconcile_findings
(
    finding_id   String,
    kind         LowCardinality(String) COMMENT 'webhook_missing or session_unknown',
    app_id       String,
    conf_num     String,
    room_id      Nullable(String),
    missing_type LowCardinality(String) COMMENT 'roomdrop, recording, transcoded or chatdata',
    source       LowCardinality(String) COMMENT 'archive or cdr: the Server API route that holds it',
    trans_date   Nullable(DateTime64(3, 'UTC')),
    urls         Array(String),
    archive_id   Nullable(String) COMMENT 'the archive entry _id, or the cdr_id',
    found_at     DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (app_id, conf_num, finding_id);

ALTER TABLE enablex.session_files
    ADD COLUMN IF NOT EXISTS source LowCardinality(String) DEFAULT 'webhook'
    COMMENT 'webhook, or reconcile: a file listed by EnableX\'s archive whose webhook never came';
