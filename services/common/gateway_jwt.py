"""Gateway callers admitted in the service, without a hop to Auth's Check: JWTs verified by the
gateway's jwt_authn, and API keys (services/common/gateway_keys.py).

Envoy verifies an access token's signature, issuer, audience and expiry against Auth's JWKS and,
on the gRPC and JSON routes, skips ext_authz for it (scripts/gateway.py): the verified payload
reaches the service in `x-aimesh-jwt-payload` (identity.py turns it into the caller's Identity).
It skips ext_authz for an API key on those routes too: the key reaches the service, which admits
it from its cache of Auth's verdicts or asks Auth's Check (gateway_keys.py). What a signature
cannot say is enforced here, in the service, before any servicer code runs
(`GatewayCallerInterceptor`, installed by the server bootstrap in every service):

- revocation: the token's session ended (logout, refresh-token reuse) or its user's membership
  ended — refused UNAUTHENTICATED / TOKEN_REVOKED; a changed role overrides the token's role.
  Auth's revocation entries (services/auth/revocation.py) are mirrored WHOLE in this process
  (`RevokedTokens`): loaded when it subscribes to Auth's `auth:changed` channel and updated from
  every message on it (Auth publishes each entry in the same write), so a request costs no
  Redis read and a revocation applies within milliseconds. While the mirror is not subscribed
  (Redis down, reconnecting) JWT callers are refused UNAVAILABLE (retryable): never served on a
  deny list that may be missing entries. The same listener drops a revoked API key's verdict
  (`auth:apikey:{prefix}`); without a subscription API-key callers are admitted by asking Check,
  which falls back to PostgreSQL.
- the rate limit: the organization's window (and an API key's) is counted with Usage's limiter
  (services/usage/ratelimit.py `GatewayLimiter`, the process's one, shared with Auth's Check in
  Auth's process), as Check does for the requests it admits (an API key this process held no
  verdict on: Check counted it); over it: RESOURCE_EXHAUSTED with RetryInfo. The limiter counts
  from leased blocks of the windows: while this process holds some of the caller's, the request
  is counted in memory, synchronously (no task, no await). Otherwise it waits for a lease (one
  Redis round trip, shared by the caller's concurrent requests): writes are counted before they
  run; reads (NO_SIDE_EFFECTS) run while they are counted, so the caller does not wait for Redis
  first — over the limit the reply is dropped for the refusal, and that caller's reads are
  refused up front for the next second. A streaming write registered with `count_alongside`
  (a chat turn) starts while it is counted too: its handler awaits `admission_settled()` before
  its first side effect that a refused request must not leave behind, so the count overlaps the
  work before it (a chat's turn lease, which a refusal releases). API-key callers get x-ratelimit-*
  as the reply's initial metadata (Envoy passes them on, to JSON callers as HTTP headers), and
  with an over-limit refusal.

Only the gateway may send the payload header (tls.PeerAuthorizationInterceptor refuses it from
any other peer), and Envoy strips a client-sent one before jwt_authn runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from redis.asyncio import Redis

from services.common import identity
from services.common.access import METHOD_ACCESS
from services.common.cache import ServiceCache, follow_channel
from services.common.channels import Channels
from services.common.errors import unauthenticated, unavailable
from services.common.gateway_keys import ApiKeyCallers, AuthCheck, KeyVerdicts
from services.common.handlers import (
    MethodInterceptor,
    call_metadata,
    call_unary,
    iterate_stream,
    rewrap,
)
from services.common.request_checks import described_method

# Auth's revocation entries, named once: Auth writes them (services/auth/revocation.py) and
# announces each on its changed channel (services/auth/mirror.py); every service reads them here.
AUTH_PREFIX = "auth"  # Auth's Redis key prefix
CHANGED_CHANNEL = "changed"
SESSION_ENDED_ENTRY = "session-ended"  # {prefix}:session-ended:{session id}
MEMBER_ENTRY = "member"  # {prefix}:member:{org}:{user} -> the role now, or GONE
API_KEY_ENTRY = "apikey"  # {prefix}:apikey:{key prefix}: announced when the key is revoked
GONE = "-"  # the membership ended
CHANNEL = f"{AUTH_PREFIX}:{CHANGED_CHANNEL}"
SESSION_ENDED = f"{AUTH_PREFIX}:{SESSION_ENDED_ENTRY}:"
MEMBER = f"{AUTH_PREFIX}:{MEMBER_ENTRY}:"
API_KEY = f"{AUTH_PREFIX}:{API_KEY_ENTRY}:"
POLL_SECONDS = 5.0
RESUBSCRIBE_AFTER = 1.0
SCAN_COUNT = 1000


# Streaming methods whose handler runs while its request is counted (count_alongside), and the
# count the current call's handler waits for before its first lasting side effect.
_COUNTED_ALONGSIDE: set[str] = set()
_pending_count: contextvars.ContextVar[asyncio.Future[Any] | None] = contextvars.ContextVar(
    "aimesh_pending_rate_limit_count", default=None
)


def count_alongside(method: str) -> None:
    """Let `method` (a full gRPC method name, server streaming) start while its request is
    counted in the rate-limit windows; its handler must await admission_settled() before any
    side effect a refused request must not leave behind."""
    _COUNTED_ALONGSIDE.add(method)


async def admission_settled() -> None:
    """Wait until the current call's request is counted: RESOURCE_EXHAUSTED when it is over
    the limit (nothing to wait for when it was counted before the handler ran)."""
    counting = _pending_count.get()
    if counting is not None:
        await counting


# This process's listener (start()): Auth applies its own announcements here at once
# (announced_here), so even the next request the revoking process serves cannot use a verdict the
# message has not reached yet.
_listeners: list[RevokedTokens] = []


def announced_here(keys: Iterable[str]) -> None:
    """What Auth just announced on its changed channel, applied in this process without waiting
    for the message (the API-key verdicts; the deny-list entries follow with the message)."""
    for listener in _listeners:
        listener.keys_changed(keys)


class RevokedTokens:
    """Auth's revocation entries, mirrored whole: ended sessions and changed member roles."""

    def __init__(self, cache: ServiceCache, keys: KeyVerdicts | None = None) -> None:
        self.cache = cache
        self.keys = keys  # API-key verdicts this listener invalidates (gateway_keys.py)
        self._ended: dict[str, float] = {}  # session id -> when the entry expires (monotonic)
        self._roles: dict[tuple[str, str], tuple[float, str]] = {}  # (org, user) -> (expiry, role)
        self.live = False

    def session_ended(self, session_id: str | None) -> bool:
        if not session_id:
            return False
        expiry = self._ended.get(session_id)
        return expiry is not None and expiry > time.monotonic()

    def role_now(self, org: str, user: str) -> str | None:
        """The member's role since it changed ("-": no longer a member), or None: unchanged."""
        held = self._roles.get((org, user))
        if held is None or held[0] <= time.monotonic():
            return None
        return held[1]

    def apply(self, key: str, value: bytes | None, ttl_ms: int) -> None:
        """One entry as Redis holds it now (value None: gone)."""
        expiry = time.monotonic() + max(ttl_ms, 0) / 1000
        if key.startswith(SESSION_ENDED):
            session = key[len(SESSION_ENDED):]
            if value is None:
                self._ended.pop(session, None)
            else:
                self._ended[session] = expiry
        elif key.startswith(MEMBER):
            org, _, user = key[len(MEMBER):].partition(":")
            if value is None:
                self._roles.pop((org, user), None)
            else:
                self._roles[(org, user)] = (expiry, value.decode())

    def keys_changed(self, keys: Iterable[str]) -> None:
        """Drop the API-key verdicts Auth's message names (`auth:apikey:{prefix}`)."""
        if self.keys is not None:
            self.keys.forget([k[len(API_KEY):] for k in keys if k.startswith(API_KEY)])

    async def _load(self, r: Redis, keys: list[str]) -> None:
        wanted = [k for k in keys if k.startswith((SESSION_ENDED, MEMBER))]
        if not wanted:
            return
        async with r.pipeline(transaction=False) as pipe:
            for key in wanted:
                pipe.get(key)
                pipe.pttl(key)
            replies = await pipe.execute()
        for index, key in enumerate(wanted):
            value, ttl = replies[2 * index], replies[2 * index + 1]
            # No expiry (-1) is not written by Auth; keep such an entry one hour.
            self.apply(key, value, ttl if ttl >= 0 else 3_600_000)

    async def _snapshot(self, r: Redis) -> None:
        self._ended.clear()
        self._roles.clear()
        for pattern in (SESSION_ENDED + "*", MEMBER + "*"):
            batch: list[str] = []
            async for key in r.scan_iter(match=pattern, count=SCAN_COUNT):
                batch.append(key.decode() if isinstance(key, bytes) else key)
                if len(batch) >= SCAN_COUNT:
                    await self._load(r, batch)
                    batch = []
            await self._load(r, batch)

    async def listen(self) -> None:
        """Background task for the life of the server: subscribe, load, apply every change."""
        r = self.cache.redis

        async def subscribed() -> None:
            if self.keys is not None:
                self.keys.subscribed()
            await self._snapshot(r)
            self.live = True

        async def received(keys: list[str]) -> None:
            self.keys_changed(keys)
            await self._load(r, keys)

        def lost() -> None:
            self.live = False
            if self.keys is not None:
                self.keys.lost()

        await follow_channel(r, CHANNEL, subscribed, received, lost, POLL_SECONDS,
                             RESUBSCRIBE_AFTER)


