"""Run the edge: uvicorn serving the FastAPI app, behind the gateway only.

Peer authorization mirrors the gRPC services (services/common/tls.py): in `mtls` mode the
listener requires a certificate from the local CA and records each connection's SPIFFE
identity; `mesh_policy.edge_allows` then decides per request (the gateway on /openai/v1/*,
any mesh identity on the health paths). In `istio` mode the sidecar's XFCC header names the
peer; `plaintext` is for debugging only. Identity headers (x-aimesh-*) are trusted only because
nobody but the gateway, which sets them after authentication, reaches the public paths.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.common import mesh_policy, metrics, telemetry, tls
from services.common.channels import set_process_identity
from services.common.config import ConfigError, Settings
from services.edge.realtime_events import WEBSOCKET_MAX_BYTES

log = logging.getLogger("aimesh.edge")

# Open connections' verified mesh identities, keyed by the peer address the ASGI scope carries.
_PEERS: dict[tuple[str, int], str] = {}


def _peer_key(address: Any) -> tuple[str, int] | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


def _identity_of(cert: dict[str, Any] | None) -> str | None:
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "URI":
            identity = mesh_policy.identity_from_spiffe(value)
            if identity is not None:
                return identity
    return None


class MeshPeerProtocol(HttpToolsProtocol):
    """HTTP/1.1 (httptools, the C parser uvicorn prefers) that closes connections whose client
    certificate names no mesh identity."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        identity = _identity_of(transport.get_extra_info("peercert"))
        key = _peer_key(transport.get_extra_info("peername"))
        if identity is None or key is None:
            log.warning("refusing a connection without a mesh certificate")
            transport.close()
            return
        _PEERS[key] = identity

    def connection_lost(self, exc: Exception | None) -> None:
        key = _peer_key(self.transport.get_extra_info("peername")) if self.transport else None
        if key is not None:
            _PEERS.pop(key, None)
        super().connection_lost(exc)


class PeerGuard:
    """ASGI middleware: refuse requests the caller graph does not allow this peer to send."""

    def __init__(self, app: Any, mode: str) -> None:
        self.app = app
        self.mode = mode
        if mode == "plaintext":
            log.warning("edge: PLAINTEXT mode, peer authorization is OFF (debugging only)")

    def caller(self, scope: dict[str, Any]) -> str | None:
        if self.mode == "istio":
            for name, value in scope.get("headers", ()):
                if name == b"x-forwarded-client-cert":
                    return tls.xfcc_identity(value.decode("latin-1"))
            return None
        key = _peer_key(scope.get("client"))
        return _PEERS.get(key) if key is not None else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and self.mode != "plaintext":
            caller = self.caller(scope)
            if caller is None or not mesh_policy.edge_allows(caller, scope["path"]):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = json.dumps(
                    {
                        "error": {
                            "message": f"peer {caller or 'unknown'} may not call "
                            f"{scope['path']} on the edge",
                            "type": "permission_error",
                            "param": None,
                            "code": "peer_not_allowed",
                        }
                    }
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        try:
            await self.app(scope, receive, send)
        finally:
            # An upgraded connection never reaches the HTTP protocol's connection_lost (uvicorn
            # swaps in its WebSocket protocol): its peer entry goes when its one socket ends.
            if scope["type"] == "websocket":
                key = _peer_key(scope.get("client"))
                if key is not None:
                    _PEERS.pop(key, None)


def build_config(settings: Settings) -> uvicorn.Config:
    from services.edge.app import create_app

    host, _, port = settings.address_of(mesh_policy.EDGE).rpartition(":")
    options: dict[str, Any] = {}
    if settings.tls_mode == "mtls":
        certs = settings.certs_path
        tls.load_identity(mesh_policy.EDGE, certs)  # verifies the material, fails loudly
        options = {
            "ssl_certfile": str(tls.CertPaths(certs).cert(mesh_policy.EDGE)),
            "ssl_keyfile": str(tls.CertPaths(certs).key(mesh_policy.EDGE)),
            "ssl_ca_certs": str(tls.CertPaths(certs).ca_cert),
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
            "http": MeshPeerProtocol,
        }
    return uvicorn.Config(
        telemetry.AsgiTelemetry(PeerGuard(create_app(settings), settings.tls_mode)),
        host=host,
        port=int(port),
        lifespan="on",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        # The standard loop, not uvloop (which "auto" would pick now that the gRPC services
        # use it): under uvloop the Realtime bridge hands Speech its audio in other chunks, and
        # the recognizer hears a sentence differently (test_edge_realtime's WER check).
        loop="asyncio",
        ws="websockets",
        ws_max_size=WEBSOCKET_MAX_BYTES,
        timeout_graceful_shutdown=int(settings.drain_seconds) or 1,
        **options,
    )


def main() -> None:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise SystemExit(f"edge: configuration error: {exc}") from None
    telemetry.configure(
        mesh_policy.EDGE, settings.log_level, settings.trace_console, settings.otlp_endpoint,
        settings.trace_sample_percent
    )
    metrics.serve(
        mesh_policy.EDGE, settings.metrics_address_of(mesh_policy.EDGE), on=settings.metrics_enabled
    )
    set_process_identity(mesh_policy.EDGE)
    uvicorn.Server(build_config(settings)).run()
