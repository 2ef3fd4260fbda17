-- depends: 0001_documents
-- Which blob store holds a document's raw bytes. Workers only take documents whose bytes they
-- can read: processes with different stores (test meshes, benchmarks) sharing one database
-- must not claim, and then fail, each other's uploads.
ALTER TABLE documents ADD COLUMN blob_store text NOT NULL DEFAULT '';
CREATE INDEX documents_claimable ON documents (blob_store, lease_until) WHERE state = 'PROCESSING';
