-- Auth's schema: organizations, users, memberships, API keys, refresh-token families,
-- signing keys and idempotency records. Ids are opaque text (prefix + random).

CREATE TABLE organizations (
    id           text PRIMARY KEY,
    display_name text NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id            text PRIMARY KEY,
    email         text NOT NULL UNIQUE,          -- stored lower-cased
    display_name  text NOT NULL DEFAULT '',
    password_hash text NOT NULL,                 -- Argon2id (PHC string)
    create_time   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE memberships (
    id          text PRIMARY KEY,
    org_id      text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    user_id     text REFERENCES users(id) ON DELETE CASCADE,   -- NULL while invited
    email       text NOT NULL,
    role        text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    state       text NOT NULL CHECK (state IN ('invited', 'active')),
    inviter     text NOT NULL DEFAULT '',
    version     integer NOT NULL DEFAULT 1,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, email)
);
CREATE INDEX memberships_user ON memberships (user_id, create_time);

CREATE TABLE api_keys (
    id            text PRIMARY KEY,
    org_id        text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    prefix        text NOT NULL UNIQUE,          -- visible lookup handle, "amk_<8 hex>"
    secret_hash   bytea NOT NULL,                -- HMAC-SHA256(pepper, full secret)
    display_name  text NOT NULL DEFAULT '',
    scopes        text[] NOT NULL DEFAULT '{}',
    expire_time   timestamptz,
    creator       text NOT NULL,
    revoke_time   timestamptz,
    last_use_time timestamptz,
    request_id    text,
    create_time   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, request_id)
);
CREATE INDEX api_keys_org ON api_keys (org_id, create_time DESC, id DESC);

-- One family per login; every refresh rotates to a new token in the same family.
CREATE TABLE refresh_families (
    id          text PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    org_id      text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    revoke_time timestamptz,
    create_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE refresh_tokens (
    token_hash  bytea PRIMARY KEY,               -- HMAC-SHA256(pepper, token); never the token
    family_id   text NOT NULL REFERENCES refresh_families(id) ON DELETE CASCADE,
    expire_time timestamptz NOT NULL,
    spent_time  timestamptz,
    create_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE signing_keys (
    kid             text PRIMARY KEY,
    alg             text NOT NULL,
    -- 'next' keys are published ahead of use so gateways' cached JWKS already know them.
    state           text NOT NULL CHECK (state IN ('next', 'active', 'retiring', 'retired')),
    private_key_enc bytea NOT NULL,              -- AES-256-GCM(nonce || ciphertext) of PKCS8 DER
    public_jwk      jsonb NOT NULL,
    create_time     timestamptz NOT NULL DEFAULT now(),
    activate_time   timestamptz,
    retire_time     timestamptz
);

-- Results of retry-unsafe RPCs by request_id (AIP-155). Responses holding secrets are
-- stored encrypted; rows older than a day are pruned.
CREATE TABLE idempotency (
    scope       text NOT NULL,
    request_id  text NOT NULL,
    response    bytea NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, request_id)
);
