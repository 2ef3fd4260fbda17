"""Auth's SQL: the only module that touches the `auth` schema. The Store's methods take a
connection so the domain decides transaction boundaries (`async with store.connection() as conn`
commits)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from services.common.db import Database, Row

Conn = AsyncConnection[Any]


async def _one(conn: Conn, sql: str, params: tuple[Any, ...] = ()) -> Row | None:
    cur = await conn.execute(sql, params)
    return await cur.fetchone()


async def _all(conn: Conn, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
    cur = await conn.execute(sql, params)
    return list(await cur.fetchall())


def _org_rows(
    table: str, org_id: str, equal: dict[str, Any], condition: str
) -> tuple[str, list[Any]]:
    """`FROM table WHERE ...` of an organization's rows: `equal` filters on columns whose value
    is set, `condition` is extra SQL. Table, columns and condition are ours, never input."""
    sql = f" FROM {table} WHERE org_id = %s" + (f" AND {condition}" if condition else "")
    params: list[Any] = [org_id]
    for column, value in equal.items():
        if value:
            sql += f" AND {column} = %s"
            params.append(value)
    return sql, params


async def _org_page(
    conn: Conn, table: str, org_id: str, equal: dict[str, Any], cursor: tuple[datetime, str] | None,
    limit: int, newest_first: bool, condition: str = "",
) -> list[Row]:
    """One keyset page of an organization's rows (_org_rows) ordered by (create_time, id)."""
    where, params = _org_rows(table, org_id, equal, condition)
    sql = "SELECT *" + where
    if cursor:
        sql += f" AND (create_time, id) {'<' if newest_first else '>'} (%s, %s)"
        params.extend(cursor)
    order = "DESC" if newest_first else "ASC"
    sql += f" ORDER BY create_time {order}, id {order} LIMIT %s"
    params.append(limit)
    return await _all(conn, sql, tuple(params))


async def _org_count(
    conn: Conn, table: str, org_id: str, equal: dict[str, Any], condition: str = ""
) -> int:
    """How many of an organization's rows match (_org_rows)."""
    where, params = _org_rows(table, org_id, equal, condition)
    row = await _one(conn, "SELECT count(*) AS n" + where, tuple(params))
    return int(row["n"]) if row else 0


_ACTIVE_KEY = "revoke_time IS NULL AND (expire_time IS NULL OR expire_time > now())"


