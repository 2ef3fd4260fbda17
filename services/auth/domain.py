"""Auth's domain, assembled from one module per concern:

- signing_keys.py  JWT signing keys, JWKS, rotation
- throttle.py      login throttling (password guessing)
- sessions.py      sign-up, login, refresh-token families, logout
- memberships.py   users, organizations, memberships and roles
- api_keys.py      API keys and their request-path cache
- revocation.py    ended sessions and membership changes, enforced at the gateway within 1 s
- audit.py         the audit log of every service's security-relevant actions
- redis_guard.py   Redis on the request path (timeouts, fallback, surely-applied writes)
- mirror.py        in-process copies of the entries Check reads, invalidated via pub/sub

All are plain Python and raise the domain errors of errors.py, which maps them to gRPC status
in one place. AuthDomain wires them together and holds the actions that span several concerns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from services.auth import crypto
from services.auth.api_keys import ApiKeys
from services.auth.audit import AuditLog
from services.auth.errors import Forbidden
from services.auth.memberships import Memberships
from services.auth.mirror import Mirror
from services.auth.principal import ROLE_NAMES, Principal
from services.auth.redis_guard import RedisGuard
from services.auth.revocation import Revocations
from services.auth.sessions import Sessions
from services.auth.signing_keys import SigningKeys
from services.auth.store import Store
from services.auth.throttle import LoginThrottle
from services.common.cache import ServiceCache
from services.common.db import Database, Row
from services.common.identity import Role

log = logging.getLogger("aimesh.auth")


class AuthDomain:
    def __init__(
        self, db: Database, cache: ServiceCache | None, master_secret: str,
        access_ttl_seconds: int, platform_admins: frozenset[str],
        spawn: Callable[[Awaitable[Any], str], Any],
    ) -> None:
        self.store = Store(db)
        self.platform_admins = platform_admins
        secrets = crypto.Secrets(master_secret)
        self.redis = RedisGuard(cache, spawn)
        self.mirror = Mirror(self.redis)
        if cache is not None:
            spawn(self.mirror.listen(), "auth-mirror-invalidations")
        self.signing_keys = SigningKeys(self.store, secrets, access_ttl_seconds)
        self.memberships = Memberships(self.store)
        self.revocations = Revocations(self.store, self.redis, self.mirror, access_ttl_seconds)
        self.sessions = Sessions(self.store, secrets, self.signing_keys,
                                 LoginThrottle(self.redis), self.revocations, access_ttl_seconds,
                                 platform_admins)
        self.api_keys = ApiKeys(self.store, secrets, self.redis, self.mirror, self.memberships,
                                spawn)
        self.audit = AuditLog(self.store)

    async def housekeeping(self, every_seconds: float = 3600.0) -> None:
        """Background pruning for the life of the server (idempotency records, old tokens)."""
        while True:
            try:
                async with self.store.connection() as conn:
                    await self.store.prune(conn)
            except Exception:
                log.exception("auth housekeeping failed")
            await asyncio.sleep(every_seconds)

    async def rotate_signing_key(self, user_id: str, grace: timedelta | None,
                                 request_id: str) -> Row:
        user = await self.memberships.get_user(user_id)
        if str(user["email"]).lower() not in self.platform_admins:
            raise Forbidden("rotating signing keys requires a platform admin",
                            "PLATFORM_ADMIN_REQUIRED")
        grace = self.signing_keys.grace_for(grace)
        async with self.store.connection() as conn:
            row, _ = await self.signing_keys.rotate(conn, grace, request_id)
        return row

    # --- membership changes: take effect on existing access tokens at once -------------------

    async def create_membership(self, principal: Principal, email: str, role: Role,
                                request_id: str) -> Row:
        row = await self.memberships.create(principal, email, role, request_id)
        if row["user_id"] is not None and row["state"] == "active":
            await self.revocations.membership_changed(row["org_id"], row["user_id"], row["role"])
        return row

    async def update_membership(self, principal: Principal, membership_id: str, role: Role,
                                etag: str) -> Row:
        row = await self.memberships.update_role(principal, membership_id, role, etag)
        if row["user_id"] is not None:
            await self.revocations.membership_changed(row["org_id"], row["user_id"],
                                                      ROLE_NAMES[role])
        return row

    async def delete_membership(self, principal: Principal, membership_id: str,
                                allow_missing: bool) -> None:
        row = await self.memberships.delete(principal, membership_id, allow_missing)
        if row is not None and row["user_id"] is not None:
            await self.revocations.membership_changed(row["org_id"], row["user_id"], None)
