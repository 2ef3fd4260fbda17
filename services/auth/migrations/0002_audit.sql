-- The audit log: security-relevant actions of every service, one row per action.
CREATE TABLE audit_events (
    id           text PRIMARY KEY,                  -- "ae_" + random
    org_id       text,                              -- NULL: no organization (unknown e-mail)
    action       text NOT NULL,                     -- "auth.CreateApiKey", "auth.Login.failed", ...
    actor        text NOT NULL DEFAULT '',
    resource     text NOT NULL DEFAULT '',
    peer_address text NOT NULL DEFAULT '',
    request_id   text NOT NULL DEFAULT '',
    details      jsonb NOT NULL DEFAULT '{}',
    event_key    text NOT NULL UNIQUE,              -- a repeat of one action is ignored
    create_time  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_events_org ON audit_events (org_id, create_time DESC, id DESC);