@dataclass(frozen=True)
class Caller:
    """An admitted gateway caller: whose windows count its request, and whether it was counted
    already (by Auth's Check: `counted` holds the x-ratelimit-* headers it answered)."""

    org: str
    key_id: str | None = None
    counted: tuple[tuple[str, str], ...] | None = None
    report_limits: bool = False  # API keys: x-ratelimit-* go back as reply headers


class GatewayCallerInterceptor(MethodInterceptor):
    """Admits the callers the gateway sends on without Auth's Check: a verified JWT payload (not
    revoked, else UNAUTHENTICATED / TOKEN_REVOKED) or an API key (services/common/gateway_keys.py),
    then counts the request in its organization's rate-limit window (and its key's)."""

    def __init__(self, tokens: RevokedTokens, limiter: Any | None,
                 keys: ApiKeyCallers | None = None) -> None:
        self.tokens = tokens
        self.limiter = limiter  # services.usage.ratelimit.GatewayLimiter (None: not counted)
        self.keys = keys  # None: API keys are not admitted here (no identity: servicers refuse)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        read = bool(handler.unary_unary) and described_method(method)[1]
        alongside = method in _COUNTED_ALONGSIDE
        keys_here = self.keys is not None and _needs_caller(method)
        return rewrap(handler,
                      lambda behavior: self._unary(behavior, method, keys_here, read),
                      lambda behavior: self._stream(behavior, method, keys_here, alongside))

    def _admission(self, method: str, keys_here: bool
                   ) -> Caller | Callable[[], Awaitable[Caller]] | None:
        """How the current call's caller is admitted here: a JWT caller at once (the mirror is
        in memory), an API key by a coroutine (it may ask Auth); None: not here."""
        metadata = call_metadata()
        payload = None
        for key, value in metadata:
            if key == identity.HEADER_JWT_PAYLOAD and isinstance(value, str):
                payload = value
        if payload is not None:
            return Caller(self.admit_token(payload).org)
        if keys_here:
            headers = {k: v for k, v in metadata if isinstance(v, str)}
            if identity.HEADER_ORG not in headers and identity.carries_api_key(headers):
                return self._key_admission(headers, method)
        # Identity headers, no credential, or a public method (sign-up, login: a key a client
        # sends along there is none of their business, as at the gateway).
        return None

    def admit_token(self, payload: str) -> identity.TokenClaims:
        """The token's claims, unless it is revoked (no I/O: the mirror is in memory)."""
        claims = identity.token_claims(payload)
        if claims is None:
            raise unauthenticated("access token lacks org/sub claims", reason="TOKEN_INVALID")
        if not self.tokens.live:
            raise unavailable("token revocations are being reloaded; retry shortly",
                              reason="REVOCATIONS_UNAVAILABLE", retry_after_seconds=1.0)
        if self.tokens.session_ended(claims.session):
            raise unauthenticated("the session of this access token has ended",
                                  reason="TOKEN_REVOKED")
        if self.tokens.role_now(claims.org, claims.user) == GONE:
            raise unauthenticated("no longer a member of this organization",
                                  reason="TOKEN_REVOKED")
        return claims

    def _key_admission(self, headers: dict[str, str], method: str
                       ) -> Callable[[], Awaitable[Caller]]:
        keys = self.keys
        assert keys is not None
        credential = identity.presented_key(headers)

        async def admit_key() -> Caller:
            caller = keys.held(credential, method)
            counted = None
            if caller is None:
                caller, counted = await keys.ask_auth(credential, headers, method)
            identity.admit_key_caller(credential, caller)
            return Caller(caller.org, caller.key_id, counted, report_limits=True)

        return admit_key

    def _counted_now(self, caller: Caller) -> tuple[tuple[str, str], ...] | None:
        """The x-ratelimit-* headers to send (API keys only) when the request is counted without
        waiting: by Check already, by no limiter here, or from this process's lease of its
        windows (no task, no await); None: it waits for a lease (_count)."""
        if caller.counted is not None:
            return caller.counted
        if self.limiter is None:
            return ()
        decision = self.limiter.spend(caller.org, caller.key_id)
        if decision is None:
            return None
        return decision.headers() if caller.report_limits else ()

    async def _count(self, caller: Caller) -> tuple[tuple[str, str], ...]:
        """Wait for the caller's request to be counted (refused over the limit) when
        _counted_now could not count it; its x-ratelimit-* headers. The limiter spends a lease
        that landed meanwhile before it asks Redis."""
        assert self.limiter is not None
        decision = await self.limiter.admit(caller.org, caller.key_id)
        return decision.headers() if decision is not None and caller.report_limits else ()

    def _start_count(self, caller: Caller) -> asyncio.Future[tuple[tuple[str, str], ...]]:
        """The request's count, started (to run alongside the method); refused at once instead
        when its caller was refused within the last second."""
        assert self.limiter is not None
        refused = self.limiter.refused_recently(caller.org, caller.key_id)
        if refused is not None:
            raise refused
        return asyncio.ensure_future(self._count(caller))

    def _unary(self, behavior: Any, method: str, keys_here: bool, read: bool) -> Any:
        """A read (NO_SIDE_EFFECTS) runs while its request is counted, so the caller does not
        wait for Redis before its read; over the limit its reply is never sent (the refusal
        is), and for a moment after that its reads are refused before they run. Everything
        else is counted before it runs."""

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            admit = self._admission(method, keys_here)
            if admit is None:
                return await call_unary(behavior, request, context)
            caller = admit if isinstance(admit, Caller) else await admit()
            limits = self._counted_now(caller)
            if limits is None and not read:
                limits = await self._count(caller)
            if limits is None:  # a read: it runs while it is counted
                counting = self._start_count(caller)
                try:
                    reply = await call_unary(behavior, request, context)
                except BaseException:
                    await counting  # over the limit: that refusal, not the read's outcome
                    raise
                limits = await counting
            else:
                reply = await call_unary(behavior, request, context)
            await _report_limits(context, caller, limits)
            return reply

        return run

    def _stream(self, behavior: Any, method: str, keys_here: bool, alongside: bool) -> Any:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            admit = self._admission(method, keys_here)
            if admit is None:
                async for item in iterate_stream(behavior, request, context):
                    yield item
                return
            caller = admit if isinstance(admit, Caller) else await admit()
            limits = self._counted_now(caller)
            if limits is None and alongside:
                async for item in self._counted_alongside(behavior, request, context, caller):
                    yield item
                return
            if limits is None:
                limits = await self._count(caller)
            await _report_limits(context, caller, limits)
            async for item in iterate_stream(behavior, request, context):
                yield item

        return run

    async def _counted_alongside(self, behavior: Any, request: Any,
                                 context: grpc.aio.ServicerContext,
                                 caller: Caller) -> AsyncIterator[Any]:
        """The handler's stream while its request is counted (count_alongside): the handler
        waits for the count before its first lasting side effect (admission_settled), the
        x-ratelimit-* headers go out before its first message, and over the limit the refusal
        is the call's outcome whatever the handler did meanwhile, as when it was counted first.
        A caller refused within the last second is refused up front (not run alongside)."""
        counting = self._start_count(caller)
        # Retrieved here too, so a call that ends before awaiting it logs no stray error.
        counting.add_done_callback(lambda done: done.cancelled() or done.exception())
        _pending_count.set(counting)
        reported = False
        try:
            async for item in iterate_stream(behavior, request, context):
                if not reported:
                    reported = True
                    await _report_limits(context, caller, await counting)
                yield item
            if not reported:
                await _report_limits(context, caller, await counting)
        except Exception:
            await counting  # over the limit: that refusal, not the handler's outcome
            raise
        finally:
            _pending_count.set(None)


