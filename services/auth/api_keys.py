"""API keys: organization-owned secrets (only a keyed hash is stored), optional scopes and
expiry, revocation that the gateway honours at once. Lookups on the request path go through a
Redis cache (PostgreSQL behind it); revocation overwrites the cache entry, so it is never stale,
and announces it on Auth's changed channel, on which every Auth process (services/auth/mirror.py)
and every service holding Auth's verdict on the key (services/common/gateway_keys.py) drops it."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

from psycopg.errors import UniqueViolation
from redis.asyncio import Redis

from services.auth import crypto
from services.auth.errors import BadCredentials, Exhausted, NotFound, raise_violations
from services.auth.memberships import Memberships
from services.auth.mirror import MISSING, Mirror
from services.auth.principal import Principal
from services.auth.redis_guard import RedisGuard, RedisUnavailable
from services.auth.store import Store
from services.common.db import Row
from services.common.errors import FieldViolations
from services.common.gateway_jwt import API_KEY_ENTRY
from services.common.identity import Role, api_key_prefix

KNOWN_SCOPES = frozenset({"inference", "knowledge.read", "knowledge.write", "speech", "usage.read"})
MAX_ACTIVE_KEYS = 100
CACHE_TTL = 300  # seconds; revocation overwrites the entry
NEGATIVE_CACHE_TTL = 30


class ApiKeys:
    def __init__(self, store: Store, secrets: crypto.Secrets, redis: RedisGuard, mirror: Mirror,
                 memberships: Memberships, spawn: Callable[[Awaitable[Any], str], Any]) -> None:
        self.store = store
        self.secrets = secrets
        self.redis = redis
        self.mirror = mirror
        self.memberships = memberships
        self._spawn = spawn
        self._touched: dict[str, float] = {}

    async def create(self, principal: Principal, display_name: str, scopes: list[str],
                     expire_time: datetime | None, request_id: str) -> tuple[Row, str]:
        """The key and its secret (empty for a repeat of `request_id`: only the hash is kept)."""
        v = FieldViolations()
        v.check(len(display_name) <= 100, "api_key.display_name", "must be at most 100 characters")
        unknown = sorted(set(scopes) - KNOWN_SCOPES)
        v.check(not unknown, "api_key.scopes",
                f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_SCOPES))}")
        v.check(expire_time is None or expire_time > datetime.now(UTC), "api_key.expire_time",
                "must be in the future")
        raise_violations(v)
        await self.memberships.require_role(principal, Role.ADMIN, "creating API keys")
        new = crypto.generate_api_key()
        async with self.store.connection() as conn:
            if request_id:
                existing = await self.store.api_key_by_request(conn, principal.org_id, request_id)
                if existing is not None:
                    return existing, ""
            if await self.store.count_active_api_keys(conn, principal.org_id) >= MAX_ACTIVE_KEYS:
                raise Exhausted(f"at most {MAX_ACTIVE_KEYS} active API keys per organization",
                                "API_KEY_LIMIT")
            try:
                row = await self.store.insert_api_key(
                    conn, crypto.new_id("key_"), principal.org_id, new.prefix,
                    self.secrets.credential_hash(new.secret), display_name, sorted(set(scopes)),
                    expire_time, principal.subject, request_id or None)
            except UniqueViolation:  # prefix collision (32 random bits): ask for a retry
                raise Exhausted("key prefix collision, retry", "RETRY") from None
            if row is None:
                existing = await self.store.api_key_by_request(conn, principal.org_id, request_id)
                assert existing is not None
                return existing, ""
        return row, new.secret

    async def get(self, org_id: str, key_id: str) -> Row:
        async with self.store.connection() as conn:
            row = await self.store.get_api_key(conn, org_id, key_id)
        if row is None:
            raise NotFound("API key not found", "API_KEY_NOT_FOUND")
        return row

    async def list(self, org_id: str, show_inactive: bool, before: tuple[datetime, str] | None,
                   limit: int) -> tuple[list[Row], int]:
        async with self.store.connection() as conn:
            rows = await self.store.list_api_keys(conn, org_id, show_inactive, before, limit)
            total = await self.store.count_api_keys(conn, org_id, show_inactive)
        return rows, total

    async def revoke(self, principal: Principal, key_id: str) -> Row:
        await self.memberships.require_role(principal, Role.ADMIN, "revoking API keys")
        async with self.store.connection() as conn:
            row = await self.store.revoke_api_key(conn, principal.org_id, key_id)
        if row is None:
            raise NotFound("API key not found", "API_KEY_NOT_FOUND")
        # Overwrite (not delete) the cache entry: a concurrent check that read the row before the
        # revocation populates with SET NX, so it cannot resurrect the key for the TTL.
        if self.redis.cache is not None:
            key, value = self.redis.key(API_KEY_ENTRY, row["prefix"]), json.dumps(_cache_entry(row))

            async def overwrite(r: Redis) -> None:
                await r.set(key, value, ex=CACHE_TTL)
                await self.mirror.announce(r, key)

            await self.redis.write_surely(overwrite, "api-key-revocation", CACHE_TTL)
        return row

    async def authenticate(self, secret: str) -> Principal:
        """The principal a presented API key stands for, or BadCredentials."""
        prefix = api_key_prefix(secret)
        if prefix is None:
            raise BadCredentials("malformed API key", "API_KEY_INVALID")
        entry = await self._cached(prefix)
        if entry is None:
            async with self.store.connection() as conn:
                row = await self.store.api_key_by_prefix(conn, prefix)
            entry = _cache_entry(row) if row else {"missing": True}
            await self._cache_new(prefix, entry, CACHE_TTL if row else NEGATIVE_CACHE_TTL)
        if entry.get("missing") or not hmac.compare_digest(
            bytes.fromhex(entry["hash"]), self.secrets.credential_hash(secret)
        ):
            raise BadCredentials("invalid API key", "API_KEY_INVALID")
        if entry.get("revoked"):
            raise BadCredentials("API key revoked", "API_KEY_REVOKED")
        if entry.get("expire") is not None and entry["expire"] <= time.time():
            raise BadCredentials("API key expired", "API_KEY_EXPIRED")
        self._note_use(entry["id"])
        return Principal(org_id=entry["org"], subject=f"apiKeys/{entry['id']}", roles=("member",),
                         key_id=entry["id"], scopes=tuple(entry["scopes"]),
                         expire_time=entry.get("expire"))

    def _note_use(self, key_id: str) -> None:
        # last_use_time is approximate (at most one write per key per minute per replica).
        now = time.monotonic()
        if now - self._touched.get(key_id, -1e9) < 60:
            return
        self._touched[key_id] = now

        async def touch() -> None:
            async with self.store.connection() as conn:
                await self.store.touch_api_key(conn, key_id)

        self._spawn(touch(), "touch-api-key")

    async def _cached(self, prefix: str) -> dict[str, Any] | None:
        if not self.redis.usable:
            return None
        key = self.redis.key(API_KEY_ENTRY, prefix)
        held = self.mirror.get(key)
        if held is not MISSING:
            return cast(dict[str, Any], held)
        generation = self.mirror.generation()
        try:
            raw = await self.redis.run(lambda r: r.get(key))
        except RedisUnavailable:
            return None
        entry = json.loads(raw) if raw else None
        if entry is not None:
            self.mirror.put(key, entry, generation)
        return entry

    async def _cache_new(self, prefix: str, entry: dict[str, Any], ttl: int) -> None:
        if not self.redis.usable:
            return
        key, value = self.redis.key(API_KEY_ENTRY, prefix), json.dumps(entry)
        try:
            await self.redis.run(lambda r: r.set(key, value, ex=ttl, nx=True))
        except RedisUnavailable:
            return


def _cache_entry(row: Row) -> dict[str, Any]:
    expire = row["expire_time"]
    return {
        "id": row["id"],
        "org": row["org_id"],
        "hash": bytes(row["secret_hash"]).hex(),
        "scopes": list(row["scopes"]),
        "expire": expire.timestamp() if expire else None,
        "revoked": row["revoke_time"] is not None,
    }
