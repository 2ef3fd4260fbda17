"""API-key callers admitted in the service, without the gateway's hop to Auth's Check.

On the gRPC and JSON routes Envoy sends a request that presents an API key (`x-api-key`, or
`authorization: Bearer amk_…`) straight to its service (scripts/gateway.py), as it does for a
verified JWT. The server's interceptor (services/common/gateway_jwt.py) admits the key with this
module before any servicer code runs:

- Hit: this process holds Auth's verdict on the key (`KeyVerdicts`, keyed by the key's lookup
  prefix, holding a keyed digest of the whole secret, compared in constant time, and the
  principal). Then the key's expiry, its scopes (services/common/access.py `require_key_scope`,
  the rule Check applies) and the rate limit, counted with Usage's `GatewayLimiter` by the
  interceptor (reads run while they are counted, as for JWTs).
- Miss (nothing held, a key past its expiry, a credential not shaped like a key): the service
  asks Auth with the very Check RPC the gateway calls (`AuthCheck`, the same request shape:
  the credential header, the method's path, content-type), so Auth stays the one place that
  authenticates a key, authorizes its scopes and counts that request. Its OK headers are the
  identity; its denial (code, reason, details, x-ratelimit-*) is what the caller gets.
  Refusals are never cached.

Invalidation: Auth announces `auth:apikey:{prefix}` on its `auth:changed` channel when it
revokes a key (services/auth/api_keys.py); the listener of gateway_jwt.RevokedTokens drops the
verdict when that message arrives (milliseconds, inside the 1 s a revocation has), and the
revoking Auth process drops its own at once (gateway_jwt.announced_here). Verdicts are used only
while that listener is subscribed (with Redis away every request asks Auth, whose Check falls
back to PostgreSQL) and live at most VERDICT_SECONDS; a verdict fetched while an invalidation
arrived is not kept (generation check, as Auth's own mirror does), nor one on a key announced
less than ANNOUNCED_SECONDS ago (an Auth replica may answer before its own copy of the message
reached it).

The admitted identity is recorded for the call (identity.admit_key_caller), where
identity_from_metadata finds it for the metadata carrying that key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc
from envoy_api.service.auth.v3 import (
    attribute_context_pb2,
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from google.rpc import status_pb2

from services.common.access import require_key_scope
from services.common.cache import HeldCopies
from services.common.errors import STATUS_DETAILS_KEY, ServiceError, unauthenticated, unavailable
from services.common.identity import (
    HEADER_API_KEY,
    HEADER_AUTHORIZATION,
    HEADER_KEY_EXPIRY,
    Identity,
    api_key_prefix,
    identity_from_metadata,
)

VERDICT_SECONDS = 10.0  # as Auth's own mirror (services/auth/mirror.py): a backstop, not the rule
MAX_VERDICTS = 100_000
# A key Auth announced a change of is not held again for this long: every Auth replica has applied
# the announcement by then (it reaches them as it reaches us, in milliseconds).
ANNOUNCED_SECONDS = 1.0
CHECK_TIMEOUT_SECONDS = 2.0  # as Envoy's ext_authz (scripts/gateway.py)
# What Check's denial says in headers that the refusal's own status says again.
_STATUS_HEADERS = frozenset({"content-type", "grpc-status", STATUS_DETAILS_KEY})
Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Verdict:
    """Auth's admission of one key: who it is."""

    digest: bytes  # keyed digest of the whole secret
    identity: Identity
    expire_time: float | None  # the key's own expiry (epoch seconds)


class KeyVerdicts(HeldCopies[Verdict]):
    """Auth's verdicts on the API keys this process has seen, by key prefix."""

    def __init__(self, seconds: float = VERDICT_SECONDS) -> None:
        super().__init__(seconds, MAX_VERDICTS)
        # A digest no one outside this process can compute: a memory dump holds no secret hash.
        self._pepper = secrets.token_bytes(32)
        self._announced: dict[str, float] = {}  # key prefix -> when Auth announced a change

    def forget(self, keys: Iterable[str] | None = None) -> None:
        if keys is not None:
            keys = list(keys)
            now = time.monotonic()
            if len(self._announced) >= MAX_VERDICTS:
                self._announced = {k: t for k, t in self._announced.items()
                                   if now - t < ANNOUNCED_SECONDS}
            self._announced.update((key, now) for key in keys)
        super().forget(keys)

    def _digest(self, credential: str) -> bytes:
        return hmac.new(self._pepper, credential.encode(), hashlib.sha256).digest()

    def admitted(self, credential: str) -> Identity | None:
        """The identity of `credential` by a verdict still usable, or None: ask Auth."""
        prefix = api_key_prefix(credential)
        held: Verdict | None = self.get(prefix) if prefix else None
        if held is None or (held.expire_time is not None and held.expire_time <= time.time()):
            return None
        if not hmac.compare_digest(held.digest, self._digest(credential)):
            return None  # another secret under this prefix: only Auth may answer it
        return held.identity

    def keep(self, credential: str, identity: Identity, expire_time: float | None,
             generation: int) -> None:
        """Hold Auth's verdict on an API key (`generation`: taken before asking Auth)."""
        prefix = api_key_prefix(credential)
        if prefix is None or identity.key_id is None:
            return
        # Just announced (revoked): another Auth replica may not have applied the message yet
        # when it answered, so its verdict is used for this request only.
        if time.monotonic() - self._announced.get(prefix, -ANNOUNCED_SECONDS) < ANNOUNCED_SECONDS:
            return
        self.put(prefix, Verdict(self._digest(credential), identity, expire_time), generation)


