"""Auth's gRPC surface: thin — decode, authorize, call the domain logic, encode.

The same process also serves Envoy's ext_authz `Check` (services/auth/check.py).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from aimesh.auth.v1 import auth_pb2, auth_pb2_grpc
from envoy_api.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import empty_pb2

from services.auth import check
from services.auth.domain import AuthDomain
from services.auth.memberships import ORGANIZATION, check_update_mask
from services.auth.principal import ROLE_BY_NAME, Principal
from services.auth.sessions import USER, Tokens
from services.common.db import Row
from services.common.errors import invalid_argument, not_found, unauthenticated
from services.common.handlers import call_metadata
from services.common.identity import Role, require_identity
from services.common.names import ResourceName, resource
from services.common.pagination import Paginator
from services.common.server import Binding, Runtime, ServiceSpec, spec_for
from services.common.timestamps import to_timestamp
from services.usage.ratelimit import gateway_limiter

_ROLE_TO_PB = {
    "owner": auth_pb2.ROLE_OWNER, "admin": auth_pb2.ROLE_ADMIN,
    "member": auth_pb2.ROLE_MEMBER, "viewer": auth_pb2.ROLE_VIEWER,
}
_PB_TO_ROLE = {v: ROLE_BY_NAME[k] for k, v in _ROLE_TO_PB.items()}
_ROLE_NAME = {v: k for k, v in _ROLE_TO_PB.items()}
DEV_SECRET = "aimesh-local-dev-secret-change-me"  # the default in services/common/config.py
MEMBERSHIP = resource("auth.aimesh.dev/Membership")
API_KEY = resource("auth.aimesh.dev/ApiKey")
AUDIT_EVENT = resource("auth.aimesh.dev/AuditEvent")
log = logging.getLogger("aimesh.auth")




def _principal(context: grpc.aio.ServicerContext) -> Principal:
    # The metadata object the access check read (no second parse); a bare context in tests.
    identity = require_identity(call_metadata() or context.invocation_metadata() or ())
    return Principal(org_id=identity.org, subject=identity.subject,
                     roles=tuple(r.name.lower() for r in identity.roles),
                     key_id=identity.key_id, scopes=tuple(sorted(identity.scopes)))


def _org_from(name: str, principal: Principal, field_name: str) -> str:
    """The organization id in `organizations/{id}`; another org's name is NOT_FOUND (no leak)."""
    org_id = ORGANIZATION.id(name, field_name)
    if org_id != principal.org_id:
        raise not_found("organization not found", reason="ORGANIZATION_NOT_FOUND")
    return org_id


def _child(name: str, kind: ResourceName, principal: Principal, field_name: str) -> str:
    """The own id of a resource under the caller's organization; another org's is NOT_FOUND."""
    org_id, child_id = kind.parse(name, field_name)
    if org_id != principal.org_id:
        raise not_found(f"{kind.type.rsplit('/', 1)[1]} not found")
    return child_id


def _create_order(row: Row) -> tuple[datetime, str]:
    """The keyset both Auth lists page by."""
    return row["create_time"], row["id"]


def _token_pair(tokens: Tokens) -> auth_pb2.TokenPair:
    return auth_pb2.TokenPair(
        access_token=tokens.access_token, token_type="Bearer",
        expire_time=to_timestamp(float(tokens.access_expire)), expires_in_seconds=tokens.expires_in,
        refresh_token=tokens.refresh_token, refresh_expire_time=to_timestamp(tokens.refresh_expire),
        user=USER.format(tokens.user_id), organization=ORGANIZATION.format(tokens.org_id),
    )


