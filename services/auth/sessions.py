"""Sessions: sign-up, login, and refresh-token families. Each login starts a family; every
refresh spends its token and issues the next in the same family; replaying a spent token ends
the whole family (assumed theft); logout ends it too."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from services.auth import crypto
from services.auth.errors import AlreadyExists, BadCredentials, Forbidden, invalid, raise_violations
from services.auth.memberships import EMAIL
from services.auth.revocation import Revocations
from services.auth.signing_keys import SigningKeys
from services.auth.store import Conn, Store
from services.auth.throttle import LoginThrottle
from services.common.errors import FieldViolations
from services.common.identity import PLATFORM_ADMIN_SCOPE
from services.common.names import resource

USER = resource("auth.aimesh.dev/User")
REFRESH_TTL = timedelta(days=30)


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Tokens:
    access_token: str
    access_expire: int  # epoch seconds
    expires_in: int
    refresh_token: str
    refresh_expire: float  # epoch seconds
    user_id: str
    org_id: str


@dataclass(frozen=True)
class Ended:
    """A session that just ended: its refresh family, user and organization."""

    family_id: str
    user_id: str
    org_id: str


class Sessions:
    def __init__(self, store: Store, secrets: crypto.Secrets, keys: SigningKeys,
                 throttle: LoginThrottle, revocations: Revocations, access_ttl_seconds: int,
                 platform_admins: frozenset[str]) -> None:
        self.store = store
        self.secrets = secrets
        self.keys = keys
        self.throttle = throttle
        self.revocations = revocations
        self.access_ttl = access_ttl_seconds
        self.platform_admins = platform_admins

    async def _issue(self, conn: Conn, user_id: str, org_id: str, role: str,
                     family_id: str | None = None) -> Tokens:
        key = await self.keys.active()
        scopes: list[str] = []
        if self.platform_admins:
            user = await self.store.get_user(conn, user_id)
            if user is not None and str(user["email"]).lower() in self.platform_admins:
                scopes.append(PLATFORM_ADMIN_SCOPE)
        if family_id is None:
            family_id = crypto.new_id("rf_")
            await self.store.insert_family(conn, family_id, user_id, org_id)
        access, exp = crypto.sign_access_token(key.private_pem, key.kid, user_id, org_id, [role],
                                               self.access_ttl, scopes=scopes,
                                               session_id=family_id)
        refresh = crypto.generate_refresh_token()
        refresh_expire = now_utc() + REFRESH_TTL
        await self.store.insert_refresh_token(conn, self.secrets.credential_hash(refresh),
                                              family_id, refresh_expire)
        return Tokens(access, exp, self.access_ttl, refresh, refresh_expire.timestamp(), user_id,
                      org_id)

    def _seal(self, tokens: Tokens) -> bytes:
        # Idempotent replays hold live credentials: stored encrypted, never in clear.
        return self.secrets.encrypt(json.dumps(asdict(tokens)).encode(), b"idempotency")

    def _unseal(self, blob: bytes) -> Tokens:
        return Tokens(**json.loads(self.secrets.decrypt(blob, b"idempotency")))

    async def sign_up(self, email: str, password: str, display_name: str, org_name: str,
                      request_id: str) -> Tokens:
        email = email.strip().lower()
        v = FieldViolations()
        v.check(bool(EMAIL.match(email)) and len(email) <= 254, "email",
                "must be an e-mail address")
        v.check(12 <= len(password) <= 256, "password", "must be 12-256 characters")
        v.check(len(display_name) <= 100, "display_name", "must be at most 100 characters")
        v.check(1 <= len(org_name.strip()) <= 100, "organization_display_name",
                "must be 1-100 characters")
        raise_violations(v)
        password_hash = await asyncio.to_thread(crypto.hash_password, password)
        async with self.store.connection() as conn:
            if request_id:
                await self.store.lock_idempotency(conn, "signup:" + email, request_id)
                done = await self.store.idempotent_result(conn, "signup:" + email, request_id)
                if done is not None:
                    return self._unseal(done)
            user_id, org_id = crypto.new_id("u_"), crypto.new_id("o_")
            user = await self.store.insert_user(conn, user_id, email, display_name.strip(),
                                           password_hash)
            if user is None:
                raise AlreadyExists("that e-mail is already registered", "EMAIL_TAKEN")
            await self.store.insert_org(conn, org_id, org_name.strip())
            await self.store.insert_membership(conn, crypto.new_id("m_"), org_id, user_id, email,
                                          "owner", "active", USER.format(user_id))
            await self.store.activate_invitations(conn, user_id, email)
            tokens = await self._issue(conn, user_id, org_id, "owner")
            if request_id:
                await self.store.save_idempotent_result(conn, "signup:" + email, request_id,
                                                   self._seal(tokens))
        return tokens

    async def login(self, email: str, password: str, org_id: str | None,
                    request_id: str) -> Tokens:
        email = email.strip().lower()
        v = FieldViolations()
        v.check(bool(email), "email", "is required")
        v.check(bool(password), "password", "is required")
        raise_violations(v)
        await self.throttle.check(email)
        async with self.store.connection() as conn:
            user = await self.store.user_by_email(conn, email)
        if user is None:
            await asyncio.to_thread(crypto.burn_password_check, password)
            await self.throttle.failed(email)
            raise BadCredentials("wrong e-mail or password", "INVALID_CREDENTIALS")
        if not await asyncio.to_thread(crypto.verify_password, user["password_hash"], password):
            await self.throttle.failed(email)
            raise BadCredentials("wrong e-mail or password", "INVALID_CREDENTIALS")
        async with self.store.connection() as conn:
            scope = f"login:{user['id']}"
            if request_id:
                await self.store.lock_idempotency(conn, scope, request_id)
                done = await self.store.idempotent_result(conn, scope, request_id)
                if done is not None:
                    return self._unseal(done)
            await self.store.activate_invitations(conn, user["id"], email)
            membership = await self.store.active_membership(conn, user["id"], org_id)
            if membership is None:
                if org_id is None:
                    raise Forbidden("the user belongs to no organization", "NO_MEMBERSHIP")
                raise Forbidden("the user is not a member of that organization", "NOT_A_MEMBER")
            tokens = await self._issue(conn, user["id"], membership["org_id"], membership["role"])
            if request_id:
                await self.store.save_idempotent_result(conn, scope, request_id, self._seal(tokens))
        return tokens

    async def refresh(self, refresh_token: str, request_id: str) -> Tokens:
        if not refresh_token:
            raise invalid("refresh_token", "is required")
        token_hash = self.secrets.credential_hash(refresh_token)
        scope = "refresh:" + token_hash.hex()
        async with self.store.connection() as conn:
            if request_id:
                await self.store.lock_idempotency(conn, scope, request_id)
                done = await self.store.idempotent_result(conn, scope, request_id)
                if done is not None:
                    return self._unseal(done)
            row = await self.store.lock_refresh_token(conn, token_hash)
            if row is None:
                raise BadCredentials("unknown refresh token", "REFRESH_TOKEN_INVALID")
            if row["family_revoke_time"] is not None:
                raise BadCredentials("refresh token revoked", "REFRESH_TOKEN_REVOKED")
            if row["spent_time"] is None and row["expire_time"] <= now_utc():
                raise BadCredentials("refresh token expired", "REFRESH_TOKEN_EXPIRED")
            if row["spent_time"] is None:
                membership = await self.store.active_membership(conn, row["user_id"], row["org_id"])
                if membership is None:
                    await self.store.revoke_family(conn, row["family_id"])
                    raise BadCredentials("membership ended", "REFRESH_TOKEN_REVOKED")
                await self.store.spend_refresh_token(conn, token_hash)
                tokens = await self._issue(conn, row["user_id"], row["org_id"],
                                           membership["role"], family_id=row["family_id"])
                if request_id:
                    await self.store.save_idempotent_result(conn, scope, request_id,
                                                       self._seal(tokens))
                return tokens
            # Someone replayed a spent token: assume theft and end the whole family, including
            # the access tokens issued in it.
            await self.store.revoke_family(conn, row["family_id"])
        await self.revocations.sessions_ended([row["family_id"]])
        # Raised after the commit so the family revocation sticks.
        raise BadCredentials("refresh token already used; the session was revoked",
                             "REFRESH_TOKEN_REUSED")

    async def logout(self, refresh_token: str) -> Ended | None:
        """End the session `refresh_token` belongs to (None: no such session)."""
        if not refresh_token:
            raise invalid("refresh_token", "is required")
        token_hash = self.secrets.credential_hash(refresh_token)
        async with self.store.connection() as conn:
            row = await self.store.lock_refresh_token(conn, token_hash)
            if row is None:
                return None
            await self.store.revoke_family(conn, row["family_id"])
        await self.revocations.sessions_ended([row["family_id"]])
        return Ended(row["family_id"], row["user_id"], row["org_id"])
