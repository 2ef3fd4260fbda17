"""The TypeScript SDK's Realtime transcription client offline (no gateway): its protocol against a
scripted socket, the resampler and the pcm16/base64 helpers (sdk/typescript/test/
realtime.unit.test.mjs, on the dist/ that scripts/setup builds)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

TS_SDK = Path(__file__).resolve().parents[2] / "sdk" / "typescript"


def test_realtime_client_under_node() -> None:
    node = shutil.which("node")
    assert node, "node is missing: scripts/setup installs it"
    assert (TS_SDK / "dist" / "realtime.js").is_file(), "SDK not built: run scripts/setup"
    result = subprocess.run([node, "--test", "test/realtime.unit.test.mjs"], cwd=TS_SDK,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# pass 3" in result.stdout and "# fail 0" in result.stdout, result.stdout[-2000:]