def _api_key(row: Row, secret: str = "") -> auth_pb2.ApiKey:
    now = datetime.now(UTC)
    if row["revoke_time"] is not None:
        state = auth_pb2.ApiKey.STATE_REVOKED
    elif row["expire_time"] is not None and row["expire_time"] <= now:
        state = auth_pb2.ApiKey.STATE_EXPIRED
    else:
        state = auth_pb2.ApiKey.STATE_ACTIVE
    return auth_pb2.ApiKey(
        name=API_KEY.format(row["org_id"], row["id"]),
        display_name=row["display_name"], secret=secret, prefix=row["prefix"],
        scopes=list(row["scopes"]), expire_time=to_timestamp(row["expire_time"]), state=state,
        creator=row["creator"] if row["creator"].startswith("users/") else "",
        create_time=to_timestamp(row["create_time"]), revoke_time=to_timestamp(row["revoke_time"]),
        last_use_time=to_timestamp(row["last_use_time"]),
    )


def _membership(row: Row) -> auth_pb2.Membership:
    return auth_pb2.Membership(
        name=MEMBERSHIP.format(row["org_id"], row["id"]),
        user=USER.format(row["user_id"]) if row["user_id"] else "", email=row["email"],
        role=_ROLE_TO_PB[row["role"]],
        state=auth_pb2.Membership.STATE_ACTIVE if row["state"] == "active"
        else auth_pb2.Membership.STATE_INVITED,
        inviter=row["inviter"], create_time=to_timestamp(row["create_time"]),
        update_time=to_timestamp(row["update_time"]), etag=str(row["version"]),
    )


def _audit_event(row: Row) -> auth_pb2.AuditEvent:
    return auth_pb2.AuditEvent(
        name=AUDIT_EVENT.format(row["org_id"], row["id"]), action=row["action"],
        actor=row["actor"], resource=row["resource"], peer_address=row["peer_address"],
        request_id=row["request_id"], create_time=to_timestamp(row["create_time"]),
        details={str(k): str(v) for k, v in dict(row["details"]).items()})


