"""The caller graph: which peer identity may call which gRPC method of which service.

This module is the ONE source of truth for service-to-service authorization. Locally it is
enforced by `services.common.tls.PeerAuthorizationInterceptor` (mTLS peer identity from the
local CA); in Kubernetes the same data is rendered into Istio AuthorizationPolicies by
`python -m services.common.mesh_policy --write-istio`, and a test checks the committed YAML
equals the rendering. The same command renders the VirtualServices (retries only for methods
the protos declare idempotent) and the client retry service config comes from here too, so
the local gRPC retry policy and Istio's retry routes cannot drift apart.

Method patterns follow Istio's `paths` semantics so both enforcement points agree exactly:
exact ("/pkg.Svc/Method"), prefix ("/pkg.Svc/*"), suffix ("*/Method") or presence ("*").
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.config import REPO_ROOT, SERVICE_PORTS
from services.common.identity import IDENTITY_HEADERS

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
        _rule([GATEWAY], _all("auth"), forwards_identity=True, why="public Auth API"),
        _rule([GATEWAY], [EXT_AUTHZ_CHECK], why="Envoy ext_authz"),
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
            [_KNOWLEDGE + "SearchDocuments", _KNOWLEDGE + "GetDocument"],
            forwards_identity=True,
            why="retrieval for grounded generation, with citations",
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
    ),
    "speech": (
        _rule([GATEWAY], _all("speech"), forwards_identity=True, why="public API"),
        _rule(
            [EDGE],
            ["/aimesh.speech.v1.SpeechService/" + m for m in ("Recognize", "Synthesize", "ListVoices")],
            forwards_identity=True,
            why="OpenAI audio/transcriptions and audio/speech",
        ),
    ),
}

# The HTTP edge is not gRPC: only the gateway may send it requests (its public prefix), any
# mesh identity may probe its health. Enforced locally by services/edge/server.py (mTLS peer)
# and in Kubernetes by the AuthorizationPolicy rendered below.
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


def spiffe_id(identity: str, trust_domain: str = LOCAL_TRUST_DOMAIN) -> str:
    """spiffe://<trust domain>/ns/aimesh/sa/<identity>."""
    if identity not in IDENTITIES:
        raise ValueError(f"unknown mesh identity {identity!r}; known: {', '.join(IDENTITIES)}")
    return f"spiffe://{trust_domain}/ns/{NAMESPACE}/sa/{identity}"


def istio_principal(identity: str, trust_domain: str = K8S_TRUST_DOMAIN) -> str:
    """Istio's `source.principals` form: the SPIFFE id without the scheme."""
    return spiffe_id(identity, trust_domain).removeprefix("spiffe://")


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


# ---------------------------------------------------------------------------------------------
# Istio rendering.

ISTIO_DIR = REPO_ROOT / "istio" / "base" / "mesh"
GENERATED_HEADER = (
    "# GENERATED by `python -m services.common.mesh_policy --write-istio` from\n"
    "# services/common/mesh_policy.py and gen/descriptor.binpb. Do not edit by hand.\n"
)


def _workload(callee: str) -> dict[str, Any]:
    return {"matchLabels": {"app.kubernetes.io/name": callee}}


def _meta(name: str) -> dict[str, Any]:
    return {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "aimesh"}}


