"""Who is calling: the identity the gateway established, read from its x-aimesh-* headers.

Envoy strips any client-sent x-aimesh-* header before authentication and sets these after
it (ext_authz Check: the edge's routes, and requests with neither a JWT nor an API key). On the
gRPC/JSON routes JWT and API-key callers skip that hop:
- JWT callers arrive with the payload jwt_authn verified in x-aimesh-jwt-payload: their identity
  comes from its claims, with the role Auth recorded after a membership change
  (services/common/gateway_jwt.py mirrors those, and refuses revoked tokens before any servicer
  code runs);
- API-key callers arrive with their key (`x-api-key`, or `authorization: Bearer amk_…`): the
  server's interceptor admits the key (services/common/gateway_keys.py: Auth's verdict, cached)
  and records the identity for the call being served (`admit_key_caller`), which
  `identity_from_metadata` returns for the metadata carrying that same key.
Services accept identity headers only from peers the caller graph lets forward them — the
gateway, or a service acting for a user on the methods services.common.mesh_policy names —
enforced on the verified mTLS identity by tls.PeerAuthorizationInterceptor before any servicer
code runs.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import functools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from services.common.errors import permission_denied, unauthenticated

HEADER_ORG = "x-aimesh-org"
HEADER_SUBJECT = "x-aimesh-subject"
HEADER_ROLES = "x-aimesh-roles"
HEADER_KEY_ID = "x-aimesh-key-id"
HEADER_SCOPES = "x-aimesh-scopes"
# The claims of an access token Envoy's jwt_authn verified (base64url JSON); only the gateway
# may send it (tls.PeerAuthorizationInterceptor).
HEADER_JWT_PAYLOAD = "x-aimesh-jwt-payload"
# Set by Auth's Check beside the identity of an API key that expires: when (epoch seconds), so a
# service caching the verdict stops using it then.
HEADER_KEY_EXPIRY = "x-aimesh-key-expiry"
# Where callers present an API key (or `authorization: Bearer <key>`).
HEADER_API_KEY = "x-api-key"
HEADER_AUTHORIZATION = "authorization"
# Set by the gateway's JSON transcoder on the gRPC requests it makes from JSON/HTTP ones.
HEADER_TRANSCODED = "x-envoy-original-path"
API_KEY_PREFIX = "amk_"  # an API key: "amk_" + 8 hex (its lookup prefix) + "_" + random
API_KEY_LOOKUP_CHARS = len(API_KEY_PREFIX) + 8  # the public lookup prefix, e.g. "amk_1a2b3c4d"
IDENTITY_HEADERS = (HEADER_ORG, HEADER_SUBJECT, HEADER_ROLES, HEADER_KEY_ID, HEADER_SCOPES,
                    HEADER_JWT_PAYLOAD)

# Operators of the platform itself (plans, price book, cross-org reads). Auth puts this scope in
# the access tokens of the users named by AIMESH_AUTH_PLATFORM_ADMINS.
PLATFORM_ADMIN_SCOPE = "platform:admin"


class Role(IntEnum):
    """Organization roles, ordered: a higher role may do everything a lower one may."""

    VIEWER = 1
    MEMBER = 2
    ADMIN = 3
    OWNER = 4

    @classmethod
    def parse(cls, name: str) -> Role | None:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            return None


@dataclass(frozen=True)
class Identity:
    """An authenticated caller within one organization."""

    org: str
    subject: str
    roles: frozenset[Role] = field(default_factory=frozenset)
    key_id: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def highest_role(self) -> Role | None:
        return max(self.roles) if self.roles else None

    @property
    def is_platform_admin(self) -> bool:
        return PLATFORM_ADMIN_SCOPE in self.scopes

    def has_role(self, minimum: Role) -> bool:
        top = self.highest_role
        return top is not None and top >= minimum

    def require_role(self, minimum: Role, action: str) -> None:
        if not self.has_role(minimum):
            raise permission_denied(
                f"{action} requires the {minimum.name.lower()} role or higher",
                reason="ROLE_REQUIRED",
                metadata={"required_role": minimum.name, "org": self.org},
            )

    def to_headers(self) -> list[tuple[str, str]]:
        """Headers that carry this identity onward to another service."""
        headers = [(HEADER_ORG, self.org), (HEADER_SUBJECT, self.subject)]
        if self.roles:
            headers.append((HEADER_ROLES, ",".join(r.name.lower() for r in sorted(self.roles))))
        if self.key_id:
            headers.append((HEADER_KEY_ID, self.key_id))
        if self.scopes:
            headers.append((HEADER_SCOPES, ",".join(sorted(self.scopes))))
        return headers


@dataclass(frozen=True)
class TokenClaims:
    """What an access token says about its caller (services/auth/crypto.py issues them)."""

    org: str
    user: str
    roles: tuple[str, ...]
    scopes: tuple[str, ...]
    session: str | None


@functools.lru_cache(maxsize=4096)  # a caller sends the same token for many requests
def token_claims(payload: str) -> TokenClaims | None:
    """The claims in a verified-payload header, or None when it lacks org/sub."""
    try:
        text = payload.strip()
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        org, user = str(data["org"]), str(data["sub"])
        roles = tuple(str(r) for r in data.get("roles", []))
        scopes = tuple(str(data.get("scope", "")).split())
        session = str(data["sid"]) if data.get("sid") else None
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        return None
    if not org or not user:
        return None
    return TokenClaims(org, user, roles, scopes, session)


# (org, user) -> the member's role since a change after its tokens were issued ("-": no longer a
# member), or None. Each gRPC server process sets services/common/gateway_jwt.py's mirror here; a
# process without that mirror (the edge: Check admits its callers) never takes a payload's word.
_role_now: Callable[[str, str], str | None] | None = None


def set_role_source(role_now: Callable[[str, str], str | None]) -> None:
    global _role_now
    _role_now = role_now


def _token_identity(payload: str) -> Identity | None:
    claims = token_claims(payload)
    if claims is None or _role_now is None:
        return None
    now = _role_now(claims.org, claims.user)
    if now == "-":
        return None
    names = (now,) if now is not None else claims.roles
    return Identity(
        org=claims.org,
        subject=f"users/{claims.user}",
        roles=frozenset(r for r in (Role.parse(n) for n in names) if r),
        scopes=frozenset(claims.scopes),
    )


def api_key_prefix(secret: str) -> str | None:
    """The lookup prefix of a presented key, or None when it is not shaped like ours."""
    # "amk_" + 8 hex + "_" + random (the random part may itself contain "_").
    size = API_KEY_LOOKUP_CHARS
    if not secret.startswith(API_KEY_PREFIX) or len(secret) < size + 17 or secret[size] != "_":
        return None
    prefix = secret[:size]
    if any(c not in "0123456789abcdef" for c in prefix[len(API_KEY_PREFIX):]):
        return None
    return prefix


_BEARER_KEY = "bearer " + API_KEY_PREFIX


def carries_api_key(
    metadata: Iterable[tuple[str, str | bytes]] | Mapping[str, str | bytes],
) -> bool:
    """Does this request present an API key, as the gateway tells (an `x-api-key` header, or an
    `authorization: Bearer amk_…`)? The gateway sends such requests on without ext_authz; the
    service's interceptor then admits them (or asks Auth's Check, whatever the key's shape)."""
    pairs = metadata.items() if isinstance(metadata, Mapping) else metadata
    for key, value in pairs:
        if key == HEADER_API_KEY:
            return True
        if key == HEADER_AUTHORIZATION and isinstance(value, str) and (
                value[:len(_BEARER_KEY)].lower() == _BEARER_KEY):
            return True
    return False


