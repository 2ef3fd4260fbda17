"""The caller graph: which peer identity may call which gRPC method of which service.

This module is the ONE source of truth for service-to-service authorization. Locally it is
enforced by `services.common.tls.PeerAuthorizationInterceptor` (mTLS peer identity from the
local CA); in Kubernetes the same data is rendered into Istio AuthorizationPolicies by
`istio/tools/render.py` (deploy time; a test checks the committed YAML equals the rendering).
The same tool renders the VirtualServices (retries only for methods the protos declare
idempotent) from the retry numbers here, which also give the gRPC clients' retry service
config, so the local retry policy and Istio's retry routes cannot drift apart.

Method patterns follow Istio's `paths` semantics so both enforcement points agree exactly:
exact ("/pkg.Svc/Method"), prefix ("/pkg.Svc/*"), suffix ("*/Method") or presence ("*").
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.config import REPO_ROOT, SERVICE_PORTS
from services.common.identity import HEADER_JWT_PAYLOAD

NAMESPACE = "aimesh"
LOCAL_TRUST_DOMAIN = "aimesh.local"
K8S_TRUST_DOMAIN = "cluster.local"

GATEWAY = "gateway"
OPERATOR = "operator"
# The OpenAI-compatible HTTP edge (services/edge): the gateway routes /openai/v1/* to it and it
# calls the gRPC services for the user, like the gateway does for transcoded calls.
EDGE = "edge"
# Every identity the local CA issues a certificate for (= Kubernetes ServiceAccount names).
SERVICES: tuple[str, ...] = tuple(SERVICE_PORTS)
IDENTITIES: tuple[str, ...] = (GATEWAY, *SERVICES, EDGE, OPERATOR)

# Callee -> the fully qualified gRPC services it serves (besides health and reflection).
GRPC_SERVICES: Mapping[str, tuple[str, ...]] = {
    "auth": ("aimesh.auth.v1.AuthService", "envoy.service.auth.v3.Authorization"),
    "conversation": ("aimesh.conversation.v1.ConversationService",),
    "orchestrator": ("aimesh.orchestrator.v1.OrchestratorService",),
    "knowledge": ("aimesh.knowledge.v1.KnowledgeService",),
    "speech": ("aimesh.speech.v1.SpeechService",),
    "billing": ("aimesh.billing.v1.BillingService",),
    "usage": ("aimesh.usage.v1.UsageService", "envoy.service.ratelimit.v3.RateLimitService"),
}

HEALTH = "/grpc.health.v1.Health/*"
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/*"
REFLECTION_V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/*"
EXT_AUTHZ_CHECK = "/envoy.service.auth.v3.Authorization/Check"
RATE_LIMIT = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"

_USAGE = "/aimesh.usage.v1.UsageService/"
# Usage's ledger and budget writes: services account for work they did; the gateway (hence
# any end user) must never be able to credit or release budget on its own.
USAGE_ACCOUNTING: tuple[str, ...] = (
    _USAGE + "RecordUsage",
    _USAGE + "ReserveBudget",
    _USAGE + "SettleReservation",
    _USAGE + "ReleaseReservation",
)
# Rate-limit policy follows the subscribed plan, so only Billing sets it.
USAGE_SET_RATE_LIMIT = _USAGE + "SetRateLimitPolicy"
USAGE_INTERNAL: tuple[str, ...] = (*USAGE_ACCOUNTING, USAGE_SET_RATE_LIMIT)
AUTH_RECORD_AUDIT = "/aimesh.auth.v1.AuthService/RecordAuditEvents"
_KNOWLEDGE = "/aimesh.knowledge.v1.KnowledgeService/"
_CONVERSATION = "/aimesh.conversation.v1.ConversationService/"


def _all(callee: str) -> tuple[str, ...]:
    return tuple(f"/{svc}/*" for svc in GRPC_SERVICES[callee] if svc.startswith("aimesh."))


@dataclass(frozen=True)
class Rule:
    """Callers listed may call `methods` minus `not_methods` (Istio path patterns).

    `forwards_identity`: the caller may present the end user's x-aimesh-* identity headers
    on these calls. True for the gateway (which sets them) and for services that act on a
    user's behalf and forward the headers they received from the gateway.
    """

    callers: frozenset[str]
    methods: tuple[str, ...]
    not_methods: tuple[str, ...] = ()
    forwards_identity: bool = False
    why: str = ""

    def matches(self, caller: str, method: str) -> bool:
        return (
            caller in self.callers
            and any(path_matches(p, method) for p in self.methods)
            and not any(path_matches(p, method) for p in self.not_methods)
        )


def _rule(
    callers: Iterable[str],
    methods: Iterable[str],
    *,
    not_methods: Iterable[str] = (),
    forwards_identity: bool = False,
    why: str,
) -> Rule:
    return Rule(frozenset(callers), tuple(methods), tuple(not_methods), forwards_identity, why)


# Every workload answers health checks from any mesh identity and reflection from operators.
_COMMON: tuple[Rule, ...] = (
    _rule(IDENTITIES, [HEALTH], why="health checks from any mesh identity"),
    _rule([OPERATOR], [REFLECTION_V1, REFLECTION_V1ALPHA], why="grpcurl for operators"),
)

POLICY: Mapping[str, tuple[Rule, ...]] = {
    "auth": (
        _rule([GATEWAY], _all("auth"), not_methods=[AUTH_RECORD_AUDIT], forwards_identity=True,
              why="public Auth API; never audit-log writes"),
        _rule([GATEWAY], [EXT_AUTHZ_CHECK], why="Envoy ext_authz"),
        _rule(SERVICES, [EXT_AUTHZ_CHECK],
              why="services admit the API-key callers the gateway sends them without ext_authz: "
              "Auth's verdict on a key they hold none for (services/common/gateway_keys.py)"),
        _rule(["billing", "usage"], [AUTH_RECORD_AUDIT],
              why="services report their security-relevant actions to the audit log"),
    ),
    "usage": (
        _rule(
            [GATEWAY],
            _all("usage"),
            not_methods=USAGE_INTERNAL,
            forwards_identity=True,
            why="public Usage API (summaries, quotas); never ledger writes",
        ),
        _rule([GATEWAY], [RATE_LIMIT], why="Envoy rate-limit service"),
        _rule(
            ["orchestrator", "speech", "knowledge"],
            USAGE_ACCOUNTING,
            forwards_identity=True,
            why="services record usage and reserve/settle budgets for work done for a user",
        ),
        _rule(
            ["billing"],
            _all("usage"),
            forwards_identity=True,
            why="Billing reads usage for invoices and sets plan rate limits",
        ),
    ),
    "billing": (_rule([GATEWAY], _all("billing"), forwards_identity=True, why="public API"),),
    "knowledge": (
        _rule([GATEWAY], _all("knowledge"), forwards_identity=True, why="public API"),
        _rule(
            ["orchestrator"],
            [_KNOWLEDGE + "SearchDocuments", _KNOWLEDGE + "GetDocument",
             _KNOWLEDGE + "ListDocuments"],
            forwards_identity=True,
            why="retrieval for grounded generation, with citations (on by default when the "
            "organization has READY documents)",
        ),
        _rule(
            [EDGE],
            [_KNOWLEDGE + "EmbedTexts"],
            forwards_identity=True,
            why="OpenAI embeddings on the model Knowledge indexes with",
        ),
    ),
    "orchestrator": (
        _rule(
            [GATEWAY, "conversation", "speech", EDGE],
            _all("orchestrator"),
            forwards_identity=True,
            why="public model catalog and stateless generation; Conversation, Speech and the "
            "OpenAI edge generate for their users",
        ),
    ),
    "conversation": (
        _rule([GATEWAY], _all("conversation"), forwards_identity=True, why="public API"),
        _rule(
            ["speech"],
            [
                _CONVERSATION + m
                for m in ("CreateConversation", "GetConversation", "ListMessages", "SendMessage")
            ],
            forwards_identity=True,
            why="voice Converse runs a conversation turn for the user",
        ),
        _rule(
            [EDGE],
            [_CONVERSATION + m
             for m in ("CreateConversation", "UpdateConversation", "TruncateMessage")],
            forwards_identity=True,
            why="a Realtime session's conversation carries its instructions (system_prompt); "
            "conversation.item.truncate cuts the stored answer to what was heard",
        ),
    ),
    "speech": (
        _rule([GATEWAY], _all("speech"), forwards_identity=True, why="public API"),
        _rule(
            [EDGE],
            ["/aimesh.speech.v1.SpeechService/" + m
             for m in ("Recognize", "Synthesize", "StreamingSynthesize", "ListVoices",
                       "StreamingRecognize", "Converse")],
            forwards_identity=True,
            why="OpenAI audio/transcriptions, audio/speech and the Realtime WebSocket bridge",
        ),
    ),
}

# The HTTP edge is not gRPC: only the gateway may send it requests (its public prefix), any
# mesh identity may probe its health. Enforced locally by services/edge/server.py (mTLS peer)
# and in Kubernetes by the AuthorizationPolicy istio/tools/mesh_manifests.py renders.
EDGE_PUBLIC_PREFIX = "/openai/v1/"
EDGE_HEALTH_PATHS: tuple[str, ...] = ("/healthz", "/readyz")


def edge_allows(caller_identity: str, path: str) -> bool:
    """May `caller_identity` send this HTTP request path to the edge?"""
    if path in EDGE_HEALTH_PATHS:
        return caller_identity in IDENTITIES
    return caller_identity == GATEWAY and path.startswith(EDGE_PUBLIC_PREFIX)


# Triton is not ours (no interceptor), but Istio guards it with the same graph.
TRITON = "triton"
TRITON_RULES: tuple[Rule, ...] = (
    _rule(
        ["knowledge", "orchestrator", "speech"],
        ["/inference.GRPCInferenceService/*"],
        why="embeddings, generation, ASR/TTS",
    ),
    _rule(IDENTITIES, ["/inference.GRPCInferenceService/ServerReady"], why="readiness"),
)


def rules_for(callee: str) -> tuple[Rule, ...]:
    """All rules guarding `callee`, common ones included. Unknown callee -> KeyError."""
    if callee == TRITON:
        return TRITON_RULES
    return (*POLICY[callee], *_COMMON)


def path_matches(pattern: str, path: str) -> bool:
    """Istio's string match: "*" presence, "x*" prefix, "*x" suffix, otherwise exact."""
    if pattern == "*":
        return bool(path)
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return path.endswith(pattern[1:])
    return path == pattern


