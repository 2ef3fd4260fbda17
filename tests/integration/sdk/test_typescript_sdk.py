"""The TypeScript SDK (sdk/typescript, built with tsc by scripts/setup) under node against the
real gateway over gRPC-Web: unary calls, server-streaming chat and synthesis, typed errors
(sdk/typescript/test/gateway.test.mjs); live transcription over the Realtime WebSocket bridge
(test/realtime.gateway.test.mjs) and the Realtime client's offline unit tests
(test/realtime.unit.test.mjs)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

TS_SDK = Path(__file__).resolve().parents[3] / "sdk" / "typescript"


def test_typescript_sdk_under_node(platform: str) -> None:
    node = shutil.which("node")
    assert node, "node is missing: scripts/setup installs it"
    assert (TS_SDK / "dist" / "index.js").is_file(), "SDK not built: run scripts/setup"
    result = subprocess.run(
        # node 20 has WebSocket behind this flag (node 22 has it on; the flag is still accepted).
        [node, "--experimental-websocket", "--test", "--test-reporter=spec", "test/"],
        check=False, cwd=TS_SDK, capture_output=True, text=True, timeout=600,
        env={**os.environ, "AIMESH_GATEWAY": f"http://{platform}"})
    print(result.stdout[-6000:])
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    tests = len(re.findall(r"^test\(", "".join(
        p.read_text() for p in (TS_SDK / "test").glob("*.test.mjs")), re.M))
    assert re.search(rf"\bpass {tests}\b", result.stdout) and "fail 0" in result.stdout, tests