def authorization_policies(trust_domain: str = K8S_TRUST_DOMAIN) -> list[dict[str, Any]]:
    """AuthorizationPolicies equivalent to `is_allowed` and `may_forward_identity`."""
    docs: list[dict[str, Any]] = [
        {
            # Baseline: a workload without its own ALLOW policy accepts nothing.
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": _meta("allow-nothing"),
            "spec": {},
        }
    ]
    for callee in (*POLICY, TRITON):
        rules = []
        for rule in rules_for(callee):
            op: dict[str, Any] = {"paths": list(rule.methods)}
            if rule.not_methods:
                op["notPaths"] = list(rule.not_methods)
            rules.append(
                {
                    "from": [
                        {
                            "source": {
                                "principals": [
                                    istio_principal(c, trust_domain) for c in sorted(rule.callers)
                                ]
                            }
                        }
                    ],
                    "to": [{"operation": op}],
                }
            )
        docs.append(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": _meta(f"{callee}-callers"),
                "spec": {"selector": _workload(callee), "action": "ALLOW", "rules": rules},
            }
        )
        if callee != TRITON:
            docs.append(_identity_header_policy(callee, trust_domain))
    docs.append(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": _meta(f"{EDGE}-callers"),
            "spec": {
                "selector": _workload(EDGE),
                "action": "ALLOW",
                "rules": [
                    {
                        "from": [{"source": {"principals": [istio_principal(GATEWAY, trust_domain)]}}],
                        "to": [{"operation": {"paths": [EDGE_PUBLIC_PREFIX + "*"]}}],
                    },
                    {
                        "from": [
                            {
                                "source": {
                                    "principals": [
                                        istio_principal(c, trust_domain) for c in IDENTITIES
                                    ]
                                }
                            }
                        ],
                        "to": [{"operation": {"paths": list(EDGE_HEALTH_PATHS)}}],
                    },
                ],
            },
        }
    )
    return docs


def _identity_header_policy(callee: str, trust_domain: str) -> dict[str, Any]:
    """DENY identity headers from any principal that has no forwarding rule for the path.

    Conditions inside one rule are ANDed and rules are ORed, so every shape below is
    repeated once per identity header: any one of them is enough to be refused.
    """
    forwarding = [r for r in rules_for(callee) if r.forwards_identity]
    callers = sorted(set().union(*(r.callers for r in forwarding))) if forwarding else []
    shapes: list[dict[str, Any]] = []
    # Callers that forward nothing at all: deny the header on every path.
    if callers:
        shapes.append(
            {
                "from": [
                    {
                        "source": {
                            "notPrincipals": [istio_principal(c, trust_domain) for c in callers]
                        }
                    }
                ]
            }
        )
    else:
        shapes.append({})
    # A forwarding caller may present the header only on the paths of its forwarding rules.
    for caller in callers:
        mine = [r for r in forwarding if caller in r.callers]
        source = [{"source": {"principals": [istio_principal(caller, trust_domain)]}}]
        allowed_paths = sorted({p for r in mine for p in r.methods})
        shapes.append({"from": source, "to": [{"operation": {"notPaths": allowed_paths}}]})
        # Paths a forwarding rule carves out (not_methods) stay denied with the header, unless
        # another forwarding rule of the same caller covers them (then Istio could not say it).
        excluded = sorted({p for r in mine for p in r.not_methods})
        for path in excluded:
            if any(r.matches(caller, path) for r in mine):
                raise ValueError(f"{callee}: {caller} both forwards and is denied on {path}")
        if excluded:
            shapes.append({"from": source, "to": [{"operation": {"paths": excluded}}]})
    rules = [
        {**shape, "when": [{"key": f"request.headers[{header}]", "values": ["*"]}]}
        for header in IDENTITY_HEADERS
        for shape in shapes
    ]
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": _meta(f"{callee}-identity-headers"),
        "spec": {"selector": _workload(callee), "action": "DENY", "rules": rules},
    }


# Methods every workload serves besides its own (health, reflection).
COMMON_METHODS: Mapping[str, MethodInfo] = {
    m.path: m
    for m in (
        MethodInfo("/grpc.health.v1.Health/Check", True, False, False),
        MethodInfo("/grpc.health.v1.Health/Watch", True, False, True),
        MethodInfo("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", True, True, True),
        MethodInfo(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True, True, True
        ),
    )
}
TRITON_PORT = 8001
TRITON_STREAMS: tuple[str, ...] = ("/inference.GRPCInferenceService/ModelStreamInfer",)


def host(callee: str) -> str:
    return f"{callee}.{NAMESPACE}.svc.cluster.local"


