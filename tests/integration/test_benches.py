"""Every benchmark under bench/ runs end to end in a tiny configuration, so none can silently
break again: each exits 0, prints the machine load it ran under, its ratios and one verdict line
per target; table rows named in ROWS must show answers (tokens) and no errors. Timings and
verdicts (MET or MISSED) are printed by the benchmarks, never asserted here. bench.observability,
bench.speech and bench.openai have their own tiny tests
(tests/integration/observability/test_bench.py, tests/integration/speech/test_bench_speech.py,
tests/integration/edge/test_edge_bench.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mesh import TestMesh

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / "bench"
COVERED_ELSEWHERE = {"observability", "speech", "openai"}

LOAD = r"load average \(1, 5, 15 min\)[^\n]*?: [^\n]*?[\d.]+, [\d.]+, [\d.]+"
VERDICT = r"verdict [^\n]+: (MET|MISSED) \([^)\n]+\)"
NUMBER = r"-?\d+(\.\d+)?"

# bench name -> (tiny arguments, verdict lines it must print, ratio lines it must print)
TINY: dict[str, tuple[list[str], int, list[str]]] = {
    "gateway": (
        ["--seconds", "0.4", "--rounds", "1", "--concurrency", "4", "--latency-requests", "10",
         "--warmup", "3"],
        10,  # 5 targets x {mtls, plaintext}
        [rf"ratio \[mtls\]: Envoy gRPC\+key {NUMBER}x FastAPI, {NUMBER}x direct",
         rf"ratio \[plaintext\]: Envoy gRPC\+key {NUMBER}x FastAPI, {NUMBER}x direct",
         *(rf"bound \[{mode}\]: .*; Envoy routing alone: {NUMBER}x direct \({NUMBER}x FastAPI\), "
           r"so the 3x FastAPI target (IS|is NOT) reachable by (an|any) Envoy gateway in this run"
           for mode in ("mtls", "plaintext")),
         *(rf"bound latency \[{mode}\]: Envoy routing alone adds {NUMBER} ms p50, {NUMBER} ms "
           r"p99 over direct in this run, so the key\+limit p50 target \(1\.0 ms\) (IS|is NOT) "
           r"reachable, .* by any Envoy gateway in this run; admission above routing, p50: "
           rf"key\+limit [+-]\d+\.\d+ ms, JWT\+limit [+-]\d+\.\d+ ms"
           for mode in ("mtls", "plaintext")),
         *(rf"cpu \[{mode}\]: Auth's own CPU per request: direct {NUMBER} us, routing only "
           rf"{NUMBER} us, key\+limit {NUMBER} us" for mode in ("mtls", "plaintext")),
         *(rf"leases \[{mode}\]: Redis round trips .*: key\+limit {NUMBER} \(\d+ admitted\), "
           rf"JWT\+limit {NUMBER} \(\d+ admitted\)" for mode in ("mtls", "plaintext"))],
    ),
    "usage": (
        ["--records", "40", "--concurrency", "2", "--reservations", "10"],
        1,
        [rf"RecordUsage batch 100 .* ratio to baseline {NUMBER}x"],
    ),
    "inference": (["--rounds", "1"], 1, [rf"embeddings/s, batch 32 +{NUMBER} +{NUMBER}"]),
    "chat": (
        ["--requests", "1", "--streams", "2"],
        2,
        [rf"ratio SSE TTFT p50 / Triton direct: {NUMBER}x",
         rf"ratio 2 concurrent streams TTFT p95, gateway / direct: {NUMBER}x",
         rf"relay floor: {NUMBER}x Triton direct \(two no-op hops, no Envoy\); SSE target "
         rf"1\.2x leaves {NUMBER} ms, the hops alone take {NUMBER} ms",
         rf"relay floor, 2 concurrent streams: TTFT p95 {NUMBER}x direct",
         rf"SSE budget: {NUMBER} ms room - {NUMBER} ms hops - {NUMBER} ms Envoy's SSE request "
         rf"filters = {NUMBER} ms left",
         r"2 Generate streams via the relay floor \(round 1\), all started at once \.\.\.\n"
         r"  streams: 2/2 completed, 0 failed"],
    ),
    "knowledge": (
        ["--ingest-chunks", "40", "--pdf-docs", "1", "--search-chunks", "300", "--queries", "3",
         "--quality-chunks", "60", "--shared-triton"],
        4,  # ingestion rate, hybrid p95 through the gateway (JSON, gRPC), int8 quality
        [rf"gateway JSON / in-process p95 ratio {NUMBER}x",
         rf"gateway gRPC / in-process p95 ratio {NUMBER}x", rf"mean batch {NUMBER}",
         rf"bound: the model alone does {NUMBER} chunks/s on this machine, so 100 chunks/s end "
         r"to end (IS reachable here|is NOT reachable here by any pipeline around this model)"],
    ),
}

# bench name -> paths of its TTFT table (bench/chat/timing.py `report`) that must have answered
ROWS: dict[str, list[str]] = {"chat": ["relay floor: 2 no-op grpc.aio hops"]}


def table_row(out: str, path: str) -> dict[str, float]:
    """`tokens` and `errors` of `path`'s row in a TTFT table: name, TTFT p50, TTFT p95, tok/s,
    tokens, errors, ratio."""
    rows = [line[len(path):].split() for line in out.splitlines() if line.startswith(path + " ")]
    assert len(rows) == 1, (path, out)
    assert len(rows[0]) == 6, (path, rows[0])
    return {"tokens": float(rows[0][3]), "errors": float(rows[0][4])}


def test_every_bench_has_a_tiny_run() -> None:
    """A new bench gets a tiny configuration here (or its own test) the day it is added."""
    benches = {p.name for p in BENCH_DIR.iterdir() if (p / "__main__.py").is_file()}
    assert benches - COVERED_ELSEWHERE == set(TINY), benches


@pytest.mark.parametrize("bench", sorted(TINY))
def test_bench_runs_tiny(bench: str, mesh: TestMesh) -> None:
    if bench in {"inference", "chat", "knowledge"}:
        mesh.ensure_triton()
    arguments, verdicts, ratios = TINY[bench]
    run = subprocess.run(
        [sys.executable, "-m", f"bench.{bench}", *arguments],
        cwd=REPO, env={**os.environ, **mesh.env}, capture_output=True, text=True, timeout=600,
        check=False,
    )
    out = run.stdout
    # stderr: the traceback, after the tails of the bench mesh's logs (which die with its
    # temporary directory) when the bench prints them.
    assert run.returncode == 0, out[-3000:] + run.stderr[-20000:]
    assert re.search(LOAD, out), out
    assert len(re.findall(VERDICT, out)) == verdicts, out
    for ratio in ratios:
        assert re.search(ratio, out), (ratio, out)
    for path in ROWS.get(bench, []):
        row = table_row(out, path)
        assert row["errors"] == 0 and row["tokens"] > 0, (path, row, out)
    if bench == "gateway":
        _check_envoy_floor_rows(out)


def _check_envoy_floor_rows(out: str) -> None:
    """bench.gateway's routing-only Envoy path ran in each mode: its table row served requests
    without errors, and its CPU line charges its own Envoy process."""
    for mode in ("mtls", "plaintext"):
        name = rf"\[{mode}\] Envoy routing only \(no admission\)"
        row = re.search(rf"^{name} +{NUMBER} +{NUMBER} +(?P<rps>\d+) +(?P<errors>\d+) ", out,
                        re.MULTILINE)
        assert row, (mode, out)
        assert int(row["rps"]) > 0 and int(row["errors"]) == 0, (row[0], out)
        assert re.search(rf"^  {name} .*envoy_floor \d+", out, re.MULTILINE), (mode, out)