def presented_key(headers: Mapping[str, str]) -> str:
    """The credential a request presents as Auth's Check reads it: `x-api-key`, else the value
    of `authorization` after its scheme ("" when neither)."""
    credential = headers.get(HEADER_API_KEY, "").strip()
    if not credential:
        credential = headers.get(HEADER_AUTHORIZATION, "").strip().partition(" ")[2].strip()
    return credential


# The API-key caller admitted for the call being served (set by the server's interceptor in the
# call's own task): (the key it presented, its identity).
_admitted_key: contextvars.ContextVar[tuple[str, Identity] | None] = contextvars.ContextVar(
    "aimesh_admitted_key", default=None)


def admit_key_caller(credential: str, identity: Identity) -> None:
    """Record the identity of the API key `credential` for the call being served."""
    _admitted_key.set((credential, identity))


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


# The identity last read from the gateway's headers in this context (the call being served):
# (the metadata object it was read from, that identity). The access check and the servicer read
# the same call's metadata; the second read of that same object takes the first one's result.
_read_from_headers: contextvars.ContextVar[tuple[object, Identity] | None] = (
    contextvars.ContextVar("aimesh_identity_read", default=None))


def identity_from_metadata(
    metadata: Iterable[tuple[str, str | bytes]] | Mapping[str, str],
) -> Identity | None:
    """The identity in the request headers, or None when the gateway set none."""
    held = _read_from_headers.get()
    if held is not None and held[0] is metadata:
        return held[1]
    pairs = metadata.items() if isinstance(metadata, Mapping) else metadata
    headers = {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in pairs}
    # The gateway sends the bare id ("o_…"); a resource name ("organizations/o_…") means the
    # same org.
    org = headers.get(HEADER_ORG, "").strip().removeprefix("organizations/")
    subject = headers.get(HEADER_SUBJECT, "").strip()
    if not org and not subject:
        if headers.get(HEADER_JWT_PAYLOAD):
            return _token_identity(headers[HEADER_JWT_PAYLOAD])
        admitted = _admitted_key.get()
        if admitted is not None and admitted[0] and admitted[0] == presented_key(headers):
            return admitted[1]
        return None
    if not org or not subject:
        return None
    roles = frozenset(r for r in (Role.parse(n) for n in _split(headers.get(HEADER_ROLES))) if r)
    found = Identity(
        org=org,
        subject=subject,
        roles=roles,
        key_id=headers.get(HEADER_KEY_ID) or None,
        scopes=frozenset(_split(headers.get(HEADER_SCOPES))),
    )
    # Only headers' identities: they depend on nothing but the metadata (an immutable tuple as
    # grpc hands it; a dict the caller could still change is not remembered).
    if isinstance(metadata, tuple):
        _read_from_headers.set((metadata, found))
    return found


def require_identity(metadata: Iterable[tuple[str, str | bytes]] | Mapping[str, str]) -> Identity:
    identity = identity_from_metadata(metadata)
    if identity is None:
        raise unauthenticated(
            "no caller identity: call through the gateway with an API key or access token",
            reason="IDENTITY_MISSING",
        )
    return identity
