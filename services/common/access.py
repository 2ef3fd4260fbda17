"""Who may call which RPC: the role × method matrix and the API-key scope table, written once.

Every RPC of every service has exactly one entry (a test checks the table against the
descriptor set). The role contract (auth.proto `Role`): OWNER has full control including
billing; ADMIN manages members and API keys; MEMBER uses the platform (conversations,
documents, speech, generation); VIEWER has read-only access. API keys act as MEMBER, narrowed
by their scopes.

Enforced in one place: `AccessInterceptor`, which the server bootstrap installs on every
service, refuses a caller whose role is below the method's minimum with PERMISSION_DENIED
(reason ROLE_REQUIRED) before any servicer code runs. `require_key_scope` refuses API keys whose
scopes do not grant the method (reason SCOPE_REQUIRED): Auth's ext_authz Check runs it for the
keys it admits, services/common/gateway_keys.py for the keys a service admits from its cache.
Rules finer than a minimum role (only an owner may grant OWNER, a member may leave on their
own, invoicing another org is for platform admins) stay in the owning service's domain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import grpc

from services.common.errors import permission_denied
from services.common.handlers import MethodInterceptor, before, call_metadata
from services.common.identity import Identity, Role, identity_from_metadata

Kind = Literal["public", "role", "platform", "service"]


@dataclass(frozen=True)
class Access:
    """kind "public": no credentials (the body is the credential, or the data is public);
    "role": the caller's organization role must be at least `role`;
    "platform": platform admins only (scope platform:admin);
    "service": only services call it, for work they do (the mesh caller graph enforces who)."""

    kind: Kind
    role: Role | None = None
    # API-key scope granting the method; None: only unscoped keys (or no key) may call it.
    scope: str | None = None
    # Platform admins pass the role check (operators acting on any organization).
    platform_admin_passes: bool = False


PUBLIC = Access("public")
PLATFORM = Access("platform")
SERVICE = Access("service")


def _r(role: Role, scope: str | None = None, *, platform_admin_passes: bool = False) -> Access:
    return Access("role", role, scope, platform_admin_passes)


V, M, A, O = Role.VIEWER, Role.MEMBER, Role.ADMIN, Role.OWNER  # noqa: E741 (the table is a grid)
_AUTH = "/aimesh.auth.v1.AuthService/"
_BILLING = "/aimesh.billing.v1.BillingService/"
_CONV = "/aimesh.conversation.v1.ConversationService/"
_KNOW = "/aimesh.knowledge.v1.KnowledgeService/"
_ORCH = "/aimesh.orchestrator.v1.OrchestratorService/"
_SPEECH = "/aimesh.speech.v1.SpeechService/"
_USAGE = "/aimesh.usage.v1.UsageService/"

# The matrix: gRPC path -> who may call it.
METHOD_ACCESS: Mapping[str, Access] = {
    # Auth
    _AUTH + "SignUp": PUBLIC,
    _AUTH + "Login": PUBLIC,
    _AUTH + "RefreshToken": PUBLIC,
    _AUTH + "Logout": PUBLIC,
    _AUTH + "GetJwks": PUBLIC,
    _AUTH + "RotateSigningKey": PLATFORM,
    _AUTH + "GetCurrentUser": _r(V),
    _AUTH + "GetOrganization": _r(V),
    _AUTH + "ListMemberships": _r(V),
    _AUTH + "CreateMembership": _r(A),
    _AUTH + "UpdateMembership": _r(A),
    _AUTH + "DeleteMembership": _r(V),  # anyone may leave; removing others needs ADMIN (domain)
    _AUTH + "CreateApiKey": _r(A),
    _AUTH + "GetApiKey": _r(V),
    _AUTH + "ListApiKeys": _r(V),
    _AUTH + "RevokeApiKey": _r(A),
    _AUTH + "ListAuditEvents": _r(A),
    _AUTH + "RecordAuditEvents": SERVICE,
    # Billing
    _BILLING + "ListPlans": _r(V, "usage.read"),
    _BILLING + "GetPlan": _r(V, "usage.read"),
    _BILLING + "CreatePlan": PLATFORM,
    _BILLING + "UpdatePlan": PLATFORM,
    _BILLING + "GetSubscription": _r(V, "usage.read"),
    _BILLING + "ChangePlan": _r(O),
    _BILLING + "GenerateInvoice": _r(A, platform_admin_passes=True),
    _BILLING + "GetInvoice": _r(V, "usage.read"),
    _BILLING + "ListInvoices": _r(V, "usage.read"),
    _BILLING + "RenderInvoice": _r(V, "usage.read"),
    _BILLING + "FinalizeInvoice": _r(A),
    _BILLING + "MarkInvoicePaid": PLATFORM,
    _BILLING + "VoidInvoice": _r(O, platform_admin_passes=True),
    # Conversation
    _CONV + "CreateConversation": _r(M, "inference"),
    _CONV + "GetConversation": _r(V, "inference"),
    _CONV + "ListConversations": _r(V, "inference"),
    _CONV + "UpdateConversation": _r(M, "inference"),
    _CONV + "DeleteConversation": _r(M, "inference"),
    _CONV + "UndeleteConversation": _r(M, "inference"),
    _CONV + "ListMessages": _r(V, "inference"),
    _CONV + "GetMessage": _r(V, "inference"),
    _CONV + "TruncateMessage": _r(M, "inference"),
    _CONV + "SendMessage": _r(M, "inference"),
    # Knowledge
    _KNOW + "CreateDocument": _r(M, "knowledge.write"),
    _KNOW + "UploadDocument": _r(M, "knowledge.write"),
    _KNOW + "GetDocument": _r(V, "knowledge.read"),
    _KNOW + "ListDocuments": _r(V, "knowledge.read"),
    _KNOW + "DeleteDocument": _r(M, "knowledge.write"),
    _KNOW + "SearchDocuments": _r(V, "knowledge.read"),
    _KNOW + "EmbedTexts": _r(V, "knowledge.read"),
    # Orchestrator (public through the gateway; also called by Conversation, Speech and the edge)
    _ORCH + "ListModels": _r(V, "inference"),
    _ORCH + "GetModel": _r(V, "inference"),
    _ORCH + "Generate": _r(M, "inference"),
    _ORCH + "CountTokens": _r(V, "inference"),
    # Speech
    _SPEECH + "StreamingRecognize": _r(M, "speech"),
    _SPEECH + "Recognize": _r(M, "speech"),
    _SPEECH + "Synthesize": _r(M, "speech"),
    _SPEECH + "StreamingSynthesize": _r(M, "speech"),
    _SPEECH + "ListVoices": _r(V, "speech"),
    _SPEECH + "Converse": _r(M, "speech"),
    # Usage
    _USAGE + "RecordUsage": SERVICE,
    _USAGE + "GetUsageSummary": _r(V, "usage.read"),
    _USAGE + "ListUsageRecords": _r(V, "usage.read"),
    _USAGE + "ExportUsageRecords": _r(V, "usage.read"),
    _USAGE + "CreateBudget": _r(A),
    _USAGE + "GetBudget": _r(V, "usage.read"),
    _USAGE + "ListBudgets": _r(V, "usage.read"),
    _USAGE + "UpdateBudget": _r(A),
    _USAGE + "DeleteBudget": _r(A),
    _USAGE + "ReserveBudget": SERVICE,
    _USAGE + "SettleReservation": SERVICE,
    _USAGE + "ReleaseReservation": SERVICE,
    _USAGE + "GetRateLimitPolicy": _r(V, "usage.read"),
    _USAGE + "SetRateLimitPolicy": SERVICE,
    # Envoy's own APIs, called by the gateway
    "/envoy.service.auth.v3.Authorization/Check": SERVICE,
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit": SERVICE,
}


# The OpenAI-compatible edge's HTTP routes (services/edge), by path prefix: the API-key scope
# each needs, the same as the gRPC methods it calls for them.
EDGE_SCOPES: tuple[tuple[str, str], ...] = (
    ("/openai/v1/chat/completions", "inference"),
    ("/openai/v1/models", "inference"),
    ("/openai/v1/embeddings", "knowledge.read"),
    ("/openai/v1/audio/", "speech"),
    ("/openai/v1/realtime", "speech"),
)


def http_scope(path: str) -> str | None:
    """The scope an API key needs for an edge HTTP path (None: only unscoped keys)."""
    return next((scope for prefix, scope in EDGE_SCOPES if path.startswith(prefix)), None)


def require_key_scope(key_id: str | None, scopes: Sequence[str], path: str) -> None:
    """Refuse an API key whose scopes do not grant `path` (a gRPC method, or an edge HTTP path):
    PERMISSION_DENIED, reason SCOPE_REQUIRED, naming the scope needed. Users and unscoped keys
    pass: each service checks their roles."""
    if key_id is None or not scopes:
        return
    access = METHOD_ACCESS.get(path)
    needed = access.scope if access else http_scope(path)
    if needed is None or needed not in scopes:
        raise permission_denied(
            f"this API key's scopes ({', '.join(scopes)}) do not allow {path}",
            reason="SCOPE_REQUIRED", metadata={"required_scope": needed or "unscoped key"})


def refusal(access: Access | None, identity: Identity | None, method: str) -> str | None:
    """Why `identity` may not call `method` (None: it may). No identity: the servicer decides
    (it answers UNAUTHENTICATED where one is needed); unknown methods are refused."""
    if access is None:
        return f"{method} is not in the access matrix"
    if identity is None or access.kind in ("public", "service"):
        return None
    if access.kind == "platform":
        return None if identity.is_platform_admin else "requires a platform admin"
    if access.platform_admin_passes and identity.is_platform_admin:
        return None
    assert access.role is not None
    if identity.has_role(access.role):
        return None
    return f"requires the {access.role.name.lower()} role or higher"


class AccessInterceptor(MethodInterceptor):
    """Refuses callers below a method's minimum role (PERMISSION_DENIED, reason ROLE_REQUIRED
    or PLATFORM_ADMIN_REQUIRED) before the servicer runs. Installed inside the error
    interceptor, so its ServiceError becomes a rich status."""

    def __init__(self, table: Mapping[str, Access] = METHOD_ACCESS) -> None:
        self.table = table

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if not method.startswith(("/aimesh.", "/envoy.")):
            return handler  # health and reflection
        access = self.table.get(method)

        def check(context: grpc.aio.ServicerContext) -> None:
            # When the call runs: an API-key caller is admitted by an outer interceptor
            # (services/common/gateway_keys.py), so its identity exists only then.
            _refuse_if(access, identity_from_metadata(call_metadata()), method)

        return before(handler, check)


def _refuse_if(access: Access | None, identity: Identity | None, method: str) -> None:
    why = refusal(access, identity, method)
    if why is None:
        return
    required = access.role.name if access and access.role else "PLATFORM_ADMIN"
    raise permission_denied(
        f"{method.rsplit('/', 1)[-1]} {why}",
        reason="PLATFORM_ADMIN_REQUIRED" if required == "PLATFORM_ADMIN" else "ROLE_REQUIRED",
        metadata={"required_role": required, "method": method},
    )
