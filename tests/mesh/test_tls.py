"""Real mTLS on loopback: a grpc.aio server with the peer-authorization interceptor.

The served RPCs are the standard health service plus a method registered under
Orchestrator's real service name (answering with health messages), so the caller graph of
mesh_policy is exercised without depending on generated aimesh code.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from scripts import ca
from services.common import mesh_policy, tls

CALLEE = "orchestrator"
ORCH = "aimesh.orchestrator.v1.OrchestratorService"
GENERATE = f"/{ORCH}/Generate"


async def _generate(
    request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
) -> health_pb2.HealthCheckResponse:
    return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def _stream(
    request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
) -> AsyncIterator[health_pb2.HealthCheckResponse]:
    for _ in range(3):
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(scope="module")
async def server_port(certs_dir: Path) -> AsyncIterator[int]:
    server = grpc.aio.server(interceptors=[tls.PeerAuthorizationInterceptor(CALLEE)])
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    handlers = {
        "Generate": grpc.unary_unary_rpc_method_handler(
            _generate,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
        "StreamGenerate": grpc.unary_stream_rpc_method_handler(
            _stream,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ORCH, handlers),))
    creds = tls.server_credentials(tls.load_identity(CALLEE, certs_dir))
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    yield port
    await server.stop(None)


def _raw_creds(d: Path, identity: str, trust: Path | None = None) -> grpc.ChannelCredentials:
    # Bypasses load_identity's own checks: the point is what the *server* refuses. The client
    # trusts `trust`'s CA (default: d's), so a failure is the server refusing the client.
    paths = tls.CertPaths(d)
    return grpc.ssl_channel_credentials(
        root_certificates=tls.CertPaths(trust or d).ca_cert.read_bytes(),
        private_key=paths.key(identity).read_bytes(),
        certificate_chain=paths.cert(identity).read_bytes(),
    )


async def _call(
    port: int,
    creds: grpc.ChannelCredentials | None,
    method: str = GENERATE,
    metadata: tuple[tuple[str, str], ...] = (),
    server_name: str = CALLEE,
) -> health_pb2.HealthCheckResponse:
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.insecure_channel(target)
        if creds is None
        else grpc.aio.secure_channel(target, creds, options=tls.channel_options(server_name))
    )
    async with channel:
        call = channel.unary_unary(
            method,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        return await call(health_pb2.HealthCheckRequest(), timeout=5, metadata=metadata)


async def _stream_replies(port: int, creds: grpc.ChannelCredentials) -> list[health_pb2.HealthCheckResponse]:
    """Every reply of the server stream StreamGenerate, as `creds`' identity."""
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{port}", creds, options=tls.channel_options(CALLEE)
    ) as channel:
        call = channel.unary_stream(
            f"/{ORCH}/StreamGenerate",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        return [r async for r in call(health_pb2.HealthCheckRequest(), timeout=5)]


async def test_allowed_caller(server_port: int, certs_dir: Path) -> None:
    creds = tls.channel_credentials(tls.load_identity("conversation", certs_dir))
    reply = await _call(server_port, creds)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_allowed_caller_server_stream(server_port: int, certs_dir: Path) -> None:
    creds = tls.channel_credentials(tls.load_identity("speech", certs_dir))
    assert len(await _stream_replies(server_port, creds)) == 3


async def test_valid_cert_wrong_identity_denied(
    server_port: int, certs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Knowledge holds a valid mesh certificate but never generates.
    creds = tls.channel_credentials(tls.load_identity("knowledge", certs_dir))
    with (
        caplog.at_level(logging.WARNING, logger="aimesh.tls"),
        pytest.raises(grpc.aio.AioRpcError) as err,
    ):
        await _call(server_port, creds)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "knowledge may not call" in (err.value.details() or "")
    assert any("denied" in r.getMessage() and "'knowledge'" in r.getMessage() for r in caplog.records)


async def test_streaming_denied_before_first_message(server_port: int, certs_dir: Path) -> None:
    creds = tls.channel_credentials(tls.load_identity("billing", certs_dir))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _stream_replies(server_port, creds)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_health_open_to_every_mesh_identity(server_port: int, certs_dir: Path) -> None:
    creds = tls.channel_credentials(tls.load_identity("operator", certs_dir))
    reply = await _call(server_port, creds, method="/grpc.health.v1.Health/Check")
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_identity_headers_only_from_forwarders(server_port: int, certs_dir: Path) -> None:
    headers = (("x-aimesh-org", "org-1"), ("x-aimesh-subject", "user-1"))
    conversation = tls.channel_credentials(tls.load_identity("conversation", certs_dir))
    reply = await _call(server_port, conversation, metadata=headers)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # The operator may call health, but not while claiming to be an end user.
    operator = tls.channel_credentials(tls.load_identity("operator", certs_dir))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(server_port, operator, "/grpc.health.v1.Health/Check", headers)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "identity headers" in (err.value.details() or "")


async def test_plaintext_client_refused(server_port: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(server_port, None)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_server_only_tls_client_without_cert_refused(
    server_port: int, certs_dir: Path
) -> None:
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.CertPaths(certs_dir).ca_cert.read_bytes()
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(server_port, creds)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_cert_from_another_ca_refused(
    server_port: int, certs_dir: Path, foreign_certs_dir: Path
) -> None:
    # Same identity, same SAN, but signed by a CA the server does not trust.
    creds = _raw_creds(foreign_certs_dir, "conversation", trust=certs_dir)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(server_port, creds)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_expired_cert_refused(server_port: int, expired_certs_dir: Path) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(server_port, _raw_creds(expired_certs_dir, "conversation"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_expired_cert_rejected_with_clear_message(
    expired_certs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="aimesh.tls"),
        pytest.raises(tls.CertificateError, match="expired at"),
    ):
        tls.load_identity("conversation", expired_certs_dir)
    assert any(
        "refusing to use TLS material for conversation" in r.getMessage() for r in caplog.records
    )


def test_foreign_cert_rejected_with_clear_message(certs_dir: Path, foreign_certs_dir: Path) -> None:
    paths, foreign = tls.CertPaths(certs_dir), tls.CertPaths(foreign_certs_dir)
    with pytest.raises(tls.CertificateError, match="not issued by the local CA"):
        tls.verify_leaf(
            tls.load_cert(foreign.cert("speech")), tls.load_cert(paths.ca_cert), "speech"
        )


def test_cert_for_other_identity_rejected(certs_dir: Path) -> None:
    paths = tls.CertPaths(certs_dir)
    with pytest.raises(tls.CertificateError, match="SAN URI"):
        tls.verify_leaf(tls.load_cert(paths.cert("speech")), tls.load_cert(paths.ca_cert), "auth")


async def test_client_verifies_server_identity(server_port: int, certs_dir: Path) -> None:
    # The server holds orchestrator's certificate; a client expecting auth must not talk to it.
    creds = tls.channel_credentials(tls.load_identity("conversation", certs_dir))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(server_port, creds, server_name="auth")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_ensure_is_idempotent_and_keeps_valid_ca(tmp_path: Path) -> None:
    first = ca.ensure_certificates(tmp_path)
    assert first.ca_created and set(first.issued) == set(mesh_policy.IDENTITIES)
    ca_before = (tmp_path / "ca.pem").read_bytes()
    leaf_before = (tmp_path / "usage.pem").read_bytes()
    second = ca.ensure_certificates(tmp_path)
    assert not second.ca_created and second.issued == ()
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    assert (tmp_path / "usage.pem").read_bytes() == leaf_before
    assert os.stat(tmp_path / "ca-key.pem").st_mode & 0o077 == 0
    # A missing leaf is re-issued by the same CA; the others are left alone.
    (tmp_path / "usage.pem").unlink()
    third = ca.ensure_certificates(tmp_path)
    assert third.issued == ("usage",) and (tmp_path / "ca.pem").read_bytes() == ca_before
    # A leaf close to expiry is renewed.
    fourth = ca.ensure_certificates(tmp_path, ["billing"], renew_before=dt.timedelta(days=365))
    assert fourth.issued == ("billing",)


def test_ensure_refuses_to_replace_expired_ca(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    cert, key = ca.create_ca(not_before=past, validity=dt.timedelta(days=1))
    (tmp_path / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca-key.pem").write_bytes(ca.key_pem(key))
    with pytest.raises(tls.CertificateError, match="expired"):
        ca.ensure_certificates(tmp_path)


def test_xfcc_identity() -> None:
    header = (
        "By=spiffe://cluster.local/ns/aimesh/sa/orchestrator;Hash=abc;"
        'Subject="";URI=spiffe://cluster.local/ns/aimesh/sa/conversation'
    )
    assert tls.xfcc_identity(header) == "conversation"
    assert tls.xfcc_identity("Hash=abc;URI=spiffe://evil.example/ns/aimesh/sa/gateway") is None
    assert tls.xfcc_identity("Hash=abc") is None
    # A quoted subject with commas; the sidecar's own (last) element wins over a forged one.
    forged = "Hash=x;URI=spiffe://cluster.local/ns/aimesh/sa/gateway"
    real = 'Hash=y;Subject="CN=a,O=b;c";URI=spiffe://cluster.local/ns/aimesh/sa/speech'
    assert tls.xfcc_identity(f"{forged},{real}") == "speech"


async def test_server_logs_why_it_refused_a_handshake(
    certs_dir: Path, expired_certs_dir: Path, foreign_certs_dir: Path
) -> None:
    """The refusing side says why, in its own log (gRPC core's handshake log line)."""
    import asyncio
    import sys

    root = Path(__file__).resolve().parents[2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.mesh.mtls_server",
        str(certs_dir),
        "auth",
        cwd=root,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GRPC_VERBOSITY": "INFO"},
    )
    try:
        assert proc.stdout is not None
        port = int(await asyncio.wait_for(proc.stdout.readline(), 30))
        for creds in (
            _raw_creds(expired_certs_dir, "conversation"),
            _raw_creds(foreign_certs_dir, "conversation", trust=certs_dir),
        ):
            with pytest.raises(grpc.aio.AioRpcError):
                await _call(port, creds, method="/grpc.health.v1.Health/Check", server_name="auth")
    finally:
        proc.terminate()
        _, stderr_bytes = await asyncio.wait_for(proc.communicate(), 30)
    stderr = stderr_bytes.decode()
    assert "certificate has expired" in stderr, stderr
    assert "unable to get local issuer certificate" in stderr, stderr


@pytest.fixture(scope="module")
async def xfcc_port() -> AsyncIterator[int]:
    # Kubernetes mode: plaintext behind the sidecar, caller identity from its XFCC header.
    server = grpc.aio.server(interceptors=[tls.interceptor_for(CALLEE, "istio")])
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    handlers = {
        "Generate": grpc.unary_unary_rpc_method_handler(
            _generate,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ORCH, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port
    await server.stop(None)


def _xfcc(identity: str) -> tuple[tuple[str, str], ...]:
    uri = mesh_policy.spiffe_id(identity, mesh_policy.K8S_TRUST_DOMAIN)
    return (
        ("x-forwarded-client-cert", f"By=spiffe://cluster.local/ns/aimesh/sa/{CALLEE};URI={uri}"),
    )


async def test_istio_mode_uses_sidecar_identity(xfcc_port: int) -> None:
    reply = await _call(xfcc_port, None, metadata=_xfcc("conversation"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(xfcc_port, None, metadata=_xfcc("knowledge"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(xfcc_port, None)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_istio_mode_lets_local_probes_reach_health_only(xfcc_port: int) -> None:
    # pilot-agent's rewritten kubelet probe: localhost, no sidecar, no XFCC.
    reply = await _call(xfcc_port, None, method="/grpc.health.v1.Health/Check")
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(xfcc_port, None)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "x-forwarded-client-cert" in (err.value.details() or "")


def test_interceptor_rejects_unknown_callee_and_mode() -> None:
    with pytest.raises(ValueError, match="not a service"):
        tls.PeerAuthorizationInterceptor("nonexistent")
    with pytest.raises(ValueError, match="identity source"):
        tls.PeerAuthorizationInterceptor("usage", mode="bogus")  # type: ignore[arg-type]
