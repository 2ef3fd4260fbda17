"""A whole platform behind its own Envoy gateway for the client SDK tests (Python wheel in a
fresh virtualenv, TypeScript SDK under node, the console in Chromium): the session mesh's
Auth, Usage, Knowledge, Speech, Billing and Triton, plus this package's own Orchestrator and
Conversation whose catalog adds `priced-test` — the grounded responder at a price, because the
platform default model is free and budgets only hold priced generations."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scripts.stack import Stack
from tests.support.mesh import TestMesh, free_port

REPO = Path(__file__).resolve().parents[3]
CATALOG = REPO / "services" / "orchestrator" / "catalog.json"


def _catalog(path: Path) -> None:
    data = json.loads(CATALOG.read_text())
    data["models"].append({
        "name": "priced-test", "display_name": "priced-test",
        "description": "test model: the grounded responder at a price (budget tests)",
        "context_window_tokens": 8192, "max_output_tokens": 256,
        "prompt_price_micros_per_million_tokens": 1_000_000,
        "completion_price_micros_per_million_tokens": 1_000_000, "currency_code": "USD",
        "capabilities": ["CHAT", "STREAMING", "RETRIEVAL"],
        "deployments": [{"provider": "triton", "deployment": "grounded_responder"}],
    })
    path.write_text(json.dumps(data))


@pytest.fixture(scope="session")
def platform(mesh_process: TestMesh) -> Iterator[str]:
    """host:port of a gateway in front of every service."""
    mesh = mesh_process
    mesh.ensure_triton()
    mesh.ensure("auth", "usage", "knowledge", "speech", "billing")
    var_dir = mesh.var_dir / "sdk"
    var_dir.mkdir(exist_ok=True)
    catalog = var_dir / "catalog.json"
    _catalog(catalog)
    overrides = dict(mesh.env)
    overrides.update({
        "AIMESH_VAR_DIR": str(var_dir),
        "AIMESH_CERTS_DIR": str(mesh.settings.certs_path),
        "AIMESH_ORCHESTRATOR_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_CONVERSATION_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_GATEWAY_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_GATEWAY_ADMIN_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_ORCHESTRATOR_CATALOG": str(catalog),
        "AIMESH_PROVIDER_FIRST_TOKEN_SECONDS": "30",  # Triton is shared and CPU-bound here
    })
    stack = Stack.create(overrides, log_dir=var_dir / "log")
    try:
        for service in ("orchestrator", "conversation"):
            stack.start_service(service)
        stack.wait_ready(["orchestrator", "conversation"], timeout=90)
        if stack.start_gateway() is None:
            raise RuntimeError("no gateway configuration")
        stack.wait_ready(["gateway"], timeout=60)
        address = stack.settings.gateway_addr
        # Envoy is ready with its listener; wait until it also reaches Auth (JWKS through it).
        for _ in range(150):
            try:
                if httpx.get(f"http://{address}/.well-known/jwks.json", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield address
    finally:
        stack.stop_all()