class AuthCheck:
    """Auth's ext_authz Check, asked by a service as the gateway asks it."""

    def __init__(self, channel: Callable[[], grpc.aio.Channel]) -> None:
        self._channel = channel

    async def admit(self, headers: Mapping[str, str], method: str
                    ) -> tuple[Identity, float | None, Headers]:
        """The caller's identity, its key's expiry and the x-ratelimit-* headers of its counted
        request; or Auth's refusal, raised as the ServiceError the caller gets."""
        sent = {"content-type": "application/grpc"}
        for name in (HEADER_API_KEY, HEADER_AUTHORIZATION):
            if name in headers:
                sent[name] = headers[name]
        request = external_auth_pb2.CheckRequest(attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(
                http=attribute_context_pb2.AttributeContext.HttpRequest(
                    method="POST", path=method, headers=sent))))
        stub = external_auth_pb2_grpc.AuthorizationStub(self._channel())
        try:
            reply = await stub.Check(request, timeout=CHECK_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            raise unavailable(f"cannot check the API key with Auth ({exc.code().name})",
                              reason="AUTH_UNAVAILABLE", retry_after_seconds=1.0) from None
        if reply.WhichOneof("http_response") != "ok_response":
            raise _refusal(reply)
        ok = reply.ok_response
        upstream = [(h.header.key, h.header.value) for h in ok.headers]
        identity = identity_from_metadata(upstream)
        if identity is None:
            raise unauthenticated("Auth admitted the key without an identity",
                                  reason="API_KEY_INVALID")
        expiry = next((v for k, v in upstream if k == HEADER_KEY_EXPIRY), None)
        return (identity, float(expiry) if expiry else None,
                tuple((h.header.key, h.header.value) for h in ok.response_headers_to_add))


def _refusal(reply: external_auth_pb2.CheckResponse) -> ServiceError:
    """Check's denial as the caller gets it from the gateway: the status in its details header
    (Check always writes it for gRPC requests), with its other headers (x-ratelimit-*,
    www-authenticate)."""
    denied = reply.denied_response
    pairs = [(h.header.key, h.header.value) for h in denied.headers]
    passed_on = [(k, v) for k, v in pairs if k not in _STATUS_HEADERS]
    details = next((v for k, v in pairs if k == STATUS_DETAILS_KEY), "")
    try:
        status = status_pb2.Status.FromString(
            base64.b64decode(details + "=" * (-len(details) % 4)))
    except (binascii.Error, ValueError):
        status = reply.status
    if not status.code:
        status = status_pb2.Status(code=grpc.StatusCode.UNAUTHENTICATED.value[0],
                                   message=reply.status.message or "API key refused")
    return ServiceError.from_status(status, passed_on)


class ApiKeyCallers:
    """Admits API-key callers: from a verdict this process holds, or by asking Auth."""

    def __init__(self, verdicts: KeyVerdicts, check: AuthCheck) -> None:
        self.verdicts = verdicts
        self.check = check

    def held(self, credential: str, method: str) -> Identity | None:
        """The caller by a verdict held here, its scopes checked against `method` (refused
        PERMISSION_DENIED / SCOPE_REQUIRED); None: ask Auth."""
        caller = self.verdicts.admitted(credential)
        if caller is not None:
            require_key_scope(caller.key_id, sorted(caller.scopes), method)
        return caller

    async def ask_auth(self, credential: str, headers: Mapping[str, str], method: str
                       ) -> tuple[Identity, Headers]:
        """Auth's verdict (its Check counted the request: the x-ratelimit-* headers to send),
        kept for the next requests unless an invalidation arrived meanwhile."""
        generation = self.verdicts.generation()
        caller, expire_time, limits = await self.check.admit(headers, method)
        self.verdicts.keep(credential, caller, expire_time, generation)
        return caller, limits
