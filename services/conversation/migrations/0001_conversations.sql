-- Conversations and their messages, per organization (the org id comes from the gateway).
CREATE TABLE conversations (
    org               text        NOT NULL,
    id                text        NOT NULL,
    title             text        NOT NULL DEFAULT '',
    metadata          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    default_model     text        NOT NULL DEFAULT '',
    system_prompt     text        NOT NULL DEFAULT '',
    message_count     integer     NOT NULL DEFAULT 0,
    etag              text        NOT NULL,
    create_request_id text,
    create_time       timestamptz NOT NULL DEFAULT now(),
    update_time       timestamptz NOT NULL DEFAULT now(),
    delete_time       timestamptz,
    PRIMARY KEY (org, id)
);
CREATE UNIQUE INDEX conversations_create_request ON conversations (org, create_request_id)
    WHERE create_request_id IS NOT NULL;
CREATE INDEX conversations_recent ON conversations (org, update_time DESC, id);

CREATE TABLE messages (
    seq               bigserial   PRIMARY KEY,
    org               text        NOT NULL,
    conversation_id   text        NOT NULL,
    id                text        NOT NULL,
    role              smallint    NOT NULL,
    content           text        NOT NULL,
    state             smallint    NOT NULL,
    model             text        NOT NULL DEFAULT '',
    prompt_tokens     integer,
    completion_tokens integer,
    citations         bytea,       -- serialized aimesh.conversation.v1.Message (citations only)
    finish_reason     smallint    NOT NULL DEFAULT 0,
    error             bytea,       -- serialized google.rpc.Status
    request_id        text,
    create_time       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (org, conversation_id) REFERENCES conversations (org, id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX messages_name ON messages (org, conversation_id, id);
CREATE INDEX messages_by_conversation ON messages (org, conversation_id, seq);
CREATE UNIQUE INDEX messages_request ON messages (org, conversation_id, request_id, role)
    WHERE request_id IS NOT NULL;
