"""bench.speech runs end to end in its tiny configuration (so it cannot silently break): every
comparison prints its line and ratio. Timings are printed by the benchmark, never asserted here;
the parity count is: the mesh must transcribe the clip word for word like the engine, and every
target has its verdict line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.mesh import TestMesh

REPO = Path(__file__).resolve().parents[3]


def test_speech_bench_runs_tiny(mesh: TestMesh) -> None:
    mesh.ensure_triton()
    run = subprocess.run(
        [sys.executable, "-m", "bench.speech", "--tiny"],
        cwd=REPO,
        env={**os.environ, **mesh.env},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    out = run.stdout
    assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
    assert "word-for-word parity with the engine: 1/1 clips" in out, out
    for label in (
        "WER gateway StreamingRecognize",
        "ratio gateway/direct (p50): ",
        "ratio Piper/eSpeak through the gateway (p50): ",
    ):
        assert re.search(re.escape(label) + r".*\d", out), (label, out)
    for silence_ms in (300, 500, 800):
        assert re.search(
            rf"gateway, silence {silence_ms} ms .* beyond the silence p50 -?\d+ ms", out
        )
    assert re.search(r"sustained concurrent real-time streams on this machine: [12]", out), out
    assert re.search(r"Converse through the gateway .* 1/1 turns answered", out), out
    assert re.search(r"first byte of the reply's audio +p50 +\d", out), out
    assert "machine load average (1, 5, 15 min) at the start" in out, out
    # One verdict per target: endpointing at three silences, Piper, Converse, streams.
    verdicts = re.findall(r"^verdict .+: (?:MET|MISSED) \(.+\)$", out, re.MULTILINE)
    assert len(verdicts) == 6, out
