-- 001: the database and the migrations ledger.
-- Every migration is idempotent (IF NOT EXISTS, inserts guarded by NOT IN), and each statement ends with
-- ';' at the end of a line, which is where the runner (streams/sink/migrations.py) splits them.
CREATE DATABASE IF NOT EXISTS enablex;

CREATE TABLE IF NOT EXISTS enablex.schema_migrations
(
    version    UInt32,
    name       String,
    applied_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY version;
