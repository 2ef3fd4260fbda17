"""The OpenAI-compatible edge through a real gateway. This package runs its own Orchestrator
(whose catalog adds models served by the local OpenAI-compatible replay server: hosted APIs
cannot be reached from here), a Conversation and a Speech on it, its own edge and its own Envoy
in front of them, next to the session mesh's Auth, Usage, Knowledge and the shared Triton.
Clients are the official `openai` package (as users run it) and httpx for raw wire checks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from scripts.stack import Stack
from tests.integration.chat.replay_server import Replay, start_replay
from tests.support.accounts import Account, create_key, sign_up
from tests.support.mesh import TestMesh, free_port

CATALOG = Path(__file__).resolve().parents[3] / "services" / "orchestrator" / "catalog.json"
DEFAULT_MODEL = "grounded-extractive-v1"


@dataclass
class EdgeStack:
    stack: Stack
    replay: Replay
    base_url: str  # the gateway, http://host:port

    @property
    def openai_base(self) -> str:
        return f"{self.base_url}/openai/v1"


def _catalog(replay_base: str, path: Path) -> None:
    data = json.loads(CATALOG.read_text())
    test_models = {
        # Function calling against the replay server's documented tool-call stream.
        "tools-test": ("tools", ["CHAT", "STREAMING", "TOOLS", "JSON_MODE"], 0),
        # Priced, so calls take a budget hold at Usage and cost money in the ledger.
        "priced-test": ("ok", ["CHAT", "STREAMING"], 1_000_000),
        # Streams words until cancelled (the Realtime bridge's response.cancel and barge-in).
        "endless-test": ("endless", ["CHAT", "STREAMING"], 0),
        # Accepts (200), then dies before any text: the Orchestrator's metadata comes before
        # its error status (no fallback is left), which callers must still see as an error.
        "doomed-test": ("accept-then-die", ["CHAT", "STREAMING"], 0),
    }
    for name, (scenario, caps, price) in test_models.items():
        data["models"].append({
            "name": name, "display_name": name, "description": "test model (local replay server)",
            "context_window_tokens": 4096, "max_output_tokens": 256, "capabilities": caps,
            "prompt_price_micros_per_million_tokens": price,
            "completion_price_micros_per_million_tokens": 2 * price,
            "deployments": [{"provider": "openai", "deployment": scenario,
                             "base_url": f"{replay_base}/v1"}],
        })
    path.write_text(json.dumps(data))


@pytest.fixture(scope="session")
async def edge(mesh: TestMesh) -> AsyncIterator[EdgeStack]:
    mesh.ensure_triton()
    mesh.ensure("auth", "usage", "knowledge")
    replay, runner, replay_base = await start_replay()
    catalog = mesh.var_dir / "edge-catalog.json"
    _catalog(replay_base, catalog)
    overrides = dict(mesh.env)
    overrides.update({
        "AIMESH_ORCHESTRATOR_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_CONVERSATION_ADDR": f"127.0.0.1:{free_port()}",
        # Its own Speech too, so that Converse (the Realtime voice loop) answers from this
        # Conversation and Orchestrator, whose catalog has the replay models.
        "AIMESH_SPEECH_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_EDGE_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_GATEWAY_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_ORCHESTRATOR_CATALOG": str(catalog),
        # Its own Envoy config and admin file; the same CA as the session mesh.
        "AIMESH_VAR_DIR": str(mesh.var_dir / "edge-stack"),
        "AIMESH_CERTS_DIR": str(mesh.settings.certs_path),
        "AIMESH_PROVIDER_FIRST_TOKEN_SECONDS": "60",  # Triton is shared and CPU-bound here
        # Realtime sessions idle this long are closed (test_edge_realtime waits it out).
        "AIMESH_REALTIME_IDLE_SECONDS": "10",
    })
    stack = Stack.create(overrides, log_dir=mesh.var_dir / "log" / "edge")
    try:
        for service in ("orchestrator", "conversation", "speech", "edge"):
            stack.start_service(service)
        stack.wait_ready(["orchestrator", "conversation", "speech", "edge"], timeout=180)
        stack.start_gateway()
        stack.wait_ready(["gateway"], timeout=60)
        base = f"http://{stack.settings.gateway_addr}"
        # Envoy is ready with its listener; wait until its health checks see Auth and the edge.
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            for _ in range(200):
                jwks = await client.get("/.well-known/jwks.json")
                models = await client.get("/openai/v1/models")
                if jwks.status_code == 200 and models.status_code == 401:
                    break
                await asyncio.sleep(0.1)
        yield EdgeStack(stack, replay, base)
    finally:
        stack.stop_all()
        await runner.cleanup()


@pytest.fixture(scope="session")
async def edge_http(edge: EdgeStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=120) as client:
        yield client


@pytest.fixture
async def edge_account(edge_http: httpx.AsyncClient) -> Account:
    return await sign_up(edge_http)


@pytest.fixture
async def api_key(edge_http: httpx.AsyncClient, edge_account: Account) -> str:
    return (await create_key(edge_http, edge_account))["secret"]


@pytest.fixture
async def client(edge: EdgeStack, api_key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=edge.openai_base, api_key=api_key, max_retries=0,
                                  timeout=180) as oa:
        yield oa
