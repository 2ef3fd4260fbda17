"""The gateway serves the OpenAPI document and the web console itself, on its own origin and
without credentials (scripts/gateway.py static routes); API routes keep their auth."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[3]


def test_openapi_document_is_served(platform: str) -> None:
    reply = httpx.get(f"http://{platform}/v1/openapi.json", timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == json.loads((REPO / "gen" / "openapi.json").read_text())


def test_console_is_served_and_api_still_needs_credentials(platform: str) -> None:
    dist = REPO / "console" / "dist"
    assert (dist / "index.html").is_file(), "console not built: run scripts/setup"
    index = httpx.get(f"http://{platform}/console/", timeout=10)
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert index.text == (dist / "index.html").read_text()
    # Client-side routes get the page too; its assets come with their types.
    assert httpx.get(f"http://{platform}/console/chat", timeout=10).text == index.text
    script = next((dist / "assets").glob("*.js"))
    asset = httpx.get(f"http://{platform}/console/assets/{script.name}", timeout=10)
    assert asset.status_code == 200 and asset.headers["content-type"].startswith("text/javascript")
    assert asset.content == script.read_bytes()
    # Nothing else became public: the API without credentials is still refused.
    assert httpx.get(f"http://{platform}/v1/documents", timeout=10).status_code == 401
    assert httpx.post(f"http://{platform}/console/", timeout=10).status_code == 404
