"""The mesh half of istio/base: manifests rendered from the caller graph and the protos.

PeerAuthentication (STRICT mTLS), DestinationRules, VirtualServices (retries only for the
methods the protos declare idempotent, the same set the gRPC clients retry) and the
AuthorizationPolicies equivalent to `mesh_policy.is_allowed` / `may_forward_identity`. The
runtime keeps the graph (services/common/mesh_policy.py); this is deploy-time rendering, run by
istio/tools/render.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from services.common.config import SERVICE_PORTS
from services.common.identity import IDENTITY_HEADERS
from services.common.mesh_policy import (
    EDGE,
    EDGE_HEALTH_PATHS,
    EDGE_PUBLIC_PREFIX,
    GATEWAY,
    GATEWAY_ONLY_HEADERS,
    GRPC_SERVICES,
    IDENTITIES,
    K8S_TRUST_DOMAIN,
    NAMESPACE,
    PER_TRY_TIMEOUT_S,
    POLICY,
    RETRY_ATTEMPTS,
    TRITON,
    UNARY_TIMEOUT_S,
    MethodInfo,
    load_methods,
    rules_for,
    spiffe_id,
)

GATEWAY_PORT = 8080


def istio_principal(identity: str, trust_domain: str = K8S_TRUST_DOMAIN) -> str:
    """Istio's `source.principals` form: the SPIFFE id without the scheme."""
    return spiffe_id(identity, trust_domain).removeprefix("spiffe://")



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
    docs.append(_edge_policy(trust_domain))
    return docs


def _edge_policy(trust_domain: str) -> dict[str, Any]:
    """The HTTP edge is not gRPC: the gateway may send its public prefix, anyone its probes
    (what `mesh_policy.edge_allows` says locally)."""
    return {
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
    # A verified-JWT payload from anyone but the gateway (mesh_policy.GATEWAY_ONLY_HEADERS).
    gateway = [istio_principal(GATEWAY, trust_domain)]
    rules += [
        {
            "from": [{"source": {"notPrincipals": gateway}}],
            "when": [{"key": f"request.headers[{header}]", "values": ["*"]}],
        }
        for header in GATEWAY_ONLY_HEADERS
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


def documents(methods: Mapping[str, MethodInfo] | None = None) -> dict[str, list[dict[str, Any]]]:
    """File name (under istio/base/mesh/, in kustomization order) -> its manifests."""
    methods = load_methods() if methods is None else methods
    return {
        "peer-authentication.yaml": peer_authentications(),
        "destination-rules.yaml": destination_rules(),
        "virtual-services.yaml": virtual_services(methods),
        "authorization-policies.yaml": authorization_policies(),
    }