class Store:
    """Auth's SQL. Every method runs on the connection it is given, so the domain decides
    transaction boundaries: `async with store.connection() as conn` is one unit of work,
    committed when the block ends."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def connection(self) -> AbstractAsyncContextManager[Conn]:
        """A pooled connection; what runs on it commits together when the block ends."""
        return self.db.connection()

    def autocommit(self) -> AbstractAsyncContextManager[Conn]:
        """A pooled connection for one self-contained statement (a primary-key read): one round
        trip instead of three (BEGIN, the statement, COMMIT)."""
        return self.db.autocommit()

    # --- organizations, users, memberships ----------------------------------------------------

    async def insert_org(self, conn: Conn, org_id: str, display_name: str) -> Row:
        row = await _one(
            conn,
            "INSERT INTO organizations (id, display_name) VALUES (%s, %s) RETURNING *",
            (org_id, display_name),
        )
        assert row is not None
        return row

    async def get_org(self, conn: Conn, org_id: str) -> Row | None:
        return await _one(conn, "SELECT * FROM organizations WHERE id = %s", (org_id,))

    async def insert_user(
        self, conn: Conn, user_id: str, email: str, display_name: str, password_hash: str
    ) -> Row | None:
        """The new user, or None when the e-mail is taken."""
        return await _one(
            conn,
            "INSERT INTO users (id, email, display_name, password_hash) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (email) DO NOTHING RETURNING *",
            (user_id, email, display_name, password_hash),
        )

    async def user_by_email(self, conn: Conn, email: str) -> Row | None:
        return await _one(conn, "SELECT * FROM users WHERE email = %s", (email,))

    async def get_user(self, conn: Conn, user_id: str) -> Row | None:
        return await _one(conn, "SELECT * FROM users WHERE id = %s", (user_id,))

    async def insert_membership(
        self, conn: Conn, membership_id: str, org_id: str, user_id: str | None, email: str,
        role: str, state: str, inviter: str,
    ) -> Row | None:
        """The new membership, or None when the e-mail already has one in the org."""
        return await _one(
            conn,
            "INSERT INTO memberships (id, org_id, user_id, email, role, state, inviter) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (org_id, email) DO NOTHING RETURNING *",
            (membership_id, org_id, user_id, email, role, state, inviter),
        )

    async def activate_invitations(self, conn: Conn, user_id: str, email: str) -> None:
        await conn.execute(
            "UPDATE memberships SET user_id = %s, state = 'active', update_time = now(), "
            "version = version + 1 WHERE email = %s AND state = 'invited'",
            (user_id, email),
        )

    async def active_membership(self, conn: Conn, user_id: str, org_id: str | None) -> Row | None:
        """The user's membership in `org_id`, or their oldest active one when org_id is None."""
        if org_id is None:
            return await _one(
                conn,
                "SELECT * FROM memberships WHERE user_id = %s AND state = 'active' "
                "ORDER BY create_time, id LIMIT 1",
                (user_id,),
            )
        return await _one(
            conn,
            "SELECT * FROM memberships WHERE user_id = %s AND org_id = %s AND state = 'active'",
            (user_id, org_id),
        )

    async def get_membership(self, conn: Conn, org_id: str, membership_id: str) -> Row | None:
        return await _one(
            conn, "SELECT * FROM memberships WHERE org_id = %s AND id = %s", (org_id, membership_id)
        )

    async def membership_by_email(self, conn: Conn, org_id: str, email: str) -> Row | None:
        return await _one(
            conn, "SELECT * FROM memberships WHERE org_id = %s AND email = %s", (org_id, email)
        )


    async def list_memberships(
        self, conn: Conn, org_id: str, role: str | None, after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Row]:
        return await _org_page(conn, "memberships", org_id, {"role": role}, after, limit, False)

    async def count_memberships(self, conn: Conn, org_id: str, role: str | None) -> int:
        return await _org_count(conn, "memberships", org_id, {"role": role})

    async def count_owners(self, conn: Conn, org_id: str) -> int:
        return await _org_count(conn, "memberships", org_id, {"role": "owner", "state": "active"})

    async def lock_org(self, conn: Conn, org_id: str) -> None:
        # Serialises owner-count checks against concurrent role changes in the same org.
        await conn.execute("SELECT id FROM organizations WHERE id = %s FOR UPDATE", (org_id,))

    async def update_membership_role(
        self, conn: Conn, membership_id: str, role: str
    ) -> Row | None:
        return await _one(
            conn,
            "UPDATE memberships SET role = %s, update_time = now(), version = version + 1 "
            "WHERE id = %s RETURNING *",
            (role, membership_id),
        )

    async def delete_membership(self, conn: Conn, membership_id: str) -> None:
        await conn.execute("DELETE FROM memberships WHERE id = %s", (membership_id,))

    # --- API keys -----------------------------------------------------------------------------

    async def insert_api_key(
        self, conn: Conn, key_id: str, org_id: str, prefix: str, secret_hash: bytes,
        display_name: str, scopes: list[str], expire_time: datetime | None, creator: str,
        request_id: str | None,
    ) -> Row | None:
        """The new key, or None when (org, request_id) was already used."""
        return await _one(
            conn,
            "INSERT INTO api_keys (id, org_id, prefix, secret_hash, display_name, scopes, "
            "expire_time, creator, request_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (org_id, request_id) DO NOTHING RETURNING *",
            (key_id, org_id, prefix, secret_hash, display_name, scopes, expire_time, creator,
             request_id),
        )

    async def api_key_by_request(self, conn: Conn, org_id: str, request_id: str) -> Row | None:
        return await _one(
            conn, "SELECT * FROM api_keys WHERE org_id = %s AND request_id = %s",
            (org_id, request_id),
        )

    async def count_active_api_keys(self, conn: Conn, org_id: str) -> int:
        return await _org_count(conn, "api_keys", org_id, {}, _ACTIVE_KEY)

    async def get_api_key(self, conn: Conn, org_id: str, key_id: str) -> Row | None:
        return await _one(
            conn, "SELECT * FROM api_keys WHERE org_id = %s AND id = %s", (org_id, key_id)
        )

    async def api_key_by_prefix(self, conn: Conn, prefix: str) -> Row | None:
        return await _one(conn, "SELECT * FROM api_keys WHERE prefix = %s", (prefix,))


    async def list_api_keys(
        self, conn: Conn, org_id: str, show_inactive: bool, before: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Row]:
        return await _org_page(conn, "api_keys", org_id, {}, before, limit, True,
                               "" if show_inactive else _ACTIVE_KEY)

    async def count_api_keys(self, conn: Conn, org_id: str, show_inactive: bool) -> int:
        return await _org_count(conn, "api_keys", org_id, {},
                                "" if show_inactive else _ACTIVE_KEY)

    async def revoke_api_key(self, conn: Conn, org_id: str, key_id: str) -> Row | None:
        """Sets revoke_time once (a repeat keeps the first time) and returns the key."""
        return await _one(
            conn,
            "UPDATE api_keys SET revoke_time = COALESCE(revoke_time, now()) "
            "WHERE org_id = %s AND id = %s RETURNING *",
            (org_id, key_id),
        )

    async def touch_api_key(self, conn: Conn, key_id: str) -> None:
        await conn.execute(
            "UPDATE api_keys SET last_use_time = now() WHERE id = %s "
            "AND (last_use_time IS NULL OR last_use_time < now() - interval '1 minute')",
            (key_id,),
        )

    # --- refresh tokens -----------------------------------------------------------------------

    async def insert_family(self, conn: Conn, family_id: str, user_id: str, org_id: str) -> None:
        await conn.execute(
            "INSERT INTO refresh_families (id, user_id, org_id) VALUES (%s, %s, %s)",
            (family_id, user_id, org_id),
        )

    async def insert_refresh_token(
        self, conn: Conn, token_hash: bytes, family_id: str, expire_time: datetime
    ) -> None:
        await conn.execute(
            "INSERT INTO refresh_tokens (token_hash, family_id, expire_time) VALUES (%s, %s, %s)",
            (token_hash, family_id, expire_time),
        )

    async def lock_refresh_token(self, conn: Conn, token_hash: bytes) -> Row | None:
        """The token joined with its family, row-locked so two concurrent refreshes serialise."""
        return await _one(
            conn,
            "SELECT t.token_hash, t.family_id, t.expire_time, t.spent_time, f.user_id, f.org_id, "
            "f.revoke_time AS family_revoke_time FROM refresh_tokens t "
            "JOIN refresh_families f ON f.id = t.family_id WHERE t.token_hash = %s FOR UPDATE OF t",
            (token_hash,),
        )

    async def spend_refresh_token(self, conn: Conn, token_hash: bytes) -> None:
        await conn.execute(
            "UPDATE refresh_tokens SET spent_time = now() WHERE token_hash = %s", (token_hash,)
        )

    async def revoke_family(self, conn: Conn, family_id: str) -> None:
        await conn.execute(
            "UPDATE refresh_families SET revoke_time = COALESCE(revoke_time, now()) WHERE id = %s",
            (family_id,),
        )

    async def family_revoked(self, conn: Conn, family_id: str) -> bool:
        row = await _one(
            conn, "SELECT revoke_time FROM refresh_families WHERE id = %s", (family_id,)
        )
        return row is None or row["revoke_time"] is not None

    # --- signing keys -------------------------------------------------------------------------

    async def signing_keys(self, conn: Conn) -> list[Row]:
        """Every key still published (not retired, or retiring with retire_time in the future)."""
        return await _all(
            conn,
            "SELECT * FROM signing_keys WHERE state IN ('next', 'active') "
            "OR (state = 'retiring' AND retire_time > now()) "
            "ORDER BY CASE state WHEN 'active' THEN 0 WHEN 'next' THEN 1 ELSE 2 END, "
            "create_time DESC",
        )

    async def insert_signing_key(
        self, conn: Conn, kid: str, alg: str, state: str, private_key_enc: bytes,
        public_jwk: dict[str, str],
    ) -> Row:
        row = await _one(
            conn,
            "INSERT INTO signing_keys (kid, alg, state, private_key_enc, public_jwk, "
            "activate_time) "
            "VALUES (%s, %s, %s, %s, %s, CASE WHEN %s = 'active' THEN now() END) RETURNING *",
            (kid, alg, state, private_key_enc, Jsonb(public_jwk), state),
        )
        assert row is not None
        return row

    async def lock_signing_keys(self, conn: Conn) -> None:
        # One rotation / bootstrap at a time across all Auth replicas.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('auth.signing_keys'))")

    async def retire_active_key(self, conn: Conn, grace_seconds: float) -> None:
        await conn.execute(
            "UPDATE signing_keys SET state = 'retiring', "
            "retire_time = now() + make_interval(secs => %s) WHERE state = 'active'",
            (grace_seconds,),
        )

    async def activate_key(self, conn: Conn, kid: str) -> Row | None:
        return await _one(
            conn,
            "UPDATE signing_keys SET state = 'active', activate_time = now() WHERE kid = %s "
            "RETURNING *",
            (kid,),
        )

    async def mark_expired_keys_retired(self, conn: Conn) -> None:
        await conn.execute(
            "UPDATE signing_keys SET state = 'retired' "
            "WHERE state = 'retiring' AND retire_time <= now()"
        )

    # --- idempotency --------------------------------------------------------------------------

    async def idempotent_result(self, conn: Conn, scope: str, request_id: str) -> bytes | None:
        row = await _one(
            conn,
            "SELECT response FROM idempotency WHERE scope = %s AND request_id = %s "
            "AND create_time > now() - interval '1 day'",
            (scope, request_id),
        )
        return bytes(row["response"]) if row else None

    async def save_idempotent_result(
        self, conn: Conn, scope: str, request_id: str, response: bytes
    ) -> None:
        await conn.execute(
            "INSERT INTO idempotency (scope, request_id, response) VALUES (%s, %s, %s) "
            "ON CONFLICT (scope, request_id) DO NOTHING",
            (scope, request_id, response),
        )

    async def lock_idempotency(self, conn: Conn, scope: str, request_id: str) -> None:
        # Two concurrent retries of one request wait for each other instead of both applying.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"auth.idem:{scope}:{request_id}",)
        )

    async def prune(self, conn: Conn) -> None:
        """Drop what can no longer matter: idempotency records past their day, refresh tokens a
        week past expiry (reuse detection needs spent tokens only until they expire), and retired
        signing keys' private halves are kept (audit) but marked retired."""
        await conn.execute("DELETE FROM idempotency WHERE create_time < now() - interval '1 day'")
        await conn.execute(
            "DELETE FROM refresh_tokens WHERE expire_time < now() - interval '7 days'"
        )
        await self.mark_expired_keys_retired(conn)

    # --- audit log ----------------------------------------------------------------------------

    async def insert_audit_event(
        self, conn: Conn, event_id: str, org_id: str | None, action: str, actor: str, resource: str,
        peer_address: str, request_id: str, details: dict[str, str], event_key: str,
    ) -> bool:
        """Record one action; False when its event_key was recorded before."""
        row = await _one(
            conn,
            "INSERT INTO audit_events (id, org_id, action, actor, resource, peer_address, "
            "request_id, details, event_key) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (event_key) DO NOTHING RETURNING id",
            (event_id, org_id, action, actor, resource, peer_address, request_id, Jsonb(details),
             event_key),
        )
        return row is not None

    async def list_audit_events(
        self, conn: Conn, org_id: str, action: str | None, before: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Row]:
        return await _org_page(conn, "audit_events", org_id, {"action": action}, before, limit,
                               True)
