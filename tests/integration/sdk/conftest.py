"""A whole platform behind its own Envoy gateway for the client SDK tests (Python wheel in a
fresh virtualenv, TypeScript SDK under node, the console in Chromium): the session mesh's
Auth, Usage, Knowledge, Speech, Billing and Triton, plus this package's own Orchestrator,
Conversation and edge (the Realtime bridge). The Orchestrator's catalog adds `priced-test` — the
grounded responder at a price, because the platform default model is free and budgets only hold
priced generations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from scripts import build_sdk
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
        # The edge serves the Realtime WebSocket bridge (live transcription in the console).
        "AIMESH_EDGE_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_GATEWAY_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_GATEWAY_ADMIN_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_ORCHESTRATOR_CATALOG": str(catalog),
        "AIMESH_PROVIDER_FIRST_TOKEN_SECONDS": "30",  # Triton is shared and CPU-bound here
    })
    stack = Stack.create(overrides, log_dir=var_dir / "log")
    try:
        for service in ("orchestrator", "conversation", "edge"):
            stack.start_service(service)
        stack.wait_ready(["orchestrator", "conversation", "edge"], timeout=120)
        if stack.start_gateway() is None:
            raise RuntimeError("no gateway configuration")
        stack.wait_ready(["gateway"], timeout=60)
        address = stack.settings.gateway_addr
        # Envoy is ready with its listener; wait until it also reaches Auth (JWKS through it)
        # and the edge (401 from an unauthenticated call there).
        for _ in range(150):
            try:
                base = f"http://{address}"
                if (httpx.get(f"{base}/.well-known/jwks.json", timeout=2).status_code == 200
                        and httpx.get(f"{base}/openai/v1/models", timeout=2).status_code == 401):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield address
    finally:
        stack.stop_all()


@dataclass
class Venv:
    root: Path  # a temporary folder outside the repository

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def aimesh(self) -> Path:
        return self.root / "venv" / "bin" / "aimesh"

    def env(self, gateway: str, **extra: str) -> dict[str, str]:
        # Nothing of the repository: no PYTHONPATH, a private HOME and config folder.
        return {"PATH": f"{self.python.parent}:/usr/bin:/bin", "HOME": str(self.root / "home"),
                "XDG_CONFIG_HOME": str(self.root / "config"), "AIMESH_GATEWAY_ADDR": gateway,
                "LANG": "C.UTF-8", **extra}

    def cli(self, gateway: str, *args: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.aimesh), *args], check=False, cwd=self.root, capture_output=True,
                              text=True, timeout=timeout, env={**self.env(gateway), **(env or {})})


@pytest.fixture(scope="session")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("aimesh-sdk")
    assert REPO not in root.parents, "the virtualenv must live outside the repository"
    wheel = build_sdk.build(root / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("aimesh_sdk/client.py", "aimesh_sdk/cli.py", "aimesh_sdk/_build.py",
                     "aimesh/knowledge/v1/knowledge_pb2.py", "aimesh/knowledge/v1/knowledge_pb2.pyi",
                     "aimesh/knowledge/v1/knowledge_pb2_grpc.py"):
        assert expected in names, f"{expected} missing from {wheel.name}"
    assert not any(n.startswith(("services/", "scripts/", "tests/")) for n in names)
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    # pip keeps the machine's index settings (certificates, local wheel folder), nothing else.
    env = {k: v for k, v in os.environ.items()
           if k.startswith("PIP_") or k in ("HOME", "SSL_CERT_FILE", "SSL_CERT_DIR")}
    env["PATH"] = "/usr/bin:/bin"
    # With the `mic` extra (sounddevice) for `aimesh transcribe --mic`.
    subprocess.run([str(root / "venv" / "bin" / "pip"), "install", "--quiet",
                    "--disable-pip-version-check", f"{wheel}[mic]"],
                   check=True, timeout=600, cwd=root, env=env)
    (root / "home").mkdir()
    return Venv(root)