def _role(value: int, field_name: str) -> Role:
    role = _PB_TO_ROLE.get(value)  # type: ignore[call-overload]
    if role is None:
        raise invalid_argument(f"{field_name} is required", [(field_name, "must be a role")])
    return role


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, runtime: Runtime, domain: AuthDomain) -> None:
        self.runtime = runtime
        self.domain = domain
        self.pages = Paginator(runtime.settings)

    async def SignUp(self, request: auth_pb2.SignUpRequest, context: Any) -> auth_pb2.TokenPair:
        return _token_pair(await self.domain.sessions.sign_up(
            request.email, request.password, request.display_name,
            request.organization_display_name, request.request_id))

    async def Login(self, request: auth_pb2.LoginRequest, context: Any) -> auth_pb2.TokenPair:
        org: str | None = None
        if request.organization:
            org = ORGANIZATION.id(request.organization, "organization")
        return _token_pair(await self.domain.sessions.login(request.email, request.password, org,
                                                   request.request_id))

    async def RefreshToken(self, request: auth_pb2.RefreshTokenRequest,
                           context: Any) -> auth_pb2.TokenPair:
        return _token_pair(await self.domain.sessions.refresh(request.refresh_token,
                                                              request.request_id))

    async def Logout(self, request: auth_pb2.LogoutRequest, context: Any) -> empty_pb2.Empty:
        await self.domain.sessions.logout(request.refresh_token)
        return empty_pb2.Empty()

    async def GetJwks(self, request: auth_pb2.GetJwksRequest, context: Any) -> auth_pb2.Jwks:
        keys = await self.domain.signing_keys.jwks()
        return auth_pb2.Jwks(keys=[auth_pb2.Jwk(**{k: v for k, v in key.items()
                                                   if k in ("kty", "kid", "use", "alg", "n", "e")})
                                   for key in keys])

    async def RotateSigningKey(self, request: auth_pb2.RotateSigningKeyRequest,
                               context: Any) -> auth_pb2.SigningKey:
        principal = _principal(context)
        if not principal.subject.startswith("users/"):
            raise unauthenticated("rotating keys needs a user identity", reason="USER_REQUIRED")
        grace = (request.previous_key_grace.ToTimedelta()
                 if request.HasField("previous_key_grace") else None)
        row = await self.domain.rotate_signing_key(principal.subject[6:], grace,
                                                   request.request_id)
        jwk = {k: v for k, v in dict(row["public_jwk"]).items()
               if k in ("kty", "kid", "use", "alg", "n", "e")}
        return auth_pb2.SigningKey(kid=row["kid"], alg=row["alg"],
                                   state=auth_pb2.SigningKey.STATE_ACTIVE,
                                   public_key=auth_pb2.Jwk(**jwk),
                                   create_time=to_timestamp(row["create_time"]))

    async def GetCurrentUser(self, request: auth_pb2.GetCurrentUserRequest,
                             context: Any) -> auth_pb2.User:
        principal = _principal(context)
        if not principal.subject.startswith("users/"):
            raise unauthenticated("GetCurrentUser needs a user (access token), not an API key",
                                  reason="USER_REQUIRED")
        user = await self.domain.memberships.get_user(principal.subject[6:])
        return auth_pb2.User(
            name=USER.format(user["id"]), email=user["email"], display_name=user["display_name"],
            organization=ORGANIZATION.format(principal.org_id),
            roles=[_ROLE_TO_PB[r] for r in principal.roles if r in _ROLE_TO_PB],
            create_time=to_timestamp(user["create_time"]))

    async def GetOrganization(self, request: auth_pb2.GetOrganizationRequest,
                              context: Any) -> auth_pb2.Organization:
        principal = _principal(context)
        org = await self.domain.memberships.get_org(_org_from(request.name, principal, "name"))
        return auth_pb2.Organization(name=ORGANIZATION.format(org["id"]),
                                     display_name=org["display_name"],
                                     create_time=to_timestamp(org["create_time"]),
                                     update_time=to_timestamp(org["update_time"]))

    async def ListMemberships(self, request: auth_pb2.ListMembershipsRequest,
                              context: Any) -> auth_pb2.ListMembershipsResponse:
        principal = _principal(context)
        org_id = _org_from(request.parent, principal, "parent")
        page = self.pages.start(request, principal.org_id)
        role = _ROLE_NAME.get(request.role) if request.role else None
        rows, total = await self.domain.memberships.list(org_id, role, page.cursor,
                                                         page.size + 1)
        rows, token = page.split(rows, _create_order)
        return auth_pb2.ListMembershipsResponse(
            memberships=[_membership(r) for r in rows], next_page_token=token, total_size=total)

    async def CreateMembership(self, request: auth_pb2.CreateMembershipRequest,
                               context: Any) -> auth_pb2.Membership:
        principal = _principal(context)
        _org_from(request.parent, principal, "parent")
        role = _role(request.membership.role, "membership.role")
        return _membership(await self.domain.create_membership(
            principal, request.membership.email, role, request.request_id))

    async def UpdateMembership(self, request: auth_pb2.UpdateMembershipRequest,
                               context: Any) -> auth_pb2.Membership:
        principal = _principal(context)
        check_update_mask(request.update_mask.paths)
        membership_id = _child(request.membership.name, MEMBERSHIP, principal,
                               "membership.name")
        role = _role(request.membership.role, "membership.role")
        return _membership(await self.domain.update_membership(
            principal, membership_id, role, request.membership.etag))

    async def DeleteMembership(self, request: auth_pb2.DeleteMembershipRequest,
                               context: Any) -> empty_pb2.Empty:
        principal = _principal(context)
        membership_id = _child(request.name, MEMBERSHIP, principal, "name")
        await self.domain.delete_membership(principal, membership_id, request.allow_missing)
        return empty_pb2.Empty()

    async def CreateApiKey(self, request: auth_pb2.CreateApiKeyRequest,
                           context: Any) -> auth_pb2.ApiKey:
        principal = _principal(context)
        _org_from(request.parent, principal, "parent")
        key = request.api_key
        expire = key.expire_time.ToDatetime(UTC) if key.HasField("expire_time") else None
        row, secret = await self.domain.api_keys.create(
            principal, key.display_name, list(key.scopes), expire, request.request_id)
        return _api_key(row, secret)

    async def GetApiKey(self, request: auth_pb2.GetApiKeyRequest, context: Any) -> auth_pb2.ApiKey:
        principal = _principal(context)
        key_id = _child(request.name, API_KEY, principal, "name")
        return _api_key(await self.domain.api_keys.get(principal.org_id, key_id))

    async def ListApiKeys(self, request: auth_pb2.ListApiKeysRequest,
                          context: Any) -> auth_pb2.ListApiKeysResponse:
        principal = _principal(context)
        org_id = _org_from(request.parent, principal, "parent")
        page = self.pages.start(request, principal.org_id)
        rows, total = await self.domain.api_keys.list(org_id, request.show_inactive, page.cursor,
                                                      page.size + 1)
        rows, token = page.split(rows, _create_order)
        return auth_pb2.ListApiKeysResponse(api_keys=[_api_key(r) for r in rows],
                                            next_page_token=token, total_size=total)

    async def RevokeApiKey(self, request: auth_pb2.RevokeApiKeyRequest,
                           context: Any) -> auth_pb2.ApiKey:
        principal = _principal(context)
        key_id = _child(request.name, API_KEY, principal, "name")
        return _api_key(await self.domain.api_keys.revoke(principal, key_id))


    async def ListAuditEvents(self, request: auth_pb2.ListAuditEventsRequest,
                              context: Any) -> auth_pb2.ListAuditEventsResponse:
        principal = _principal(context)
        org_id = _org_from(request.parent, principal, "parent")
        page = self.pages.start(request, principal.org_id)
        rows = await self.domain.audit.list(org_id, request.action or None,
                                            page.cursor, page.size + 1)
        rows, token = page.split(rows, _create_order)
        return auth_pb2.ListAuditEventsResponse(audit_events=[_audit_event(r) for r in rows],
                                                next_page_token=token)

    async def RecordAuditEvents(self, request: auth_pb2.RecordAuditEventsRequest,
                                context: Any) -> auth_pb2.RecordAuditEventsResponse:
        recorded = await self.domain.audit.record_reported(request.events)
        return auth_pb2.RecordAuditEventsResponse(recorded_count=recorded)


