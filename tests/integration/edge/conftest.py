"""The OpenAI-compatible edge through the real gateway: Envoy, Auth, Usage, Orchestrator,
Knowledge, Speech and the edge from the session mesh, Triton shared. Clients are the official
`openai` package (as users run it) and httpx for raw wire checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from tests.support.accounts import Account, create_key, sign_up
from tests.support.mesh import TestMesh


@pytest.fixture(scope="session")
async def edge_gateway(mesh: TestMesh) -> str:
    mesh.ensure_triton()
    mesh.ensure("auth", "usage", "orchestrator", "edge")
    base = f"http://{mesh.ensure_gateway()}"
    # Envoy is ready with its listener; wait until its health checks also see Auth and the edge.
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        for _ in range(200):
            jwks = await client.get("/.well-known/jwks.json")
            edge = await client.get("/openai/v1/models")
            if jwks.status_code == 200 and edge.status_code == 401:
                break
            await asyncio.sleep(0.1)
    return base


@pytest.fixture(scope="session")
async def edge_http(edge_gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=edge_gateway, timeout=60) as client:
        yield client


@pytest.fixture
async def edge_account(edge_http: httpx.AsyncClient) -> Account:
    return await sign_up(edge_http)


@pytest.fixture
async def api_key(edge_http: httpx.AsyncClient, edge_account: Account) -> str:
    return (await create_key(edge_http, edge_account))["secret"]


@pytest.fixture
async def client(edge_gateway: str, api_key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{edge_gateway}/openai/v1", api_key=api_key,
                                  max_retries=0, timeout=120) as oa:
        yield oa
