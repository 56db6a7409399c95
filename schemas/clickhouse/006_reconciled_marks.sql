-- 006: what came from reconciliation is marked as such (issue 19): the event types of a session known only
-- from EnableX's Server API (a ReconcileFinding, not a webhook), and an alert's cause.
ALTER TABLE enablex.sessions
    ADD COLUMN IF NOT EXISTS reconciled Array(LowCardinality(String))
    COMMENT 'event types known only from reconciliation (roomdrop, recording, transcoded, chatdata), not from a webhook';

ALTER TABLE enablex.sla_alerts
    ADD COLUMN IF NOT EXISTS cause LowCardinality(Nullable(String))
    COMMENT 'transcode_recovered: webhook_missing when the composite is known from the archive (its webhook was lost)';
