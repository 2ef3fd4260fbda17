"""A chat stack for these tests: its own Orchestrator and Conversation processes (on free ports)
whose catalog adds test models served by the local provider replay server, next to the
session mesh's Knowledge/Usage/Triton. Hosted APIs cannot be reached from here."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from scripts.stack import Stack
from services.common.channels import open_channel
from tests.integration.chat.replay_server import Replay, start_replay
from tests.support.mesh import TestMesh, free_port

CATALOG = Path(__file__).resolve().parents[3] / "services" / "orchestrator" / "catalog.json"
CIRCUIT_THRESHOLD = 2
CIRCUIT_OPEN_SECONDS = 1.0
TINY_WINDOW = 400  # tokens, for history-trimming tests
PRICED = ("claude-test", "doomed-test")


@dataclass
class ChatStack:
    stack: Stack
    replay: Replay
    orchestrator: grpc.aio.Channel
    conversation: grpc.aio.Channel
    usage: grpc.aio.Channel | None  # None when the Usage service could not start


def _catalog(base: str, path: Path) -> None:
    data = json.loads(CATALOG.read_text())
    test_models = {
        "slow-test": [{"provider": "openai", "deployment": "endless", "base_url": f"{base}/v1"}],
        "fallback-test": [
            {"provider": "openai", "deployment": "die-before-first", "base_url": f"{base}/v1", "priority": 0},
            {"provider": "triton", "deployment": "grounded_responder", "priority": 1},
        ],
        "flaky-test": [{"provider": "openai", "deployment": "flaky", "base_url": f"{base}/v1"}],
        "flaky-conv-test": [{"provider": "openai", "deployment": "flaky-conv", "base_url": f"{base}/v1"}],
        "claude-test": [{"provider": "anthropic", "deployment": "ok", "base_url": base}],
        "picky-test": [{"provider": "openai", "deployment": "picky", "base_url": f"{base}/v1"}],
        "tiny-test": [{"provider": "triton", "deployment": "grounded_responder"}],
        # Early metadata: a provider that accepted the request and holds its answer; one that
        # accepts and then dies before any text, alone (last candidate) and as a primary.
        "held-test": [{"provider": "openai", "deployment": "held", "base_url": f"{base}/v1"}],
        # (one deployment name each: every test starts with a closed circuit)
        "doomed-test": [{"provider": "openai", "deployment": "accept-then-die", "base_url": f"{base}/v1"}],
        "doomed-conv-test": [{"provider": "openai", "deployment": "accept-then-die-conv", "base_url": f"{base}/v1"}],
        # Refused (503), then its fallback model doomed-fallback-last-test dies after acceptance.
        "doomed-fallback-test": [{"provider": "openai", "deployment": "overloaded", "base_url": f"{base}/v1"}],
        "doomed-fallback-last-test": [
            {"provider": "openai", "deployment": "accept-then-die-last", "base_url": f"{base}/v1"}],
        "doomed-primary-test": [
            {"provider": "openai", "deployment": "accept-then-die-primary", "base_url": f"{base}/v1", "priority": 0},
            {"provider": "triton", "deployment": "grounded_responder", "priority": 1},
        ],
    }
    for name, deployments in test_models.items():
        data["models"].append({
            # Priced, so generations of it take a budget hold at Usage.
            "prompt_price_micros_per_million_tokens": 1_000_000 if name in PRICED else 0,
            "completion_price_micros_per_million_tokens": 2_000_000 if name in PRICED else 0,
            "name": name, "display_name": name, "description": "test model (local replay server)",
            "context_window_tokens": TINY_WINDOW if name == "tiny-test" else 4096,
            "max_output_tokens": 64 if name == "tiny-test" else 256, "capabilities": ["CHAT", "STREAMING", "RETRIEVAL"],
            "deployments": deployments,
            **({"fallback_models": ["doomed-fallback-last-test"]} if name == "doomed-fallback-test" else {}),
        })
    path.write_text(json.dumps(data))


@pytest.fixture(scope="session")
async def chat(mesh: TestMesh) -> AsyncIterator[ChatStack]:
    mesh.ensure_triton()
    # Knowledge as in production: the Orchestrator asks it whether an organization has
    # documents to ground on (started first, so its channel is not left in reconnect backoff).
    mesh.ensure("usage", "knowledge")
    usage: grpc.aio.Channel | None = mesh.channel("usage")
    replay, runner, base = await start_replay()
    catalog = mesh.var_dir / "chat-catalog.json"
    _catalog(base, catalog)
    overrides = dict(mesh.env)
    overrides.update({
        "AIMESH_ORCHESTRATOR_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_CONVERSATION_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_ORCHESTRATOR_CATALOG": str(catalog),
        "AIMESH_CIRCUIT_FAILURE_THRESHOLD": str(CIRCUIT_THRESHOLD),
        "AIMESH_CIRCUIT_OPEN_SECONDS": str(CIRCUIT_OPEN_SECONDS),
        "AIMESH_PROVIDER_FIRST_TOKEN_SECONDS": "30",  # Triton is shared and CPU-bound here
        "AIMESH_GUARDRAIL_BLOCKLIST": "forbidden phrase",
    })
    stack = Stack.create(overrides, log_dir=mesh.var_dir / "log" / "chat")
    try:
        for service in ("orchestrator", "conversation"):
            stack.start_service(service)
        stack.wait_ready(["orchestrator", "conversation"], timeout=60)
        # As the mesh identities that may call them (under mTLS, with their certificates):
        # only Conversation (and Speech) call the Orchestrator; clients reach Conversation
        # through the gateway.
        orchestrator = open_channel(stack.settings, "orchestrator", caller="conversation")
        conversation = open_channel(stack.settings, "conversation", caller="gateway")
        yield ChatStack(stack, replay, orchestrator, conversation, usage)
        await orchestrator.close()
        await conversation.close()
    finally:
        stack.stop_all()
        await runner.cleanup()