class _Shared:
    """One AuthDomain per process, shared by both servicers."""

    def __init__(self) -> None:
        self.domain: AuthDomain | None = None

    def get(self, runtime: Runtime) -> AuthDomain:
        if self.domain is None:
            assert runtime.db is not None
            settings = runtime.settings
            admins = frozenset(e.strip().lower() for e in settings.auth_platform_admins.split(",")
                               if e.strip())
            self.domain = AuthDomain(runtime.db, runtime.cache, settings.auth_secret,
                                     settings.auth_access_token_seconds, admins, runtime.spawn)
            runtime.spawn(self.domain.housekeeping(), "auth-housekeeping")
            if settings.auth_secret == DEV_SECRET:
                log.warning("AIMESH_AUTH_SECRET is the local development default; set a real "
                            "secret outside a developer machine")
        return self.domain


def build_spec() -> ServiceSpec:
    shared = _Shared()
    return spec_for(
        "auth",
        Path(__file__).parent,
        [
            Binding(
                auth_pb2_grpc.add_AuthServiceServicer_to_server,
                lambda runtime: AuthServicer(runtime, shared.get(runtime)),
                auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
            ),
            Binding(
                external_auth_pb2_grpc.add_AuthorizationServicer_to_server,
                # Usage's rate-limit counters, run by Check on Usage's Redis keys
                # (services/usage/ratelimit.py explains why they are counted here).
                lambda runtime: check.AuthorizationServicer(
                    shared.get(runtime), gateway_limiter(runtime)),
                external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"],
            ),
        ],
        # API-key checks fall back to PostgreSQL when Redis is down, so Redis is not required.
        cache_required_for_readiness=False,
        # Auth keeps the audit log: its own events go straight to its store.
        audit_sink=lambda runtime: shared.get(runtime).audit,
    )


