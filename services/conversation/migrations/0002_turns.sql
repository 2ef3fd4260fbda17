-- depends: 0001_conversations
-- The conversation's turn: which SendMessage may write now (a lease, renewed while it streams,
-- so a crashed replica's turn expires instead of blocking the conversation forever).
ALTER TABLE conversations ADD COLUMN turn_holder text;
ALTER TABLE conversations ADD COLUMN turn_expire_time timestamptz;
