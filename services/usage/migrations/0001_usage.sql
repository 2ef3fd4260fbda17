-- Usage's schema: rate-limit policies, the usage ledger with its daily rollup, budgets,
-- settled budget spend per period and reservations. Quantities and money are int64 micros.

CREATE TABLE rate_limit_policies (
    org          text PRIMARY KEY,
    org_rpm      integer NOT NULL CHECK (org_rpm > 0),
    key_rpm      integer NOT NULL CHECK (key_rpm > 0),
    plan         text NOT NULL DEFAULT '',
    update_time  timestamptz NOT NULL DEFAULT now()
);

-- The append-only ledger; (org, request_id) is the dedupe key that makes retries safe.
CREATE TABLE usage_records (
    id               bigserial PRIMARY KEY,
    org              text NOT NULL,
    request_id       text NOT NULL,
    api_key          text NOT NULL DEFAULT '',
    user_name        text NOT NULL DEFAULT '',
    resource_type    smallint NOT NULL CHECK (resource_type BETWEEN 1 AND 7),
    model            text NOT NULL DEFAULT '',
    quantity_micros  bigint NOT NULL CHECK (quantity_micros >= 0),
    occur_time       timestamptz NOT NULL,
    source           text NOT NULL DEFAULT '',
    create_time      timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (org, request_id)
);
CREATE INDEX usage_records_org_time ON usage_records (org, occur_time DESC, id DESC);

-- Kept in the same transaction as the ledger insert (never recomputed in batch).
CREATE TABLE usage_daily (
    org              text NOT NULL,
    day              date NOT NULL,
    resource_type    smallint NOT NULL,
    model            text NOT NULL,
    api_key          text NOT NULL,
    quantity_micros  bigint NOT NULL,
    record_count     bigint NOT NULL,
    PRIMARY KEY (org, day, resource_type, model, api_key)
);

CREATE TABLE budgets (
    id                    uuid PRIMARY KEY,
    org                   text NOT NULL,
    scope                 smallint NOT NULL CHECK (scope IN (1, 2)),
    api_key               text NOT NULL DEFAULT '',
    display_name          text NOT NULL DEFAULT '',
    monthly_limit_micros  bigint NOT NULL DEFAULT 0 CHECK (monthly_limit_micros >= 0),
    currency_code         text NOT NULL DEFAULT '',
    monthly_token_limit   bigint NOT NULL DEFAULT 0 CHECK (monthly_token_limit >= 0),
    request_id            text,
    version               integer NOT NULL DEFAULT 1,
    create_time           timestamptz NOT NULL DEFAULT now(),
    update_time           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org, scope, api_key, currency_code),
    UNIQUE (org, request_id)
);

-- Settled spend: the durable truth Redis's live counters start from.
CREATE TABLE budget_spend (
    budget_id     uuid NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
    period_start  timestamptz NOT NULL,
    spent_micros  bigint NOT NULL DEFAULT 0,
    spent_tokens  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (budget_id, period_start)
);

CREATE TABLE reservations (
    id                     uuid PRIMARY KEY,
    org                    text NOT NULL,
    api_key                text NOT NULL DEFAULT '',
    amount_micros          bigint NOT NULL,
    currency_code          text NOT NULL,
    tokens                 bigint NOT NULL DEFAULT 0,
    state                  smallint NOT NULL,
    budgets                uuid[] NOT NULL,
    period_start           timestamptz NOT NULL,
    expire_time            timestamptz NOT NULL,
    settled_amount_micros  bigint NOT NULL DEFAULT 0,
    settled_tokens         bigint NOT NULL DEFAULT 0,
    create_time            timestamptz NOT NULL DEFAULT now(),
    close_time             timestamptz
);
CREATE INDEX reservations_open ON reservations (expire_time) WHERE state = 1;
