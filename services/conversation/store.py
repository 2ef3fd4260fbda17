"""Conversation's SQL: the only code that touches the `conversation` schema."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import psycopg
from psycopg import sql

from services.common.db import Database, Row

PURGE_AFTER_DAYS = 30
_UPDATABLE = ("title", "metadata", "default_model", "system_prompt")


def new_message_id() -> str:
    """Sorts in creation order: microseconds since the epoch, then randomness."""
    return f"{time.time_ns() // 1000:016x}{secrets.token_hex(4)}"


def new_etag() -> str:
    return secrets.token_hex(8)


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert_queries: dict[tuple[str, ...], str] = {}

    # --- conversations ------------------------------------------------------------------------

    async def create_conversation(
        self, org: str, conv_id: str, fields: dict[str, Any], request_id: str | None
    ) -> Row | None:
        """The new conversation (or the one `request_id` created before); None when the id is
        taken."""
        try:
            async with self.db.connection() as conn:
                if request_id:
                    cur = await conn.execute(
                        "SELECT * FROM conversations WHERE org = %s AND create_request_id = %s",
                        (org, request_id),
                    )
                    existing = await cur.fetchone()
                    if existing is not None:
                        return existing
                cur = await conn.execute(
                    """INSERT INTO conversations (org, id, title, metadata, default_model,
                                                  system_prompt, etag, create_request_id)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING *""",
                    (
                        org,
                        conv_id,
                        fields["title"],
                        json.dumps(fields["metadata"]),
                        fields["default_model"],
                        fields["system_prompt"],
                        new_etag(),
                        request_id or None,
                    ),
                )
                row = await cur.fetchone()
                assert row is not None
                return row
        except psycopg.errors.UniqueViolation:
            return None

    async def get_conversation(self, org: str, conv_id: str) -> Row | None:
        async with self.db.autocommit() as conn:
            cur = await conn.execute(
                "SELECT * FROM conversations WHERE org = %s AND id = %s AND "
                "(delete_time IS NULL OR "
                f"delete_time > now() - interval '{PURGE_AFTER_DAYS} days')",
                (org, conv_id),
            )
            return await cur.fetchone()

    async def list_conversations(
        self, org: str, show_deleted: bool, offset: int, limit: int
    ) -> list[Row]:
        async with self.db.connection() as conn:
            visible = (
                f"(delete_time IS NULL OR delete_time > now() - interval '{PURGE_AFTER_DAYS} days')"
                if show_deleted
                else "delete_time IS NULL"
            )
            cur = await conn.execute(
                f"SELECT * FROM conversations WHERE org = %s AND {visible} "
                "ORDER BY update_time DESC, id LIMIT %s OFFSET %s",
                (org, limit, offset),
            )
            return await cur.fetchall()

    async def update_conversation(
        self, org: str, conv_id: str, changes: dict[str, Any]
    ) -> Row | None:
        sets = [sql.SQL("{} = %s").format(sql.Identifier(k)) for k in changes if k in _UPDATABLE]
        values = [
            json.dumps(v) if k == "metadata" else v for k, v in changes.items() if k in _UPDATABLE
        ]
        query = sql.SQL(
            "UPDATE conversations SET {}, etag = %s, update_time = now() "
            "WHERE org = %s AND id = %s RETURNING *"
        ).format(sql.SQL(", ").join(sets))
        async with self.db.connection() as conn:
            cur = await conn.execute(query, (*values, new_etag(), org, conv_id))
            return await cur.fetchone()

    async def set_deleted(self, org: str, conv_id: str, deleted: bool) -> Row | None:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "UPDATE conversations "
                "SET delete_time = CASE WHEN %s THEN coalesce(delete_time, now()) END, "
                "etag = CASE WHEN (delete_time IS NULL) = %s THEN %s ELSE etag END "
                "WHERE org = %s AND id = %s RETURNING *",
                (deleted, deleted, new_etag(), org, conv_id),
            )
            return await cur.fetchone()

    async def purge_expired(self) -> int:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM conversations "
                f"WHERE delete_time < now() - interval '{PURGE_AFTER_DAYS} days'"
            )
            return cur.rowcount

    # --- messages -----------------------------------------------------------------------------

    async def list_messages(
        self, org: str, conv_id: str, after_seq: int, limit: int
    ) -> tuple[list[Row], int]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM messages WHERE org = %s AND conversation_id = %s AND seq > %s "
                "ORDER BY seq LIMIT %s",
                (org, conv_id, after_seq, limit),
            )
            rows = await cur.fetchall()
            cur = await conn.execute(
                "SELECT count(*) AS n FROM messages WHERE org = %s AND conversation_id = %s",
                (org, conv_id),
            )
            total = await cur.fetchone()
            return rows, int(total["n"]) if total else 0

    async def get_message(self, org: str, conv_id: str, msg_id: str) -> Row | None:
        async with self.db.autocommit() as conn:
            cur = await conn.execute(
                "SELECT * FROM messages WHERE org = %s AND conversation_id = %s AND id = %s",
                (org, conv_id, msg_id),
            )
            return await cur.fetchone()

    async def truncate_message(
        self, org: str, conv_id: str, msg_id: str, length: int, state: int
    ) -> Row | None:
        """Keep the first `length` characters of a message's content; set its state."""
        async with self.db.autocommit() as conn:
            cur = await conn.execute(
                "UPDATE messages SET content = left(content, %s), state = %s "
                "WHERE org = %s AND conversation_id = %s AND id = %s RETURNING *",
                (length, state, org, conv_id, msg_id),
            )
            return await cur.fetchone()

    async def recent_messages(self, org: str, conv_id: str, limit: int) -> list[Row]:
        """The last `limit` messages, oldest first."""
        async with self.db.autocommit() as conn:
            cur = await conn.execute(
                "SELECT * FROM (SELECT * FROM messages WHERE org = %s AND conversation_id = %s "
                "ORDER BY seq DESC LIMIT %s) recent ORDER BY seq",
                (org, conv_id, limit),
            )
            return await cur.fetchall()

    async def messages_for_request(self, org: str, conv_id: str, request_id: str) -> list[Row]:
        async with self.db.autocommit() as conn:
            cur = await conn.execute(
                "SELECT * FROM messages "
                "WHERE org = %s AND conversation_id = %s AND request_id = %s ORDER BY seq",
                (org, conv_id, request_id),
            )
            return await cur.fetchall()

    async def insert_message(
        self, org: str, conv_id: str, values: dict[str, Any], release_turn_of: str | None = None
    ) -> Row:
        """Append a message and bump the conversation's count, update_time and etag, atomically
        (one statement, one round trip); with `release_turn_of`, also release that holder's
        turn (a turn's last write). The row carries the conversation's new count as
        `conversation_message_count`."""
        columns = ("org", "conversation_id", "id", *values)
        params = (org, conv_id, new_message_id(), *values.values(), new_etag(),
                  release_turn_of, release_turn_of, org, conv_id)
        async with self.db.autocommit() as conn:
            query = self._insert_queries.get(columns)
            if query is None:  # composed once per column set (it is on every turn's path)
                query = self._insert_queries[columns] = sql.SQL(
                    "WITH message AS (INSERT INTO messages ({}) VALUES ({}) RETURNING *), "
                    "bump AS (UPDATE conversations "
                    "SET message_count = message_count + 1, update_time = now(), etag = %s, "
                    "turn_holder = CASE WHEN turn_holder = %s THEN NULL ELSE turn_holder END, "
                    "turn_expire_time = CASE WHEN turn_holder = %s THEN NULL "
                    "ELSE turn_expire_time END "
                    "WHERE org = %s AND id = %s RETURNING message_count) "
                    "SELECT message.*, bump.message_count AS conversation_message_count "
                    "FROM message, bump"
                ).format(
                    sql.SQL(", ").join(map(sql.Identifier, columns)),
                    sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                ).as_string(conn)
            cur = await conn.execute(query, params)
            row = await cur.fetchone()
            assert row is not None
            return row

    # --- ordering -----------------------------------------------------------------------------

    # Taking the turn is coordination, not data: it commits without waiting for the WAL flush
    # (visible to every replica at once all the same), which takes a disk flush (~2 ms, far
    # more on a busy disk) off the path before the first token. A database crash can lose only
    # a lease whose turn stored nothing yet: the user message's own (synchronous) commit
    # flushes the WAL up to it, the lease included. Renewals and releases wait as usual.
    _NO_FLUSH_WAIT = "(SELECT set_config('synchronous_commit', 'off', true)) AS no_flush_wait"

    async def take_turn(
        self, org: str, conv_id: str, holder: str, lease_seconds: float
    ) -> Row | None:
        """Take the turn of a live (not deleted) conversation if it is free or its lease expired:
        the conversation's row, or None (missing, deleted or held: get_conversation tells)."""
        async with self.db.autocommit() as conn:
            cur = await conn.execute(
                "UPDATE conversations "
                "SET turn_holder = %s, turn_expire_time = now() + make_interval(secs => %s) "
                f"FROM {self._NO_FLUSH_WAIT} "
                "WHERE org = %s AND id = %s AND delete_time IS NULL "
                "AND (turn_holder IS NULL OR turn_expire_time < now()) "
                "RETURNING conversations.*",
                (holder, lease_seconds, org, conv_id),
            )
            return await cur.fetchone()

    async def renew_turn(self, org: str, conv_id: str, holder: str, lease_seconds: float) -> bool:
        async with self.db.autocommit() as conn:
            cur = await conn.execute(
                "UPDATE conversations SET turn_expire_time = now() + make_interval(secs => %s) "
                "WHERE org = %s AND id = %s AND turn_holder = %s RETURNING id",
                (lease_seconds, org, conv_id, holder),
            )
            return await cur.fetchone() is not None

    async def release_turn(self, org: str, conv_id: str, holder: str) -> None:
        async with self.db.autocommit() as conn:
            await conn.execute(
                "UPDATE conversations SET turn_holder = NULL, turn_expire_time = NULL "
                "WHERE org = %s AND id = %s AND turn_holder = %s",
                (org, conv_id, holder),
            )
