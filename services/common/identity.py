"""Who is calling: the identity the gateway established, read from its x-aimesh-* headers.

Envoy strips any client-sent x-aimesh-* header before authentication and sets these after
it (ext_authz for API keys, jwt_authn claims for JWTs). Services accept them only from peers the
caller graph lets forward them — the gateway, or a service acting for a user on the methods
services.common.mesh_policy names — enforced on the verified mTLS identity by
tls.PeerAuthorizationInterceptor before any servicer code runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from services.common.errors import permission_denied, unauthenticated

HEADER_ORG = "x-aimesh-org"
HEADER_SUBJECT = "x-aimesh-subject"
HEADER_ROLES = "x-aimesh-roles"
HEADER_KEY_ID = "x-aimesh-key-id"
HEADER_SCOPES = "x-aimesh-scopes"
IDENTITY_HEADERS = (HEADER_ORG, HEADER_SUBJECT, HEADER_ROLES, HEADER_KEY_ID, HEADER_SCOPES)

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


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def identity_from_metadata(
    metadata: Iterable[tuple[str, str | bytes]] | Mapping[str, str],
) -> Identity | None:
    """The identity in the request headers, or None when the gateway set none."""
    pairs = metadata.items() if isinstance(metadata, Mapping) else metadata
    headers = {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in pairs}
    # The gateway sends the bare id ("o_…"); a resource name ("organizations/o_…") means the
    # same org.
    org = headers.get(HEADER_ORG, "").strip().removeprefix("organizations/")
    subject = headers.get(HEADER_SUBJECT, "").strip()
    if not org or not subject:
        return None
    roles = frozenset(r for r in (Role.parse(n) for n in _split(headers.get(HEADER_ROLES))) if r)
    return Identity(
        org=org,
        subject=subject,
        roles=roles,
        key_id=headers.get(HEADER_KEY_ID) or None,
        scopes=frozenset(_split(headers.get(HEADER_SCOPES))),
    )


def require_identity(metadata: Iterable[tuple[str, str | bytes]] | Mapping[str, str]) -> Identity:
    identity = identity_from_metadata(metadata)
    if identity is None:
        raise unauthenticated(
            "no caller identity: call through the gateway with an API key or access token",
            reason="IDENTITY_MISSING",
        )
    return identity