def is_allowed(callee: str, caller_identity: str, method: str) -> bool:
    """May `caller_identity` (a short identity such as "gateway") call `method` of `callee`?

    `method` is the full gRPC path "/package.Service/Method". Unknown callees, callers and
    methods are denied: the graph is an allowlist.
    """
    if callee not in POLICY and callee != TRITON:
        return False
    return any(rule.matches(caller_identity, method) for rule in rules_for(callee))


def may_forward_identity(callee: str, caller_identity: str, method: str) -> bool:
    """May this caller present x-aimesh-* end-user identity headers on this call?"""
    if callee not in POLICY:
        return False
    return any(
        rule.forwards_identity and rule.matches(caller_identity, method)
        for rule in rules_for(callee)
    )


# Headers only the gateway may present, on the methods it may forward identity on: the claims of
# an access token its jwt_authn verified (services/common/gateway_jwt.py admits those callers).
# Services act for a user with the identity headers, never with a token's claims.
GATEWAY_ONLY_HEADERS: tuple[str, ...] = (HEADER_JWT_PAYLOAD,)


def may_present(callee: str, caller_identity: str, method: str, header: str) -> bool:
    """May this caller present this end-user identity header on this call?"""
    if header in GATEWAY_ONLY_HEADERS and caller_identity != GATEWAY:
        return False
    return may_forward_identity(callee, caller_identity, method)


