"""JWT signing keys: the active private key (cached per process), the published JWKS and
rotation with a grace period, with a 'next' key published ahead of use so gateways' cached
JWKS already know it when it becomes active."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from services.auth import crypto
from services.auth.errors import Precondition, raise_violations
from services.auth.store import Conn, Store
from services.common.db import Row
from services.common.errors import FieldViolations

REFRESH_SECONDS = 30.0  # how long a replica signs with its cached active key
MAX_GRACE = timedelta(days=7)
# How long gateways cache the JWKS (scripts/gateway.py renders it into Envoy's jwt_authn; Envoy
# refreshes in the background, so requests never wait for a fetch).
JWKS_CACHE_SECONDS = 15
# A 'next' key becomes active only once every gateway has fetched it: Envoy 1.40 does not
# refetch the JWKS on an unknown kid, so a key younger than the cache would fail its tokens.
MIN_PUBLISHED_SECONDS = JWKS_CACHE_SECONDS + 5


@dataclass
class ActiveKey:
    kid: str
    private_pem: bytes
    loaded_at: float = field(default_factory=time.monotonic)

    @property
    def fresh(self) -> bool:
        return time.monotonic() - self.loaded_at < REFRESH_SECONDS


class SigningKeys:
    def __init__(self, store: Store, secrets: crypto.Secrets, access_ttl_seconds: int) -> None:
        self.store = store
        self.secrets = secrets
        self.access_ttl = access_ttl_seconds
        self._active: ActiveKey | None = None
        self._lock = asyncio.Lock()

    async def active(self) -> ActiveKey:
        """The key to sign with now (created with its successor on first use)."""
        if self._active is not None and self._active.fresh:
            return self._active
        async with self._lock:
            if self._active is not None and self._active.fresh:
                return self._active
            async with self.store.connection() as conn:
                rows = await self.store.signing_keys(conn)
                row = next((r for r in rows if r["state"] == "active"), None)
                if row is None:
                    row = await self._bootstrap(conn)
            pem = self.secrets.decrypt(bytes(row["private_key_enc"]), row["kid"].encode())
            self._active = ActiveKey(row["kid"], pem)
            return self._active

    async def _bootstrap(self, conn: Conn) -> Row:
        await self.store.lock_signing_keys(conn)
        rows = await self.store.signing_keys(conn)
        existing = next((r for r in rows if r["state"] == "active"), None)
        if existing is not None:
            return existing
        active = await self._new_key(conn, "active")
        await self._new_key(conn, "next")
        return active

    async def _new_key(self, conn: Conn, state: str) -> Row:
        pair = await asyncio.to_thread(crypto.generate_signing_key)
        blob = self.secrets.encrypt(pair.private_pem, pair.kid.encode())
        return await self.store.insert_signing_key(conn, pair.kid, crypto.JWT_ALG, state, blob,
                                              pair.public_jwk)

    async def jwks(self) -> list[dict[str, str]]:
        await self.active()  # make sure a key exists before the first JWKS fetch
        async with self.store.connection() as conn:
            await self.store.mark_expired_keys_retired(conn)
            rows = await self.store.signing_keys(conn)
        return [dict(r["public_jwk"]) for r in rows]

    def grace_for(self, requested: timedelta | None) -> timedelta:
        """How long the retiring key stays published: at least every token it signed must keep
        verifying until it expires, including those other replicas sign until their cached key
        refreshes, plus clock skew."""
        minimum = timedelta(seconds=self.access_ttl)
        grace = minimum if requested is None else requested
        v = FieldViolations()
        v.check(grace >= timedelta(0), "previous_key_grace", "must not be negative")
        v.check(grace <= MAX_GRACE, "previous_key_grace", "must be at most 7 days")
        raise_violations(v)
        return max(grace, minimum + timedelta(seconds=REFRESH_SECONDS + 60))

    async def rotate(self, conn: Conn, grace: timedelta, request_id: str
                     ) -> tuple[Row, bool]:
        """Activate the next key (in the caller's transaction). Returns the new active key and
        whether this call rotated (False: a repeat of `request_id`)."""
        await self.store.lock_signing_keys(conn)
        if request_id:
            done = await self.store.idempotent_result(conn, "rotate", request_id)
            if done is not None:
                rows = await self.store.signing_keys(conn)
                match = next((r for r in rows if r["kid"] == done.decode()), None)
                if match is not None:
                    return match, False
        rows = await self.store.signing_keys(conn)
        nxt = next((r for r in rows if r["state"] == "next"), None)
        if nxt is not None:
            _refuse_unpublished(nxt)
        await self.store.retire_active_key(conn, grace.total_seconds())
        if nxt is not None:
            row = await self.store.activate_key(conn, nxt["kid"])
            assert row is not None
        else:
            row = await self._new_key(conn, "active")
        await self._new_key(conn, "next")
        if request_id:
            await self.store.save_idempotent_result(conn, "rotate", request_id, row["kid"].encode())
        self._active = None
        return row, True


def _refuse_unpublished(next_key: Row) -> None:
    """A second rotation right after the first would activate a key gateways may not know yet."""
    published = (datetime.now(UTC) - next_key["create_time"]).total_seconds()
    wait = MIN_PUBLISHED_SECONDS - published
    if wait > 0:
        raise Precondition(
            f"the next signing key was published {max(published, 0):.0f} s ago; gateways cache "
            f"the JWKS for {JWKS_CACHE_SECONDS} s, so rotating now would make its tokens fail "
            f"there: rotate again in {math.ceil(wait)} s", "NEXT_KEY_NOT_PUBLISHED",
            retry_after_seconds=math.ceil(wait))
