-- Documents and their chunks. The chunk rows are the source of truth for chunk text and
-- citation offsets, and (through the generated tsvector + GIN) the default keyword index.

CREATE TABLE documents (
    org             text        NOT NULL,
    document_id     text        NOT NULL,
    -- Unique per upload: chunk ids, vectors and the blob are keyed by it, so a document
    -- re-created under the same name never meets the leftovers of a deleted one.
    uid             uuid        NOT NULL UNIQUE,
    display_name    text        NOT NULL,
    mime_type       text        NOT NULL,
    size_bytes      bigint      NOT NULL,
    content_sha256  text        NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    state           text        NOT NULL CHECK (state IN ('PROCESSING', 'READY', 'FAILED')),
    failure_reason  text        NOT NULL DEFAULT '',
    chunk_count     integer     NOT NULL DEFAULT 0,
    -- Processing attempts started (a crash mid-way counts); bounded so nothing loops forever.
    attempts        integer     NOT NULL DEFAULT 0,
    -- A worker holds the document until this time (renewed while it works); NULL = free.
    lease_until     timestamptz,
    request_id      text,
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org, document_id)
);

CREATE UNIQUE INDEX documents_request_id ON documents (org, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX documents_listing ON documents (org, create_time DESC, document_id DESC);
CREATE INDEX documents_processing ON documents (lease_until) WHERE state = 'PROCESSING';
CREATE INDEX documents_metadata ON documents USING gin (metadata jsonb_path_ops);

CREATE TABLE chunks (
    chunk_id      text    PRIMARY KEY,
    org           text    NOT NULL,
    document_uid  uuid    NOT NULL REFERENCES documents (uid) ON DELETE CASCADE,
    chunk_index   integer NOT NULL,
    text          text    NOT NULL,
    start_offset  integer NOT NULL,
    end_offset    integer NOT NULL,
    heading_path  text[]  NOT NULL DEFAULT '{}',
    -- heading_path joined by spaces (a generated column may only use immutable functions).
    headings      text    NOT NULL DEFAULT '',
    -- Headings weigh more than body text in keyword ranking.
    tsv tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', headings), 'B')
        || setweight(to_tsvector('english', text), 'D')
    ) STORED,
    UNIQUE (document_uid, chunk_index)
);

CREATE INDEX chunks_org ON chunks (org);
CREATE INDEX chunks_tsv ON chunks USING gin (tsv);