async def _report_limits(context: grpc.aio.ServicerContext, caller: Caller,
                         limits: tuple[tuple[str, str], ...]) -> None:
    """x-ratelimit-* back to an API-key caller, as the reply's headers."""
    if caller.report_limits and limits:
        await context.send_initial_metadata(limits)


def _needs_caller(method: str) -> bool:
    access = METHOD_ACCESS.get(method)
    return access is not None and access.kind != "public"


def start(runtime: Any) -> GatewayCallerInterceptor:
    """The interceptor for this server process, its mirror listening for the server's life."""
    from services.usage.ratelimit import gateway_limiter

    settings = runtime.settings
    verdicts = KeyVerdicts()
    tokens = RevokedTokens(ServiceCache(settings.redis_url, AUTH_PREFIX), verdicts)
    runtime.on_shutdown(tokens.cache.close)
    runtime.spawn(tokens.listen(), "gateway-revocations")
    _listeners.append(tokens)
    identity.set_role_source(tokens.role_now)
    limiter = gateway_limiter(runtime)  # the one Auth's Check uses in Auth's process
    auth = Channels(settings)
    runtime.on_shutdown(auth.close)
    keys = ApiKeyCallers(verdicts, AuthCheck(lambda: auth.get("auth")))
    return GatewayCallerInterceptor(tokens, limiter, keys)
