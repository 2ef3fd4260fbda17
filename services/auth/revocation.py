"""Revocation of access tokens at the gateway, within a second, without a database read.

Access tokens are self-contained JWTs (verified by Envoy's jwt_authn), so a token would keep
working until it expires after its session ended or its membership changed. Two kinds of Redis
entries close that gap, each kept one token lifetime (any token older has expired anyway):

- `auth:session-ended:{sid}`: the refresh family (session) a token was issued in has ended
  (logout, refresh-token reuse, membership ended). Tokens carry it as the `sid` claim.
- `auth:member:{org}:{user}`: the member's current role in the organization after a change,
  or "-" once the membership is gone. It overrides the (possibly stale) role in the token.

`admit` is the one check: a single MGET per JWT request (none while this process holds both
entries in its mirror, services/auth/mirror.py), also correct when Redis is down (it then asks
PostgreSQL). It serves ext_authz Check (the edge's JWT callers). JWT callers on the gRPC/JSON
routes skip Check: every service mirrors these entries whole from the same pub/sub channel
(services/common/gateway_jwt.py), so the key names and values here are a contract with it.
"""

from __future__ import annotations

from dataclasses import replace

from redis.asyncio import Redis

from services.auth.errors import BadCredentials
from services.auth.mirror import MISSING, Mirror
from services.auth.principal import Principal
from services.auth.redis_guard import RedisGuard, RedisUnavailable
from services.auth.store import Store
from services.common.gateway_jwt import GONE, MEMBER_ENTRY, SESSION_ENDED_ENTRY

SLACK_SECONDS = 60  # clock skew and replicas' cached signing keys


class Revocations:
    def __init__(self, store: Store, redis: RedisGuard, mirror: Mirror,
                 access_ttl_seconds: int) -> None:
        self.store = store
        self.redis = redis
        self.mirror = mirror
        self.ttl = access_ttl_seconds + SLACK_SECONDS

    def _session_key(self, session_id: str) -> str:
        return self.redis.key(SESSION_ENDED_ENTRY, session_id)

    def _member_key(self, org_id: str, user_id: str) -> str:
        return self.redis.key(MEMBER_ENTRY, org_id, user_id)

    async def sessions_ended(self, session_ids: list[str]) -> None:
        if self.redis.cache is None or not session_ids:
            return
        keys = [self._session_key(s) for s in session_ids]

        async def mark(r: Redis) -> None:
            async with r.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(key, "1", ex=self.ttl)
                await pipe.execute()
            await self.mirror.announce(r, *keys)

        await self.redis.write_surely(mark, "session-revocation", self.ttl)

    async def membership_changed(self, org_id: str, user_id: str, role: str | None) -> None:
        """Record the member's new role (None: no longer a member)."""
        if self.redis.cache is None:
            return
        key, value = self._member_key(org_id, user_id), role or GONE

        async def mark(r: Redis) -> None:
            await r.set(key, value, ex=self.ttl)
            await self.mirror.announce(r, key)

        await self.redis.write_surely(mark, "membership-change", self.ttl)

    async def admit(self, principal: Principal) -> Principal:
        """The JWT caller with its current role, or BadCredentials when its session ended or it
        is no longer a member. API-key principals pass unchanged (keys have their own cache)."""
        user_id = principal.user_id
        if user_id is None:
            return principal
        keys = [self._member_key(principal.org_id, user_id)] if self.redis.cache else []
        if principal.session_id and keys:
            keys.append(self._session_key(principal.session_id))
        try:
            if not keys:
                raise RedisUnavailable
            values = await self._values(keys)
            role = values[0].decode() if values[0] is not None else None
            ended = len(values) > 1 and values[1] is not None
        except RedisUnavailable:
            role, ended = await self._from_database(principal, user_id)
        if ended:
            raise BadCredentials("the session of this access token has ended", "TOKEN_REVOKED")
        if role == GONE:
            raise BadCredentials("no longer a member of this organization", "TOKEN_REVOKED")
        return principal if role is None else replace(principal, roles=(role,))

    async def _values(self, keys: list[str]) -> list[bytes | None]:
        held = [self.mirror.get(key) for key in keys]
        if MISSING not in held:
            return held
        generation = self.mirror.generation()
        values: list[bytes | None] = await self.redis.run(lambda r: r.mget(keys))
        for key, value in zip(keys, values, strict=True):
            self.mirror.put(key, value, generation)
        return values

    async def _from_database(self, principal: Principal, user_id: str) -> tuple[str, bool]:
        async with self.store.connection() as conn:
            membership = await self.store.active_membership(conn, user_id, principal.org_id)
            ended = bool(principal.session_id) and await self.store.family_revoked(
                conn, principal.session_id or "")
        return (membership["role"] if membership else GONE), ended