def spiffe_id(identity: str, trust_domain: str = LOCAL_TRUST_DOMAIN) -> str:
    """spiffe://<trust domain>/ns/aimesh/sa/<identity>."""
    if identity not in IDENTITIES:
        raise ValueError(f"unknown mesh identity {identity!r}; known: {', '.join(IDENTITIES)}")
    return f"spiffe://{trust_domain}/ns/{NAMESPACE}/sa/{identity}"


def identity_from_spiffe(uri: str, trust_domain: str = LOCAL_TRUST_DOMAIN) -> str | None:
    """The short identity in a SPIFFE id of our trust domain and namespace, else None."""
    prefix = f"spiffe://{trust_domain}/ns/{NAMESPACE}/sa/"
    if not uri.startswith(prefix):
        return None
    name = uri[len(prefix) :]
    return name if name in IDENTITIES else None


# ---------------------------------------------------------------------------------------------
# Idempotency, from the protos (gen/descriptor.binpb): drives both retry policies.

DESCRIPTOR_PATH = REPO_ROOT / "gen" / "descriptor.binpb"


@dataclass(frozen=True)
class MethodInfo:
    path: str  # "/pkg.Service/Method"
    idempotent: bool  # NO_SIDE_EFFECTS or IDEMPOTENT
    client_streaming: bool
    server_streaming: bool

    @property
    def service(self) -> str:
        return self.path[1:].split("/", 1)[0]

    @property
    def unary(self) -> bool:
        return not (self.client_streaming or self.server_streaming)


