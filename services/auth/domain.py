"""Auth's domain logic: sign-up/login, refresh-token families, signing keys, API keys,
memberships and the credential check behind Envoy's ext_authz. Plain Python (no gRPC types);
failures are ServiceErrors from services/common/errors.py."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from psycopg.errors import UniqueViolation
from redis.exceptions import RedisError

from services.auth import crypto, store
from services.common.cache import ServiceCache
from services.common.db import Database
from services.common.errors import (
    FieldViolations,
    ServiceError,
    already_exists,
    failed_precondition,
    not_found,
    permission_denied,
    resource_exhausted,
    unauthenticated,
)
from services.common.identity import PLATFORM_ADMIN_SCOPE, Role

log = logging.getLogger("aimesh.auth")

ROLE_NAMES = {Role.OWNER: "owner", Role.ADMIN: "admin", Role.MEMBER: "member", Role.VIEWER: "viewer"}
ROLE_BY_NAME = {v: k for k, v in ROLE_NAMES.items()}
KNOWN_SCOPES = frozenset({"inference", "knowledge.read", "knowledge.write", "speech", "usage.read"})
MAX_ACTIVE_KEYS = 100
REFRESH_TTL = timedelta(days=30)
API_KEY_CACHE_TTL = 300  # seconds; revocation overwrites the entry, so it is never stale
NEGATIVE_CACHE_TTL = 30
REDIS_TIMEOUT = 0.25  # a slow Redis must not slow every request: fall back to PostgreSQL
REDIS_RETRY_AFTER = 1.0
SIGNING_KEY_REFRESH = 30.0
LOGIN_FAILURES_ALLOWED = 10
LOGIN_FAILURE_WINDOW = 900  # seconds
MAX_GRACE = timedelta(days=7)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


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
class Principal:
    """Who a credential belongs to, as the gateway forwards it."""

    org_id: str
    subject: str  # "users/<id>" or "apiKeys/<id>"
    roles: tuple[str, ...]
    key_id: str | None = None
    scopes: tuple[str, ...] = ()


@dataclass
class _ActiveKey:
    kid: str
    private_pem: bytes
    loaded_at: float = field(default_factory=time.monotonic)


class AuthDomain:
    def __init__(
        self, db: Database, cache: ServiceCache | None, master_secret: str,
        access_ttl_seconds: int, platform_admins: frozenset[str],
        spawn: Callable[[Awaitable[Any], str], Any],
    ) -> None:
        self.db = db
        self.cache = cache
        self.secrets = crypto.Secrets(master_secret)
        self.access_ttl = access_ttl_seconds
        self.platform_admins = platform_admins
        self._spawn = spawn
        self._active: _ActiveKey | None = None
        self._key_lock = asyncio.Lock()
        self._redis_down_until = 0.0
        self._touched: dict[str, float] = {}

    async def housekeeping(self, every_seconds: float = 3600.0) -> None:
        """Background pruning for the life of the server (idempotency records, old tokens)."""
        while True:
            try:
                async with self.db.connection() as conn:
                    await store.prune(conn)
            except Exception:
                log.exception("auth housekeeping failed")
            await asyncio.sleep(every_seconds)

    # --- tokens ----------------------------------------------------------------------------

    async def _signing_key(self) -> _ActiveKey:
        active = self._active
        if active and time.monotonic() - active.loaded_at < SIGNING_KEY_REFRESH:
            return active
        async with self._key_lock:
            if self._active and time.monotonic() - self._active.loaded_at < SIGNING_KEY_REFRESH:
                return self._active
            async with self.db.connection() as conn:
                rows = await store.signing_keys(conn)
                row = next((r for r in rows if r["state"] == "active"), None)
                if row is None:
                    row = await self._bootstrap_keys(conn)
            pem = self.secrets.decrypt(bytes(row["private_key_enc"]), row["kid"].encode())
            self._active = _ActiveKey(row["kid"], pem)
            return self._active

    async def _bootstrap_keys(self, conn: store.Conn) -> store.Row:
        await store.lock_signing_keys(conn)
        rows = await store.signing_keys(conn)
        existing = next((r for r in rows if r["state"] == "active"), None)
        if existing is not None:
            return existing
        active = await self._new_key(conn, "active")
        await self._new_key(conn, "next")
        return active

    async def _new_key(self, conn: store.Conn, state: str) -> store.Row:
        pair = await asyncio.to_thread(crypto.generate_signing_key)
        blob = self.secrets.encrypt(pair.private_pem, pair.kid.encode())
        return await store.insert_signing_key(conn, pair.kid, crypto.JWT_ALG, state, blob,
                                              pair.public_jwk)

    async def jwks(self) -> list[dict[str, str]]:
        await self._signing_key()  # make sure a key exists before the first JWKS fetch
        async with self.db.connection() as conn:
            await store.mark_expired_keys_retired(conn)
            rows = await store.signing_keys(conn)
        return [dict(r["public_jwk"]) for r in rows]

    async def rotate_signing_key(self, caller_email: str, grace: timedelta | None,
                                 request_id: str) -> store.Row:
        if caller_email not in self.platform_admins:
            raise permission_denied("rotating signing keys requires a platform admin",
                                    reason="PLATFORM_ADMIN_REQUIRED")
        minimum = timedelta(seconds=self.access_ttl)
        grace = minimum if grace is None else grace
        v = FieldViolations()
        v.check(grace >= timedelta(0), "previous_key_grace", "must not be negative")
        v.check(grace <= MAX_GRACE, "previous_key_grace", "must be at most 7 days")
        v.raise_if_any()
        # Tokens signed by the old key must keep verifying until they expire, including those
        # other replicas sign until their cached active key refreshes, plus clock skew.
        grace = max(grace, minimum + timedelta(seconds=SIGNING_KEY_REFRESH + 60))
        async with self.db.connection() as conn:
            await store.lock_signing_keys(conn)
            if request_id:
                done = await store.idempotent_result(conn, "rotate", request_id)
                if done is not None:
                    kid = done.decode()
                    rows = await store.signing_keys(conn)
                    match = next((r for r in rows if r["kid"] == kid), None)
                    if match is not None:
                        return match
            rows = await store.signing_keys(conn)
            nxt = next((r for r in rows if r["state"] == "next"), None)
            await store.retire_active_key(conn, grace.total_seconds())
            if nxt is not None:
                row = await store.activate_key(conn, nxt["kid"])
                assert row is not None
            else:
                row = await self._new_key(conn, "active")
            # The following key is published now, so gateways' cached JWKS know it in advance.
            await self._new_key(conn, "next")
            if request_id:
                await store.save_idempotent_result(conn, "rotate", request_id, row["kid"].encode())
        self._active = None
        return row

    async def _issue(self, conn: store.Conn, user_id: str, org_id: str, role: str,
                     family_id: str | None = None) -> Tokens:
        key = await self._signing_key()
        scopes: list[str] = []
        if self.platform_admins:
            user = await store.get_user(conn, user_id)
            if user is not None and str(user["email"]).lower() in self.platform_admins:
                scopes.append(PLATFORM_ADMIN_SCOPE)
        access, exp = crypto.sign_access_token(key.private_pem, key.kid, user_id, org_id, [role],
                                               self.access_ttl, scopes=scopes)
        if family_id is None:
            family_id = crypto.new_id("rf_")
            await store.insert_family(conn, family_id, user_id, org_id)
        refresh = crypto.generate_refresh_token()
        refresh_expire = now_utc() + REFRESH_TTL
        await store.insert_refresh_token(conn, self.secrets.credential_hash(refresh), family_id,
                                         refresh_expire)
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
        v.check(bool(_EMAIL.match(email)) and len(email) <= 254, "email",
                "must be an e-mail address")
        v.check(12 <= len(password) <= 256, "password", "must be 12-256 characters")
        v.check(len(display_name) <= 100, "display_name", "must be at most 100 characters")
        v.check(1 <= len(org_name.strip()) <= 100, "organization_display_name",
                "must be 1-100 characters")
        v.raise_if_any()
        password_hash = await asyncio.to_thread(crypto.hash_password, password)
        async with self.db.connection() as conn:
            if request_id:
                await store.lock_idempotency(conn, "signup:" + email, request_id)
                done = await store.idempotent_result(conn, "signup:" + email, request_id)
                if done is not None:
                    return self._unseal(done)
            user_id, org_id = crypto.new_id("u_"), crypto.new_id("o_")
            user = await store.insert_user(conn, user_id, email, display_name.strip(),
                                           password_hash)
            if user is None:
                raise already_exists("that e-mail is already registered", reason="EMAIL_TAKEN")
            await store.insert_org(conn, org_id, org_name.strip())
            await store.insert_membership(conn, crypto.new_id("m_"), org_id, user_id, email,
                                          "owner", "active", f"users/{user_id}")
            await store.activate_invitations(conn, user_id, email)
            tokens = await self._issue(conn, user_id, org_id, "owner")
            if request_id:
                await store.save_idempotent_result(conn, "signup:" + email, request_id,
                                                   self._seal(tokens))
        return tokens

    async def login(self, email: str, password: str, org_id: str | None,
                    request_id: str) -> Tokens:
        email = email.strip().lower()
        v = FieldViolations()
        v.check(bool(email), "email", "is required")
        v.check(bool(password), "password", "is required")
        v.raise_if_any()
        await self._check_login_throttle(email)
        async with self.db.connection() as conn:
            user = await store.user_by_email(conn, email)
        if user is None:
            await asyncio.to_thread(crypto.burn_password_check, password)
            await self._login_failed(email)
            raise unauthenticated("wrong e-mail or password", reason="INVALID_CREDENTIALS")
        if not await asyncio.to_thread(crypto.verify_password, user["password_hash"], password):
            await self._login_failed(email)
            raise unauthenticated("wrong e-mail or password", reason="INVALID_CREDENTIALS")
        async with self.db.connection() as conn:
            scope = f"login:{user['id']}"
            if request_id:
                await store.lock_idempotency(conn, scope, request_id)
                done = await store.idempotent_result(conn, scope, request_id)
                if done is not None:
                    return self._unseal(done)
            await store.activate_invitations(conn, user["id"], email)
            membership = await store.active_membership(conn, user["id"], org_id)
            if membership is None:
                if org_id is None:
                    raise permission_denied("the user belongs to no organization",
                                            reason="NO_MEMBERSHIP")
                raise permission_denied("the user is not a member of that organization",
                                        reason="NOT_A_MEMBER")
            tokens = await self._issue(conn, user["id"], membership["org_id"], membership["role"])
            if request_id:
                await store.save_idempotent_result(conn, scope, request_id, self._seal(tokens))
        return tokens

    # Password guessing: after LOGIN_FAILURES_ALLOWED failures for one e-mail within the window,
    # further attempts are refused until it passes. Counted in Redis (shared by replicas); without
    # Redis the throttle is skipped rather than blocking every login.
    async def _check_login_throttle(self, email: str) -> None:
        if self.cache is None or time.monotonic() < self._redis_down_until:
            return
        key = self.cache.key("login-fail", email)
        try:
            failures, ttl = await asyncio.wait_for(asyncio.gather(
                self.cache.redis.get(key), self.cache.redis.ttl(key)), REDIS_TIMEOUT)
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_failed(exc)
            return
        if failures is not None and int(failures) >= LOGIN_FAILURES_ALLOWED:
            raise resource_exhausted(
                "too many failed logins for this e-mail; try again later",
                reason="LOGIN_THROTTLED", retry_after_seconds=float(max(ttl, 1)))

    async def _login_failed(self, email: str) -> None:
        if self.cache is None or time.monotonic() < self._redis_down_until:
            return
        key = self.cache.key("login-fail", email)
        try:
            async with self.cache.redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, LOGIN_FAILURE_WINDOW, nx=True)
                await asyncio.wait_for(pipe.execute(), REDIS_TIMEOUT)
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_failed(exc)

    async def refresh(self, refresh_token: str, request_id: str) -> Tokens:
        if not refresh_token:
            _one_violation("refresh_token", "is required").raise_if_any()
        token_hash = self.secrets.credential_hash(refresh_token)
        scope = "refresh:" + token_hash.hex()
        reused = False
        async with self.db.connection() as conn:
            if request_id:
                await store.lock_idempotency(conn, scope, request_id)
                done = await store.idempotent_result(conn, scope, request_id)
                if done is not None:
                    return self._unseal(done)
            row = await store.lock_refresh_token(conn, token_hash)
            if row is None:
                raise unauthenticated("unknown refresh token", reason="REFRESH_TOKEN_INVALID")
            if row["family_revoke_time"] is not None:
                raise unauthenticated("refresh token revoked", reason="REFRESH_TOKEN_REVOKED")
            if row["spent_time"] is not None:
                # Someone replayed a spent token: assume theft and end the whole family.
                await store.revoke_family(conn, row["family_id"])
                reused = True
            elif row["expire_time"] <= now_utc():
                raise unauthenticated("refresh token expired", reason="REFRESH_TOKEN_EXPIRED")
            else:
                membership = await store.active_membership(conn, row["user_id"], row["org_id"])
                if membership is None:
                    await store.revoke_family(conn, row["family_id"])
                    raise unauthenticated("membership ended", reason="REFRESH_TOKEN_REVOKED")
                await store.spend_refresh_token(conn, token_hash)
                tokens = await self._issue(conn, row["user_id"], row["org_id"],
                                           membership["role"], family_id=row["family_id"])
                if request_id:
                    await store.save_idempotent_result(conn, scope, request_id,
                                                       self._seal(tokens))
                return tokens
        # Raised after the commit so the family revocation sticks.
        assert reused
        raise unauthenticated("refresh token already used; the session was revoked",
                              reason="REFRESH_TOKEN_REUSED")

    async def logout(self, refresh_token: str) -> None:
        if not refresh_token:
            _one_violation("refresh_token", "is required").raise_if_any()
        token_hash = self.secrets.credential_hash(refresh_token)
        async with self.db.connection() as conn:
            row = await store.lock_refresh_token(conn, token_hash)
            if row is not None:
                await store.revoke_family(conn, row["family_id"])

    # --- users, organizations, memberships -------------------------------------------------

    async def get_user(self, user_id: str) -> store.Row:
        async with self.db.connection() as conn:
            user = await store.get_user(conn, user_id)
        if user is None:
            raise not_found("user not found", reason="USER_NOT_FOUND")
        return user

    async def get_org(self, org_id: str) -> store.Row:
        async with self.db.connection() as conn:
            org = await store.get_org(conn, org_id)
        if org is None:
            raise not_found("organization not found", reason="ORGANIZATION_NOT_FOUND")
        return org

    async def effective_role(self, principal: Principal) -> Role:
        """The caller's current role: from the database for users (a token's roles may be up to
        one access-token lifetime old), MEMBER for API keys (as documented on ApiKey.scopes)."""
        if principal.subject.startswith("users/"):
            async with self.db.connection() as conn:
                row = await store.active_membership(conn, principal.subject[6:], principal.org_id)
            if row is None:
                raise permission_denied("no longer a member of this organization",
                                        reason="NOT_A_MEMBER")
            return ROLE_BY_NAME[row["role"]]
        return Role.MEMBER

    async def require_role(self, principal: Principal, minimum: Role, action: str) -> Role:
        role = await self.effective_role(principal)
        if role < minimum:
            raise permission_denied(f"{action} requires the {ROLE_NAMES[minimum]} role or higher",
                                    reason="ROLE_REQUIRED",
                                    metadata={"required_role": minimum.name})
        return role

    async def list_memberships(self, org_id: str, role: str | None,
                               after: tuple[datetime, str] | None, limit: int
                               ) -> tuple[list[store.Row], int]:
        async with self.db.connection() as conn:
            rows = await store.list_memberships(conn, org_id, role, after, limit)
            total = await store.count_memberships(conn, org_id, role)
        return rows, total

    async def create_membership(self, principal: Principal, email: str, role: Role,
                                request_id: str) -> store.Row:
        email = email.strip().lower()
        v = FieldViolations()
        v.check(bool(_EMAIL.match(email)), "membership.email", "must be an e-mail address")
        v.raise_if_any()
        caller_role = await self.require_role(principal, Role.ADMIN, "inviting members")
        if role == Role.OWNER and caller_role < Role.OWNER:
            raise permission_denied("only an owner may grant the owner role",
                                    reason="ROLE_REQUIRED", metadata={"required_role": "OWNER"})
        async with self.db.connection() as conn:
            user = await store.user_by_email(conn, email)
            row = await store.insert_membership(
                conn, crypto.new_id("m_"), principal.org_id, user["id"] if user else None, email,
                ROLE_NAMES[role], "active" if user else "invited", principal.subject)
            if row is None:
                existing = await conn.execute(
                    "SELECT * FROM memberships WHERE org_id = %s AND email = %s",
                    (principal.org_id, email))
                found = await existing.fetchone()
                if request_id and found and found["inviter"] == principal.subject:
                    return found  # type: ignore[no-any-return]
                raise already_exists("that e-mail already has a membership",
                                     reason="MEMBERSHIP_EXISTS")
        return row

    async def update_membership(self, principal: Principal, membership_id: str, role: Role,
                                etag: str) -> store.Row:
        caller_role = await self.require_role(principal, Role.ADMIN, "changing roles")
        async with self.db.connection() as conn:
            await store.lock_org(conn, principal.org_id)
            row = await store.get_membership(conn, principal.org_id, membership_id)
            if row is None:
                raise not_found("membership not found", reason="MEMBERSHIP_NOT_FOUND")
            if etag and etag != str(row["version"]):
                raise ServiceError(grpc.StatusCode.ABORTED, "the membership changed; re-read it",
                                   reason="ETAG_MISMATCH")
            if (role == Role.OWNER or row["role"] == "owner") and caller_role < Role.OWNER:
                raise permission_denied("only an owner may grant or remove the owner role",
                                        reason="ROLE_REQUIRED",
                                        metadata={"required_role": "OWNER"})
            if row["role"] == "owner" and role != Role.OWNER and row["state"] == "active" and \
                    await store.count_owners(conn, principal.org_id) <= 1:
                raise failed_precondition("the organization would have no owner",
                                          reason="LAST_OWNER")
            updated = await store.update_membership_role(conn, membership_id, ROLE_NAMES[role])
            assert updated is not None
        return updated

    async def delete_membership(self, principal: Principal, membership_id: str,
                                allow_missing: bool) -> None:
        async with self.db.connection() as conn:
            await store.lock_org(conn, principal.org_id)
            row = await store.get_membership(conn, principal.org_id, membership_id)
            if row is None:
                if allow_missing:
                    return
                raise not_found("membership not found", reason="MEMBERSHIP_NOT_FOUND")
            self_delete = row["user_id"] is not None and principal.subject == f"users/{row['user_id']}"
            if not self_delete:
                caller_role = await self.require_role(principal, Role.ADMIN, "removing members")
                if row["role"] == "owner" and caller_role < Role.OWNER:
                    raise permission_denied("only an owner may remove an owner",
                                            reason="ROLE_REQUIRED",
                                            metadata={"required_role": "OWNER"})
            if row["role"] == "owner" and row["state"] == "active" and \
                    await store.count_owners(conn, principal.org_id) <= 1:
                raise failed_precondition("the organization would have no owner",
                                          reason="LAST_OWNER")
            await store.delete_membership(conn, membership_id)

    # --- API keys --------------------------------------------------------------------------

    async def create_api_key(self, principal: Principal, display_name: str, scopes: list[str],
                             expire_time: datetime | None, request_id: str
                             ) -> tuple[store.Row, str]:
        v = FieldViolations()
        v.check(len(display_name) <= 100, "api_key.display_name", "must be at most 100 characters")
        unknown = sorted(set(scopes) - KNOWN_SCOPES)
        v.check(not unknown, "api_key.scopes",
                f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_SCOPES))}")
        v.check(expire_time is None or expire_time > now_utc(), "api_key.expire_time",
                "must be in the future")
        v.raise_if_any()
        await self.require_role(principal, Role.ADMIN, "creating API keys")
        new = crypto.generate_api_key()
        async with self.db.connection() as conn:
            if request_id:
                existing = await store.api_key_by_request(conn, principal.org_id, request_id)
                if existing is not None:
                    return existing, ""  # the secret is not stored, so a retry cannot repeat it
            if await store.count_active_api_keys(conn, principal.org_id) >= MAX_ACTIVE_KEYS:
                raise resource_exhausted(f"at most {MAX_ACTIVE_KEYS} active API keys per organization",
                                         reason="API_KEY_LIMIT")
            try:
                row = await store.insert_api_key(
                    conn, crypto.new_id("key_"), principal.org_id, new.prefix,
                    self.secrets.credential_hash(new.secret), display_name, sorted(set(scopes)),
                    expire_time, principal.subject, request_id or None)
            except UniqueViolation:  # prefix collision (32 random bits): ask for a retry
                raise resource_exhausted("key prefix collision, retry", reason="RETRY") from None
            if row is None:
                existing = await store.api_key_by_request(conn, principal.org_id, request_id)
                assert existing is not None
                return existing, ""
        return row, new.secret

    async def get_api_key(self, org_id: str, key_id: str) -> store.Row:
        async with self.db.connection() as conn:
            row = await store.get_api_key(conn, org_id, key_id)
        if row is None:
            raise not_found("API key not found", reason="API_KEY_NOT_FOUND")
        return row

    async def list_api_keys(self, org_id: str, show_inactive: bool,
                            before: tuple[datetime, str] | None, limit: int
                            ) -> tuple[list[store.Row], int]:
        async with self.db.connection() as conn:
            rows = await store.list_api_keys(conn, org_id, show_inactive, before, limit)
            total = await store.count_api_keys(conn, org_id, show_inactive)
        return rows, total

    async def revoke_api_key(self, principal: Principal, key_id: str) -> store.Row:
        await self.require_role(principal, Role.ADMIN, "revoking API keys")
        async with self.db.connection() as conn:
            row = await store.revoke_api_key(conn, principal.org_id, key_id)
        if row is None:
            raise not_found("API key not found", reason="API_KEY_NOT_FOUND")
        # Overwrite (not delete) the cache entry: a concurrent Check that read the row before the
        # revocation populates with SET NX, so it cannot resurrect the key for the TTL.
        await self._cache_set(row["prefix"], _cache_entry(row), API_KEY_CACHE_TTL, only_new=False)
        return row

    # --- credential check (ext_authz) ------------------------------------------------------

    async def authenticate_api_key(self, secret: str) -> Principal:
        prefix = crypto.api_key_prefix(secret)
        if prefix is None:
            raise unauthenticated("malformed API key", reason="API_KEY_INVALID")
        entry = await self._cache_get(prefix)
        if entry is None:
            async with self.db.connection() as conn:
                row = await store.api_key_by_prefix(conn, prefix)
            entry = _cache_entry(row) if row else {"missing": True}
            await self._cache_set(prefix, entry,
                                  API_KEY_CACHE_TTL if row else NEGATIVE_CACHE_TTL, only_new=True)
        if entry.get("missing") or not hmac.compare_digest(
            bytes.fromhex(entry["hash"]), self.secrets.credential_hash(secret)
        ):
            raise unauthenticated("invalid API key", reason="API_KEY_INVALID")
        if entry.get("revoked"):
            raise unauthenticated("API key revoked", reason="API_KEY_REVOKED")
        if entry.get("expire") is not None and entry["expire"] <= time.time():
            raise unauthenticated("API key expired", reason="API_KEY_EXPIRED")
        self._note_use(entry["id"])
        return Principal(org_id=entry["org"], subject=f"apiKeys/{entry['id']}", roles=("member",),
                         key_id=entry["id"], scopes=tuple(entry["scopes"]))

    def _note_use(self, key_id: str) -> None:
        # last_use_time is approximate (at most one write per key per minute per replica).
        now = time.monotonic()
        if now - self._touched.get(key_id, -1e9) < 60:
            return
        self._touched[key_id] = now

        async def touch() -> None:
            async with self.db.connection() as conn:
                await store.touch_api_key(conn, key_id)

        self._spawn(touch(), "touch-api-key")

    async def _cache_get(self, prefix: str) -> dict[str, Any] | None:
        if self.cache is None or time.monotonic() < self._redis_down_until:
            return None
        try:
            raw = await asyncio.wait_for(self.cache.redis.get(self.cache.key("apikey", prefix)),
                                         REDIS_TIMEOUT)
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_failed(exc)
            return None
        return json.loads(raw) if raw else None

    async def _cache_set(self, prefix: str, entry: dict[str, Any], ttl: int, only_new: bool) -> None:
        if self.cache is None:
            return
        if only_new and time.monotonic() < self._redis_down_until:
            return
        try:
            await asyncio.wait_for(
                self.cache.redis.set(self.cache.key("apikey", prefix), json.dumps(entry), ex=ttl,
                                     nx=only_new),
                REDIS_TIMEOUT if only_new else 2.0)
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_failed(exc)
            if not only_new:
                # Redis may come back with the old "active" entry still cached: keep retrying
                # the overwrite in the background for as long as such an entry could live.
                log.error("could not write API key revocation to Redis; retrying")
                self._spawn(self._retry_overwrite(prefix, entry, ttl), "apikey-invalidate")

    async def _retry_overwrite(self, prefix: str, entry: dict[str, Any], ttl: int) -> None:
        assert self.cache is not None
        deadline = time.monotonic() + API_KEY_CACHE_TTL
        while time.monotonic() < deadline:
            await asyncio.sleep(REDIS_RETRY_AFTER)
            try:
                await asyncio.wait_for(self.cache.redis.set(
                    self.cache.key("apikey", prefix), json.dumps(entry), ex=ttl), 2.0)
                return
            except (RedisError, OSError, TimeoutError):
                continue

    def _redis_failed(self, exc: BaseException) -> None:
        if time.monotonic() >= self._redis_down_until:
            log.warning("Redis unavailable, checking API keys in PostgreSQL: %r", exc)
        self._redis_down_until = time.monotonic() + REDIS_RETRY_AFTER


def _cache_entry(row: store.Row) -> dict[str, Any]:
    expire = row["expire_time"]
    return {
        "id": row["id"],
        "org": row["org_id"],
        "hash": bytes(row["secret_hash"]).hex(),
        "scopes": list(row["scopes"]),
        "expire": expire.timestamp() if expire else None,
        "revoked": row["revoke_time"] is not None,
    }


def _one_violation(field_name: str, description: str) -> FieldViolations:
    v = FieldViolations()
    v.add(field_name, description)
    return v
