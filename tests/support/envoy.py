"""A minimal Envoy bootstrap for tests that exercise one piece of the gateway in isolation."""

from __future__ import annotations

from typing import Any

from scripts import gateway

ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def one_route_bootstrap(listen_port: int, upstream_port: int, http_filters: list[dict[str, Any]],
                        transport_socket: dict[str, Any] | None = None) -> dict[str, Any]:
    """One listener on 127.0.0.1:`listen_port` sending every request through `http_filters`
    and the router to an `auth` cluster at 127.0.0.1:`upstream_port`, built by the gateway's
    own upstream_cluster()."""
    connection_manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters."
        "network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "test",
        "codec_type": "AUTO",
        "route_config": {
            "virtual_hosts": [
                {"name": "all", "domains": ["*"],
                 "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "auth"}}]}
            ]
        },
        "http_filters": [*http_filters, ROUTER],
    }
    listener = {
        "name": "test",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": connection_manager}]}],
    }
    cluster = gateway.upstream_cluster("auth", f"127.0.0.1:{upstream_port}", health_check=False,
                                       transport_socket=transport_socket)
    return {"static_resources": {"listeners": [listener], "clusters": [cluster]}}
