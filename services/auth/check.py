"""Envoy ext_authz `Check` (envoy.service.auth.v3.Authorization), served by the Auth process.

The decision point for gateway requests that carry neither a verified JWT nor an API key on a
gRPC/JSON route (those skip the gateway's hop here: services/common/gateway_jwt.py admits them in
the service), i.e. every request on the edge's /openai/v1 and every one without a usable
credential; and for the API keys a service holds no verdict on: the service asks this same RPC
with the request the gateway would have sent (services/common/gateway_keys.py), so keys are
authenticated, scope-checked and counted here only:
- JWT bearer (the edge's routes): Envoy's jwt_authn has already verified signature, issuer,
  audience and expiry against our JWKS (the single verifier) and forwarded the verified payload in
  `x-aimesh-jwt-payload`; the gateway strips any client-sent x-aimesh-* header before
  jwt_authn runs, so that header's presence means "verified". Check only maps claims to
  identity headers. A JWT-shaped bearer without that header failed verification.
- API key (`x-api-key` or `authorization: Bearer amk_...`): looked up by prefix in Redis
  (PostgreSQL behind it), compared by keyed hash, scope-checked against the called method.
- WebSocket subprotocol `openai-insecure-api-key.<key or JWT>` (browsers cannot set headers on
  a WebSocket; OpenAI's Realtime convention): used when no header carries a credential. A JWT
  there is verified by jwt_authn like a header one (it reads that header too). The allowed
  request goes upstream with the credential removed from `sec-websocket-protocol`.
On success the identity headers are set (overwriting; for a key that expires also
x-aimesh-key-expiry, so a service holding the verdict stops using it then) and the credential
headers removed.
On failure the reply is a JSON google.rpc.Status (HTTP 401/403) and, for gRPC callers, the same
status in grpc-status-details-bin.

Rate limits: an admitted caller's request is then counted against its organization's window
(and its API key's) by Usage's limiter (services/usage/ratelimit.py `GatewayLimiter`), run here
on Usage's Redis keys, so a gateway request pays one gRPC hop instead of ext_authz + ratelimit.
The limiter is the process's one (shared with Auth's own in-process admission) and counts from
leased blocks of the windows: a hot caller's request is counted in memory, a Redis round trip
taking the next block every few hundred requests. Over the limit:
HTTP 429 / RESOURCE_EXHAUSTED with RetryInfo and x-ratelimit-* headers (on every counted reply,
as Envoy's ratelimit filter sent them). If the counters cannot be reached the request is
served (fail open, like the ratelimit filter's default) unless
AIMESH_GATEWAY_RATELIMIT_FAIL_CLOSED is true (then 503 UNAVAILABLE).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Mapping

import grpc
from aimesh.auth.v1 import auth_pb2  # noqa: F401  (keeps descriptor pool complete for JSON)
from envoy_api.config.core.v3 import base_pb2
from envoy_api.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy_api.type.v3 import http_status_pb2
from google.protobuf import json_format, wrappers_pb2
from google.rpc import status_pb2

from services.auth import crypto
from services.auth.domain import AuthDomain
from services.auth.errors import AuthError
from services.auth.principal import Principal
from services.common.access import require_key_scope
from services.common.errors import ServiceError, unauthenticated
from services.common.identity import (
    HEADER_API_KEY,
    HEADER_AUTHORIZATION,
    HEADER_JWT_PAYLOAD,
    HEADER_KEY_EXPIRY,
    HEADER_KEY_ID,
    HEADER_ORG,
    HEADER_ROLES,
    HEADER_SCOPES,
    HEADER_SUBJECT,
    presented_key,
)
from services.common.mesh_policy import EDGE_PUBLIC_PREFIX
from services.usage.ratelimit import Decision, GatewayLimiter, over_limit

log = logging.getLogger("aimesh.auth.check")

CREDENTIAL_HEADERS = (HEADER_AUTHORIZATION, HEADER_API_KEY, HEADER_JWT_PAYLOAD)
SUBPROTOCOL_HEADER = "sec-websocket-protocol"
SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."
_HTTP = {grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
         grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503}


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, domain: AuthDomain, limiter: GatewayLimiter | None = None) -> None:
        self.domain = domain
        self.limiter = limiter

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        http = request.attributes.request.http
        headers = http.headers
        grpc_caller = headers.get("content-type", "").startswith("application/grpc")
        path = http.path.split("?", 1)[0]
        try:
            principal = await self._authenticate(headers)
            require_key_scope(principal.key_id, principal.scopes, path)
            decision = await self._count(principal)
        except AuthError as exc:
            return _deny(exc.to_service_error(), grpc_caller, path)
        except ServiceError as exc:
            return _deny(exc, grpc_caller, path)
        if decision is not None and decision.over:
            return _deny(over_limit(decision), grpc_caller, path)
        counted = decision.headers() if decision is not None else ()
        return _allow(principal, [_header(k, v) for k, v in counted],
                      headers.get(SUBPROTOCOL_HEADER))

    async def _count(self, principal: Principal) -> Decision | None:
        """This request counted in its windows; None when no limiter runs here or the counters
        are unreachable and the gateway fails open."""
        if self.limiter is None:
            return None
        return await self.limiter.count(principal.org_id, principal.key_id)

    async def _authenticate(self, headers: Mapping[str, str]) -> Principal:
        get = headers.get
        payload = get(HEADER_JWT_PAYLOAD)
        if payload:
            try:
                claims = crypto.decode_payload_header(payload)
                roles = tuple(str(r) for r in claims.get("roles", []))
                scopes = tuple(str(claims.get("scope", "")).split())
                principal = Principal(org_id=str(claims["org"]), subject=f"users/{claims['sub']}",
                                      roles=roles, scopes=scopes,
                                      session_id=str(claims["sid"]) if claims.get("sid") else None)
            except (ValueError, KeyError, TypeError):
                raise unauthenticated("access token lacks org/sub claims",
                                      reason="TOKEN_INVALID") from None
            # Ended sessions and membership changes apply to tokens already issued.
            return await self.domain.revocations.admit(principal)
        auth = (get(HEADER_AUTHORIZATION) or "").strip()
        if (not (get(HEADER_API_KEY) or "").strip() and auth
                and auth.partition(" ")[0].lower() != "bearer"):
            raise unauthenticated("authorization must be 'Bearer <token or API key>'",
                                  reason="CREDENTIALS_MALFORMED")
        credential = presented_key(headers)  # as a service holding verdicts reads it
        if not credential:
            credential = subprotocol_credential(get(SUBPROTOCOL_HEADER) or "")
        if not credential:
            raise unauthenticated(
                "missing credentials: send 'authorization: Bearer <token>' or 'x-api-key'",
                reason="CREDENTIALS_MISSING")
        if crypto.looks_like_jwt(credential):
            exp = crypto.unverified_expiry(credential)
            if exp is not None and exp <= time.time():
                raise unauthenticated("access token expired", reason="TOKEN_EXPIRED")
            raise unauthenticated("access token invalid", reason="TOKEN_INVALID")
        return await self.domain.api_keys.authenticate(credential)


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    # Only the deprecated `append` flag is honoured for upstream headers by the gRPC client.
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append=wrappers_pb2.BoolValue(value=False),
    )


def subprotocol_credential(offered: str) -> str:
    """The credential in a `Sec-WebSocket-Protocol` list (`openai-insecure-api-key.<key>`)."""
    for protocol in offered.split(","):
        protocol = protocol.strip()
        if protocol.startswith(SUBPROTOCOL_KEY_PREFIX):
            return protocol[len(SUBPROTOCOL_KEY_PREFIX):]
    return ""


def _allow(
    principal: Principal, response_headers: list[base_pb2.HeaderValueOption],
    subprotocols: str | None = None,
) -> external_auth_pb2.CheckResponse:
    removed = list(CREDENTIAL_HEADERS)
    headers = [
        _header(HEADER_ORG, principal.org_id),
        _header(HEADER_SUBJECT, principal.subject),
        _header(HEADER_ROLES, ",".join(principal.roles)),
    ]
    if principal.key_id:
        headers.append(_header(HEADER_KEY_ID, principal.key_id))
    if principal.scopes:
        headers.append(_header(HEADER_SCOPES, ",".join(principal.scopes)))
    if principal.expire_time is not None:  # services caching this verdict stop using it then
        headers.append(_header(HEADER_KEY_EXPIRY, repr(principal.expire_time)))
    if subprotocols and SUBPROTOCOL_KEY_PREFIX in subprotocols:  # the key stays at the gateway
        kept = [p.strip() for p in subprotocols.split(",")
                if p.strip() and not p.strip().startswith(SUBPROTOCOL_KEY_PREFIX)]
        if kept:
            headers.append(_header(SUBPROTOCOL_HEADER, ", ".join(kept)))
        else:
            removed.append(SUBPROTOCOL_HEADER)
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=0),
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=headers, headers_to_remove=removed,
            response_headers_to_add=response_headers,
        ),
    )


def _deny(exc: ServiceError, grpc_caller: bool, path: str = "") -> external_auth_pb2.CheckResponse:
    status = exc.to_status()
    http_code = _HTTP.get(exc.code, 403)
    # exc.headers: x-ratelimit-* of a request refused over the limit.
    headers = [_header("content-type", "application/json"),
               *(_header(k, v) for k, v in exc.headers)]
    if grpc_caller:
        # Envoy would map 429 to UNAVAILABLE (which clients retry): say the code itself.
        headers.append(_header("grpc-status", str(exc.code.value[0])))
        headers.append(_header("grpc-status-details-bin",
                               base64.b64encode(status.SerializeToString()).decode().rstrip("=")))
    if exc.code == grpc.StatusCode.UNAUTHENTICATED:
        headers.append(_header("www-authenticate", 'Bearer realm="aimesh"'))
    body = json_format.MessageToJson(status, indent=None)
    if path.startswith(EDGE_PUBLIC_PREFIX):  # OpenAI's clients read OpenAI's error shape
        kind = "authentication_error" if http_code == 401 else "permission_error"
        body = json.dumps({"error": {"message": exc.message, "type": kind, "param": None,
                                     "code": exc.reason.lower()}})
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=exc.code.value[0], message=exc.message),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_code),  # type: ignore[arg-type]
            headers=headers,
            body=body,
        ),
    )
