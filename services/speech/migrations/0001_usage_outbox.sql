-- The usage outbox (services/common/usage_client.py): usage records this service produced,
-- committed with the work they bill and deleted once Usage acknowledged them. IF NOT EXISTS:
-- databases from before this migration have the table already (the client used to create it).
CREATE TABLE IF NOT EXISTS usage_outbox (
    id           bigserial PRIMARY KEY,
    record       bytea NOT NULL,          -- a serialized aimesh.usage.v1.UsageRecord
    dead_reason  text,                    -- set when Usage rejected the record as invalid
    create_time  timestamptz NOT NULL DEFAULT now()
);
