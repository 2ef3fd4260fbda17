"""bench.observability runs end to end in a tiny configuration (so it cannot silently break):
three meshes, both workloads, a verdict line. Timings are printed by the benchmark, never
asserted here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.mesh import TestMesh

REPO = Path(__file__).resolve().parents[3]


def test_observability_bench_runs_tiny(mesh: TestMesh) -> None:
    mesh.ensure_triton()
    run = subprocess.run(
        [sys.executable, "-m", "bench.observability", "--seconds", "1", "--rounds", "1",
         "--concurrency", "2", "--chat-concurrency", "1", "--sample-percent", "100"],
        cwd=REPO, env={**os.environ, **mesh.env}, capture_output=True, text=True, timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = {m.group(1): m for m in re.finditer(r"^(gateway|chat)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)",
                                               run.stdout, re.MULTILINE)}
    assert set(rows) == {"gateway", "chat"}, run.stdout
    for row in rows.values():
        assert all(float(row.group(i)) > 0 for i in (2, 3, 4)), run.stdout
    spans = re.search(r"(\d+) spans received from the instrumented mesh", run.stdout)
    assert spans and int(spans.group(1)) > 0, run.stdout
    assert "target: instrumentation costs <= 5 % throughput:" in run.stdout
