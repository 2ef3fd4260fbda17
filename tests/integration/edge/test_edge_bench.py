"""bench.openai runs end to end in its tiny configuration (so it cannot silently break): every
path measured, the target line, the machine load and the verdict line printed. Timings are the benchmark's to print, never asserted."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.mesh import TestMesh


def test_openai_bench_runs_tiny(mesh: TestMesh) -> None:
    mesh.ensure_triton()
    result = subprocess.run(
        [sys.executable, "-m", "bench.openai", "--requests", "1"],
        capture_output=True, text=True, timeout=600, env=mesh.env, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    for path in ("Triton responder, direct", "Generate via Envoy, gRPC + key",
                 "Generate via Envoy, JSON/SSE + key", "/openai/v1 chat SSE via Envoy+edge",
                 "/openai/v1 chat, official openai client"):
        line = next(line for line in out.splitlines() if line.startswith(path) and "ms" in line)
        assert line.split()[-2] == "0", line  # the errors column
    assert "OpenAI surface adds" in out and "target <= 5 ms" in out
    assert re.search(r"machine load average \(1, 5, 15 min\)", out), out
    verdicts = re.findall(r"verdict [^\n]+: (MET|MISSED) \([^)\n]+\)", out)
    assert len(verdicts) == 1, out
