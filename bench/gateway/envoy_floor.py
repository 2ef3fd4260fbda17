"""The floor of any Envoy gateway in front of Auth: a second, minimal Envoy that only routes.

One listener (HTTP/2 for gRPC, plaintext like the gateway's), the router filter alone, every
request to Auth's cluster exactly as the real gateway defines it (scripts/gateway.py
service_cluster: the same HTTP/2 keepalive, health checks, outlier detection and, in mtls mode,
the gateway's client certificate). Nothing else the gateway runs: no header stripping, no CORS,
Lua, transcoder, jwt_authn or ext_authz, no retry policy, no access log. Run with the same envoy
binary and --concurrency as the gateway, a client that sends the identity headers the gateway
would set makes Auth do the same work as on bench.gateway's direct path: the difference is
Envoy's routing hop alone, which no Envoy gateway can avoid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scripts.gateway import (
    DOWNSTREAM_HTTP2,
    MAX_REQUEST_BYTES,
    STREAM_IDLE_TIMEOUT,
    envoy_argv,
    is_ready,
    service_cluster,
)
from scripts.stack import Stack
from services.common.config import Settings
from tests.support.mesh import free_port

PROCESS = "envoy_floor"  # its name among the stack's processes (and its log file's)
_TYPES = "type.googleapis.com/envoy.extensions.filters"


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def render_floor(settings: Settings, listen_port: int) -> dict[str, Any]:
    """The routing-only bootstrap: 127.0.0.1:`listen_port` -> Auth (admin on a free port)."""
    connection_manager = {
        "@type": f"{_TYPES}.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "floor",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "route_config": {
            "name": "floor",
            "virtual_hosts": [{
                "name": "auth", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "auth"}}],
            }],
        },
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": f"{_TYPES}.http.router.v3.Router"},
        }],
        # The gateway's own downstream HTTP/2 settings.
        "http2_protocol_options": DOWNSTREAM_HTTP2,
        "stream_idle_timeout": STREAM_IDLE_TIMEOUT,
    }
    listener = {
        "name": "floor",
        "address": _address("127.0.0.1", listen_port),
        "per_connection_buffer_limit_bytes": MAX_REQUEST_BYTES,
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": connection_manager,
        }]}],
    }
    return {
        "admin": {"address": _address("127.0.0.1", 0)},
        "static_resources": {
            "listeners": [listener],
            "clusters": [service_cluster(settings, "auth")],
        },
    }


def start_floor(stack: Stack, timeout: float = 60) -> str:
    """Start the routing-only Envoy as one of `stack`'s processes (stopped with the stack);
    its listener address once Envoy is ready (Auth's cluster health-checked)."""
    port = free_port()
    out_dir = Path(stack.settings.var_dir) / PROCESS
    out_dir.mkdir(parents=True, exist_ok=True)
    config, admin_file = out_dir / "envoy.json", out_dir / "admin-address.txt"
    config.write_text(json.dumps(render_floor(stack.settings, port), indent=1))
    admin_file.unlink(missing_ok=True)
    stack.spawn(PROCESS, envoy_argv(config, admin_file),  # the gateway's --concurrency
                lambda: is_ready(admin_file))
    stack.wait_ready([PROCESS], timeout=timeout)
    return f"127.0.0.1:{port}"