def load_methods(descriptor_path: Path = DESCRIPTOR_PATH) -> dict[str, MethodInfo]:
    """Every RPC in the descriptor set, keyed by full path. Missing file -> {}."""
    try:
        stat = descriptor_path.stat()
    except FileNotFoundError:
        return {}
    # Every channel asks for its service config; parse the (large) descriptor once per version.
    return dict(_load_methods(descriptor_path, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=4)
def _load_methods(descriptor_path: Path, mtime_ns: int, size: int) -> dict[str, MethodInfo]:
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_path.read_bytes())
    safe = {
        descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
        descriptor_pb2.MethodOptions.IDEMPOTENT,
    }
    out: dict[str, MethodInfo] = {}
    for f in fds.file:
        for svc in f.service:
            for m in svc.method:
                path = f"/{f.package + '.' if f.package else ''}{svc.name}/{m.name}"
                out[path] = MethodInfo(
                    path=path,
                    idempotent=m.options.idempotency_level in safe,
                    client_streaming=m.client_streaming,
                    server_streaming=m.server_streaming,
                )
    return out


def idempotent_methods(descriptor_path: Path = DESCRIPTOR_PATH) -> list[str]:
    """Full paths of every RPC the protos mark NO_SIDE_EFFECTS or IDEMPOTENT, sorted."""
    return sorted(p for p, m in load_methods(descriptor_path).items() if m.idempotent)


# Retry/deadline numbers shared by the local client service config and Istio's routes.
RETRY_ATTEMPTS = 3  # total tries, first one included (gRPC's maxAttempts semantics)
UNARY_TIMEOUT_S = 10.0
PER_TRY_TIMEOUT_S = 3.0
RETRY_INITIAL_BACKOFF_S = 0.1
RETRY_MAX_BACKOFF_S = 1.0

# Keepalive for every internal channel: detect dead peers (a killed pod) within seconds
# without tripping servers' ping abuse limits (servers must permit 10 s pings).
CLIENT_KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)
SERVER_KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


def client_service_config(
    callee: str, methods: Mapping[str, MethodInfo] | None = None, *, retries: bool = True
) -> dict[str, Any]:
    """grpc service config (JSON-able) for a channel to `callee`.

    Idempotent methods retry on UNAVAILABLE only (never RESOURCE_EXHAUSTED: that is a quota
    answer, retrying it amplifies load). Unary calls get a default deadline; streams none,
    the caller sets one. Everything else is never retried: its writes dedupe on request_id,
    but a transparent retry would still hide a failure from the caller.
    """
    methods = load_methods() if methods is None else methods
    services = set(GRPC_SERVICES[callee])
    retry = {
        "maxAttempts": RETRY_ATTEMPTS,
        "initialBackoff": f"{RETRY_INITIAL_BACKOFF_S}s",
        "maxBackoff": f"{RETRY_MAX_BACKOFF_S}s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    configs: list[dict[str, Any]] = []
    for info in sorted(methods.values(), key=lambda m: m.path):
        if info.service not in services:
            continue
        name = {"service": info.service, "method": info.path.rsplit("/", 1)[1]}
        entry: dict[str, Any] = {"name": [name]}
        if info.unary:
            entry["timeout"] = f"{UNARY_TIMEOUT_S}s"
        if info.idempotent:
            # A restarting peer refuses connections for a few seconds: an idempotent call waits
            # for the channel to become ready (within its deadline) instead of failing fast.
            # Retry-unsafe calls fail fast and leave the decision to the caller's request_id.
            entry["waitForReady"] = True
        if info.idempotent and retries:
            entry["retryPolicy"] = retry
        if len(entry) > 1:
            configs.append(entry)
    return {
        "methodConfig": configs,
        # Bound retries so a dead dependency cannot multiply load without limit, yet let the
        # burst of calls one peer restart cuts at once (up to 25 on a channel) be retried.
        "retryThrottling": {"maxTokens": 50, "tokenRatio": 0.1},
    }


def client_channel_options(callee: str, *, retries: bool = True) -> list[tuple[str, Any]]:
    """Channel options for an internal client: retry service config and keepalive.

    `retries=False` behind an Istio sidecar: its VirtualService already retries the same
    methods, and retrying at both layers multiplies attempts (3 x 3).
    """
    return [
        ("grpc.service_config", json.dumps(client_service_config(callee, retries=retries))),
        ("grpc.enable_retries", 1),
        *CLIENT_KEEPALIVE_OPTIONS,
    ]
