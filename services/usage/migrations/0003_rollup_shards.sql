-- depends: 0002_settled_spend_from_reservations
-- Concurrent single-record writers of one organization all updated the same rollup row and so
-- committed one at a time. Each database session now writes its own shard of the row
-- (pg_backend_pid() % 8); summaries add the shards up.
ALTER TABLE usage_daily ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE usage_daily DROP CONSTRAINT usage_daily_pkey;
ALTER TABLE usage_daily ADD PRIMARY KEY (org, day, resource_type, model, api_key, shard);
