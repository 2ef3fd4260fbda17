-- Billing's schema: plans and their prices (data, seeded below), subscriptions with the plan
-- in force per period, invoices and their lines. Money: int64 micros + ISO 4217 currency.

CREATE TABLE plans (
    id                  text PRIMARY KEY,
    display_name        text NOT NULL,
    description         text NOT NULL DEFAULT '',
    currency_code       text NOT NULL,
    monthly_fee_micros  bigint NOT NULL DEFAULT 0 CHECK (monthly_fee_micros >= 0),
    org_rpm             integer NOT NULL CHECK (org_rpm > 0),
    key_rpm             integer NOT NULL CHECK (key_rpm > 0),
    tax_rate_micros     bigint NOT NULL DEFAULT 0 CHECK (tax_rate_micros BETWEEN 0 AND 1000000),
    publicly_available  boolean NOT NULL DEFAULT true,
    archived            boolean NOT NULL DEFAULT false,
    is_default          boolean NOT NULL DEFAULT false,
    request_id          text UNIQUE,
    version             integer NOT NULL DEFAULT 1,
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX plans_one_default ON plans (is_default) WHERE is_default;

CREATE TABLE plan_prices (
    plan_id                    text NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    resource_type              smallint NOT NULL,
    model                      text NOT NULL DEFAULT '',
    included_quantity_micros   bigint NOT NULL DEFAULT 0 CHECK (included_quantity_micros >= 0),
    overage_unit_price_micros  bigint NOT NULL CHECK (overage_unit_price_micros >= 0),
    price_unit_quantity        bigint NOT NULL CHECK (price_unit_quantity >= 1),
    PRIMARY KEY (plan_id, resource_type, model)
);

CREATE TABLE subscriptions (
    org              text PRIMARY KEY,
    plan_id          text NOT NULL REFERENCES plans (id),
    pending_plan_id  text REFERENCES plans (id),
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    state            smallint NOT NULL DEFAULT 1,
    -- false until Usage acknowledged the plan's rate limits (retried in the background)
    policy_synced    boolean NOT NULL DEFAULT false,
    create_time      timestamptz NOT NULL DEFAULT now(),
    update_time      timestamptz NOT NULL DEFAULT now()
);

-- The plan in force for each billing period (what an invoice for that period uses).
CREATE TABLE subscription_periods (
    org           text NOT NULL,
    period_start  timestamptz NOT NULL,
    plan_id       text NOT NULL REFERENCES plans (id),
    PRIMARY KEY (org, period_start)
);

CREATE TABLE invoices (
    id                 uuid PRIMARY KEY,
    org                text NOT NULL,
    period_start       timestamptz NOT NULL,
    period_end         timestamptz NOT NULL,
    plan_id            text NOT NULL,
    state              smallint NOT NULL DEFAULT 1,
    currency_code      text NOT NULL,
    subtotal_micros    bigint NOT NULL DEFAULT 0,
    tax_rate_micros    bigint NOT NULL DEFAULT 0,
    tax_micros         bigint NOT NULL DEFAULT 0,
    total_micros       bigint NOT NULL DEFAULT 0,
    number             text NOT NULL DEFAULT '',
    create_time        timestamptz NOT NULL DEFAULT now(),
    update_time        timestamptz NOT NULL DEFAULT now(),
    finalize_time      timestamptz,
    due_time           timestamptz,
    paid_time          timestamptz,
    payment_reference  text NOT NULL DEFAULT '',
    void_time          timestamptz,
    void_reason        text NOT NULL DEFAULT '',
    UNIQUE (org, period_start)
);
CREATE INDEX invoices_org_period ON invoices (org, period_start DESC);

CREATE TABLE invoice_lines (
    invoice_id                uuid NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    position                  integer NOT NULL,
    kind                      smallint NOT NULL,
    description               text NOT NULL,
    resource_type             smallint NOT NULL DEFAULT 0,
    model                     text NOT NULL DEFAULT '',
    quantity_micros           bigint NOT NULL DEFAULT 0,
    included_quantity_micros  bigint NOT NULL DEFAULT 0,
    billable_quantity_micros  bigint NOT NULL DEFAULT 0,
    unit_price_micros         bigint NOT NULL DEFAULT 0,
    price_unit_quantity       bigint NOT NULL DEFAULT 1,
    amount_micros             bigint NOT NULL,
    PRIMARY KEY (invoice_id, position)
);

-- Plans are data. Resource types: 1 prompt tokens, 2 completion tokens, 3 audio seconds,
-- 4 characters synthesized, 5 chunks embedded, 6 searches, 7 requests. Quantities in
-- micro-units; prices in micros per price_unit_quantity whole units.
INSERT INTO plans (id, display_name, description, currency_code, monthly_fee_micros, org_rpm,
                   key_rpm, publicly_available, is_default) VALUES
    ('free', 'Free', 'Try aimesh: small monthly allowances, pay-as-you-go beyond them.', 'USD',
     0, 60, 20, true, true),
    ('pro', 'Pro', 'For production apps: larger allowances, lower overage prices.', 'USD',
     49000000, 600, 120, true, false),
    ('enterprise', 'Enterprise', 'Negotiated limits and prices; assigned by aimesh staff.', 'USD',
     999000000, 6000, 1200, false, false);

INSERT INTO plan_prices (plan_id, resource_type, model, included_quantity_micros,
                         overage_unit_price_micros, price_unit_quantity) VALUES
    ('free', 1, '',   100000000000,   500000, 1000000),   -- 100k prompt tokens, $0.50 / 1M
    ('free', 2, '',    50000000000,  1500000, 1000000),   -- 50k completion tokens, $1.50 / 1M
    ('free', 3, '',      600000000,     6000,       1),   -- 10 min audio, $0.006 / s
    ('free', 4, '',    10000000000, 15000000, 1000000),   -- 10k characters, $15 / 1M
    ('free', 5, '',     1000000000,   100000,    1000),   -- 1k chunks, $0.10 / 1k
    ('free', 6, '',     1000000000,   500000,    1000),   -- 1k searches, $0.50 / 1k
    ('pro', 1, '',   10000000000000,   400000, 1000000),  -- 10M prompt tokens, $0.40 / 1M
    ('pro', 2, '',    5000000000000,  1200000, 1000000),  -- 5M completion tokens, $1.20 / 1M
    ('pro', 3, '',      36000000000,     5000,       1),  -- 10 h audio, $0.005 / s
    ('pro', 4, '',    1000000000000, 12000000, 1000000),  -- 1M characters, $12 / 1M
    ('pro', 5, '',     100000000000,    80000,    1000),  -- 100k chunks, $0.08 / 1k
    ('pro', 6, '',     100000000000,   400000,    1000),  -- 100k searches, $0.40 / 1k
    ('enterprise', 1, '', 1000000000000000,   300000, 1000000),
    ('enterprise', 2, '',  500000000000000,  1000000, 1000000),
    ('enterprise', 3, '',     360000000000,     4000,       1),
    ('enterprise', 4, '',   10000000000000, 10000000, 1000000),
    ('enterprise', 5, '',    1000000000000,    60000,    1000),
    ('enterprise', 6, '',    1000000000000,   300000,    1000);
