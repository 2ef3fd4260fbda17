"""Time to first token and tokens/s of streamed answers, shared by bench.chat and bench.openai.

Sequential paths are measured interleaved (one request of each path per round, in rotating
order) so that the shared machine's load swings hit every path alike; the ratios between paths
are what the benchmarks report."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

Stream = Callable[[], AsyncIterator[str]]


@dataclass
class Sample:
    ttft: float
    tokens: int
    tokens_per_s: float


@dataclass
class Path_:
    name: str
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0

    @property
    def ttft_p50(self) -> float:
        """Seconds; infinite without samples (a path that never answered misses every target)."""
        return statistics.median(s.ttft for s in self.samples) if self.samples else float("inf")


async def native_sse_events(reply: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event kind, delta text or "") of a transcoded server stream (Envoy's SSE: `data: {json}`
    events; the kind is the JSON name of the event's oneof field, e.g. "delta")."""
    reply.raise_for_status()
    async for line in reply.aiter_lines():
        if line.startswith("data:"):
            event = json.loads(line[5:])
            for kind in event:
                yield kind, event["delta"]["text"] if kind == "delta" else ""


async def native_sse_deltas(reply: httpx.Response) -> AsyncIterator[str]:
    """The delta texts of a transcoded server stream."""
    async for kind, text in native_sse_events(reply):
        if kind == "delta":
            yield text


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed(stream: Stream) -> Sample:
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    async for piece in stream():
        if not piece:
            continue
        now = time.perf_counter()
        if tokens == 0:
            first = now
        last = now
        tokens += 1
    if tokens == 0:
        raise RuntimeError("no tokens")
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else float("nan")
    return Sample(first - start, tokens, rate)


async def _sample(path: Path_, stream: Stream) -> None:
    try:
        path.samples.append(await timed(stream))
    except Exception as exc:  # noqa: BLE001 - count and show every kind of failure
        path.errors += 1
        print(f"  {path.name}: {type(exc).__name__}: {str(exc)[:160]}")


async def measure_interleaved(paths: list[tuple[str, Stream]], requests: int) -> list[Path_]:
    """`requests` sequential requests per path, one per path per round, the order rotating each
    round; one unmeasured warm-up per path first (connections, caches)."""
    results = [Path_(name) for name, _ in paths]
    print(f"measuring {len(paths)} paths interleaved, {requests} sequential requests each ...")
    for result, (_, stream) in zip(results, paths):
        await _sample(Path_(result.name), stream)
    for round_ in range(requests):
        shift = round_ % len(paths)
        for i in [*range(shift, len(paths)), *range(shift)]:
            await _sample(results[i], paths[i][1])
    return results


async def concurrent(title: str, streams: list[Stream]) -> list[float]:
    """Start every stream at once and hold them to the end; print and return the TTFTs (ms).
    Any failed stream makes the list empty (a failure misses the target)."""
    print(f"\nconcurrent: {title}, all started at once ...")
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(timed(s) for s in streams), return_exceptions=True)
    wall = time.perf_counter() - started
    ok = [o for o in outcomes if isinstance(o, Sample)]
    failed = [o for o in outcomes if not isinstance(o, Sample)]
    for exc in failed[:3]:
        print(f"  error: {type(exc).__name__}: {str(exc)[:200]}")
    ttfts = [s.ttft * 1000 for s in ok]
    print(f"  streams: {len(ok)}/{len(streams)} completed, {len(failed)} failed, wall {wall:.1f}s")
    print(f"  TTFT: p50 {percentile(ttfts, 0.5):.0f} ms, p95 {percentile(ttfts, 0.95):.0f} ms, "
          f"max {max(ttfts, default=float('nan')):.0f} ms")
    print(f"  aggregate: {sum(s.tokens for s in ok) / wall:.0f} tokens/s across streams")
    return [] if failed else ttfts


def report(results: list[Path_]) -> None:
    """The table: TTFT p50/p95, tokens/s, errors, and the TTFT ratio to the first path. `tokens`
    counts the text messages received: the mesh gathers an answer's text after the first
    token (AIMESH_STREAM_LINGER_MS), so its paths show fewer, larger pieces than Triton's."""
    base = results[0].ttft_p50
    print(f"\n{'path':42} {'TTFT p50':>9} {'TTFT p95':>9} {'tok/s p50':>10} {'tokens':>7} "
          f"{'errors':>7} {'TTFT ratio':>11}")
    for r in results:
        ttft = [s.ttft for s in r.samples]
        rate = [s.tokens_per_s for s in r.samples if s.tokens_per_s == s.tokens_per_s]
        tokens = statistics.median(s.tokens for s in r.samples) if r.samples else 0
        print(f"{r.name:42} {r.ttft_p50 * 1000:8.1f}ms {percentile(ttft, 0.95) * 1000:8.1f}ms "
              f"{statistics.median(rate) if rate else float('nan'):10.0f} {tokens:7.0f} "
              f"{r.errors:7d} {r.ttft_p50 / base:10.2f}x")
    print("(tokens, tok/s: text messages received; the mesh sends the text after the first "
          "token in fewer, larger messages, AIMESH_STREAM_LINGER_MS)")


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User+system CPU seconds each process (by name) has used so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return used


def print_cpu_per_stream(before: dict[str, float], after: dict[str, float],
                         streams: int) -> dict[str, float]:
    """The mesh's CPU per stream, by process: what competes with Triton for the cores. Returns
    it (ms per stream by process name)."""
    spent = {name: 1000 * (after[name] - before[name]) / streams
             for name in after if name in before}
    print(f"  mesh CPU per stream (ms): {cpu_parts(spent)}; total {sum(spent.values()):.1f}")
    return spent


def cpu_parts(per_stream: dict[str, float]) -> str:
    """"name ms, ..." by decreasing CPU."""
    return ", ".join(f"{name} {ms:.1f}" for name, ms in
                     sorted(per_stream.items(), key=lambda kv: -kv[1]))


def mean_cpu(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each process's mean CPU per stream over `rounds` (print_cpu_per_stream's results)."""
    names = {name for spent in rounds for name in spent}
    return {name: statistics.fmean(spent.get(name, 0.0) for spent in rounds) for name in names}