def port_of(callee: str) -> int:
    return TRITON_PORT if callee == TRITON else SERVICE_PORTS[callee]


def _seconds(value: float) -> str:
    return f"{value:g}s"


def virtual_services(methods: Mapping[str, MethodInfo] | None = None) -> list[dict[str, Any]]:
    """Per service: retries only on idempotent methods, per-try timeouts only on unary ones.

    Route order matters (first match wins): idempotent unary, streams (idempotent server
    streams may retry before the first message, never with a per-try timeout), then the
    catch-all for retry-unsafe unary writes, which Istio must not retry (its default is 2
    retries on unavailable/cancelled, which would replay a write).
    """
    methods = load_methods() if methods is None else methods
    docs: list[dict[str, Any]] = []
    for callee in (*POLICY, TRITON):
        if callee == TRITON:
            mine = [MethodInfo(p, False, True, True) for p in TRITON_STREAMS]
        else:
            services = set(GRPC_SERVICES[callee])
            mine = [m for m in methods.values() if m.service in services]
            mine += list(COMMON_METHODS.values())
        mine.sort(key=lambda m: m.path)
        dest = [{"destination": {"host": host(callee), "port": {"number": port_of(callee)}}}]

        def match(infos: Sequence[MethodInfo]) -> list[dict[str, Any]]:
            return [{"uri": {"exact": m.path}} for m in infos]

        retry_unary = {
            "attempts": RETRY_ATTEMPTS - 1,  # Istio counts retries, not tries
            "perTryTimeout": _seconds(PER_TRY_TIMEOUT_S),
            "retryOn": "unavailable",
        }
        routes: list[dict[str, Any]] = []
        idem_unary = [m for m in mine if m.idempotent and m.unary]
        idem_server_streams = [
            m for m in mine if m.idempotent and m.server_streaming and not m.client_streaming
        ]
        other_streams = [m for m in mine if not m.unary and m not in idem_server_streams]
        if idem_unary:
            routes.append(
                {
                    "name": "idempotent-unary",
                    "match": match(idem_unary),
                    "route": dest,
                    "timeout": _seconds(UNARY_TIMEOUT_S),
                    "retries": retry_unary,
                }
            )
        if idem_server_streams:
            routes.append(
                {
                    "name": "idempotent-server-streams",
                    "match": match(idem_server_streams),
                    "route": dest,
                    # No timeout and no perTryTimeout: either would cut a healthy stream.
                    "retries": {"attempts": RETRY_ATTEMPTS - 1, "retryOn": "unavailable"},
                }
            )
        if other_streams:
            routes.append(
                {
                    "name": "streams",
                    "match": match(other_streams),
                    "route": dest,
                    "retries": {"attempts": 0},
                }
            )
        routes.append(
            {
                "name": "retry-unsafe",
                "route": dest,
                "timeout": _seconds(60.0 if callee == TRITON else UNARY_TIMEOUT_S),
                "retries": {"attempts": 0},
            }
        )
        docs.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": _meta(callee),
                "spec": {"hosts": [host(callee)], "http": routes},
            }
        )
    return docs


def destination_rules() -> list[dict[str, Any]]:
    """ISTIO_MUTUAL, HTTP/2 pools sized for multiplexed gRPC, outlier detection."""
    docs: list[dict[str, Any]] = []
    for callee in (*POLICY, TRITON):
        docs.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": _meta(callee),
                "spec": {
                    "host": host(callee),
                    "trafficPolicy": {
                        "tls": {"mode": "ISTIO_MUTUAL"},
                        "connectionPool": {
                            "tcp": {
                                "maxConnections": 1024,
                                "connectTimeout": "2s",
                                "tcpKeepalive": {"time": "30s", "interval": "10s", "probes": 3},
                            },
                            "http": {
                                "h2UpgradePolicy": "UPGRADE",
                                "http2MaxRequests": 4096,
                                "maxRequestsPerConnection": 0,
                                "maxRetries": 64,
                                "idleTimeout": "300s",
                            },
                        },
                        # UNAVAILABLE/DEADLINE_EXCEEDED map to 503/504 (gateway errors): eject
                        # a dying pod fast. Application errors (INTERNAL, 500) say nothing about
                        # the host, so 5xx-based ejection is off.
                        "outlierDetection": {
                            "consecutiveGatewayErrors": 5,
                            "consecutive5xxErrors": 0,
                            "interval": "5s",
                            "baseEjectionTime": "30s",
                            "maxEjectionPercent": 50,
                        },
                    },
                },
            }
        )
    return docs


