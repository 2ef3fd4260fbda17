"""A second ecosystem: one streaming chat with the official `openai` npm package under Node
(tests/integration/edge/node, installed by scripts/setup), through the gateway."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

from tests.integration.edge.conftest import DEFAULT_MODEL, EdgeStack
from tests.integration.edge.test_edge_chat import CONTEXT, QUESTION

NODE_DIR = Path(__file__).resolve().parent / "node"


async def test_node_openai_package_streams_a_chat(edge: EdgeStack, api_key: str) -> None:
    node = shutil.which("node")
    assert node, "node is not installed: run scripts/setup"
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), "run scripts/setup (npm ci in tests/integration/edge/node)"
    env = {**os.environ, "OPENAI_BASE_URL": edge.openai_base, "OPENAI_API_KEY": api_key,
           "MODEL": DEFAULT_MODEL, "CONTEXT": CONTEXT, "QUESTION": QUESTION}
    process = await asyncio.create_subprocess_exec(
        node, "stream_chat.mjs", cwd=NODE_DIR, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert "scatter" in result["text"]
    assert result["finish"] == "stop" and result["chunks"] >= 3
    assert result["usage"]["completion_tokens"] > 0
    assert result["usage"]["total_tokens"] == result["usage"]["prompt_tokens"] + result["usage"]["completion_tokens"]