def peer_authentications() -> list[dict[str, Any]]:
    """STRICT mesh-wide (root namespace) and in aimesh; the gateway's public port excepted."""
    return [
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "istio-system"},
            "spec": {"mtls": {"mode": "STRICT"}},
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": _meta("default"),
            "spec": {"mtls": {"mode": "STRICT"}},
        },
        {
            # External clients reach Envoy in plaintext/TLS of their own, never mesh mTLS.
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": _meta("gateway-public-port"),
            "spec": {
                "selector": _workload(GATEWAY),
                "mtls": {"mode": "STRICT"},
                "portLevelMtls": {str(GATEWAY_PORT): {"mode": "PERMISSIVE"}},
            },
        },
        {
            # The gateway itself takes public traffic; it is the one workload open to all.
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": _meta("gateway-public"),
            "spec": {
                "selector": _workload(GATEWAY),
                "action": "ALLOW",
                "rules": [{"to": [{"operation": {"ports": [str(GATEWAY_PORT)]}}]}],
            },
        },
    ]


GATEWAY_PORT = 8080


def _dump(docs: Sequence[Mapping[str, Any]]) -> str:
    import yaml

    class NoAliases(yaml.SafeDumper):
        # Shared sub-dicts (a route reused by several routes) are written out in full:
        # anchors and aliases confuse reviewers and some tools.
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return GENERATED_HEADER + "---\n".join(
        yaml.dump(dict(d), Dumper=NoAliases, sort_keys=False, default_flow_style=False, width=100)
        for d in docs
    )


def render_istio(methods: Mapping[str, MethodInfo] | None = None) -> dict[str, str]:
    """File name (under istio/base/mesh/) -> YAML text."""
    methods = load_methods() if methods is None else methods
    return {
        "authorization-policies.yaml": _dump(authorization_policies()),
        "virtual-services.yaml": _dump(virtual_services(methods)),
        "destination-rules.yaml": _dump(destination_rules()),
        "peer-authentication.yaml": _dump(peer_authentications()),
        "kustomization.yaml": GENERATED_HEADER
        + "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
        + "".join(
            f"- {n}\n"
            for n in (
                "peer-authentication.yaml",
                "destination-rules.yaml",
                "virtual-services.yaml",
                "authorization-policies.yaml",
            )
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.mesh_policy", description=__doc__.split("\n")[0]
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write-istio", action="store_true", help="render istio/base/mesh/*.yaml")
    group.add_argument("--check-istio", action="store_true", help="exit 1 if they are stale")
    group.add_argument(
        "--service-config",
        choices=sorted(POLICY),
        help="print the client service config for a callee",
    )
    parser.add_argument("--out", type=Path, default=ISTIO_DIR)
    args = parser.parse_args(argv)
    if args.service_config:
        print(json.dumps(client_service_config(args.service_config), indent=2))
        return 0
    if not DESCRIPTOR_PATH.exists():
        print(
            f"warning: {DESCRIPTOR_PATH} missing: no method is treated as idempotent",
            file=sys.stderr,
        )
    rendered = render_istio()
    stale = []
    for name, text in rendered.items():
        path = args.out / name
        if args.check_istio:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(
            "stale (run python -m services.common.mesh_policy --write-istio):",
            *stale,
            sep="\n  ",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
