"""OpenAI-compatible surface benchmark: time to first token (TTFT) and tokens/s of one grounded
answer via /openai/v1/chat/completions (SSE) vs the native gateway paths vs Triton direct, same
prompt, same run.

    .venv/bin/python -m bench.openai [--requests 30]
    .venv/bin/python -m bench.openai --requests 1     # tiny: what tests/integration/edge runs

Paths (system context + question; the Triton grounded responder answers):
1. Triton directly (services/common/triton.py `respond`);
2. Orchestrator.Generate through Envoy, gRPC with an API key (the native gateway path);
3. Orchestrator.Generate through Envoy, JSON/HTTP with server-sent events (native SSE);
4. /openai/v1/chat/completions through Envoy and the edge, SSE read raw with httpx;
5. the same with the official `openai` Python client (its own parsing included).

TTFT = request sent -> first text token received; tokens/s = tokens after the first over the
time from first to last. The paths are measured interleaved (bench/chat/timing.py), so load
swings of the shared machine hit all alike. Ratios are to path 1; the target line compares path 4
with path 3 (the same transport, so the difference is the edge: target <= 5 ms at p50).
Everything shares the machine's cores; the ratios and differences are the point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import httpx
from aimesh.orchestrator.v1 import orchestrator_pb2 as opb
from aimesh.orchestrator.v1 import orchestrator_pb2_grpc

import openai
from bench.accounts import BenchAccount, bench_account
from bench.chat.__main__ import CONTEXT, QUESTION, private_stack, triton_stream
from bench.chat.timing import (
    Path_,
    Stream,
    measure_interleaved,
    native_sse_deltas,
    percentile,
    report,
)
from bench.report import print_load, verdict
from services.common.config import Settings
from services.common.triton import TritonClient

MODEL = "grounded-extractive-v1"
TARGET_MS = 5.0
SERVICES_USED = ["auth", "usage", "knowledge", "orchestrator", "edge"]


async def run(args: argparse.Namespace) -> None:
    print_load("before the run")
    with private_stack("aimesh-bench-openai-", SERVICES_USED) as stack:
        await bench(args, stack.settings)


def native_paths(http: httpx.AsyncClient, gateway: grpc.aio.Channel,
                 account: BenchAccount) -> list[tuple[str, Stream]]:
    """Orchestrator.Generate through Envoy: gRPC, and JSON with server-sent events."""
    native = orchestrator_pb2_grpc.OrchestratorServiceStub(gateway)
    generate = opb.GenerateRequest(model=f"models/{MODEL}", messages=[
        opb.ChatMessage(role=opb.ROLE_SYSTEM, content=CONTEXT),
        opb.ChatMessage(role=opb.ROLE_USER, content=QUESTION)])

    async def native_grpc() -> AsyncIterator[str]:
        async for event in native.Generate(generate, metadata=account.key_metadata, timeout=300):
            if event.HasField("delta"):
                yield event.delta.text

    async def native_sse() -> AsyncIterator[str]:
        body = {"messages": [{"role": "ROLE_SYSTEM", "content": CONTEXT},
                             {"role": "ROLE_USER", "content": QUESTION}]}
        async with http.stream("POST", f"/v1/models/{MODEL}:generate",
                               headers={"x-api-key": account.secret}, json=body) as reply:
            async for text in native_sse_deltas(reply):
                yield text

    return [("Generate via Envoy, gRPC + key", native_grpc),
            ("Generate via Envoy, JSON/SSE + key", native_sse)]


def openai_paths(http: httpx.AsyncClient, client: openai.AsyncOpenAI,
                 account: BenchAccount) -> list[tuple[str, Stream]]:
    """/openai/v1/chat/completions through Envoy and the edge: raw SSE, and the official client."""
    messages = [{"role": "system", "content": CONTEXT}, {"role": "user", "content": QUESTION}]

    async def openai_sse() -> AsyncIterator[str]:
        body = {"model": MODEL, "messages": messages, "stream": True}
        async with http.stream("POST", "/openai/v1/chat/completions",
                               headers={"authorization": f"Bearer {account.secret}"},
                               json=body) as reply:
            reply.raise_for_status()
            async for line in reply.aiter_lines():
                if line.startswith("data: {"):
                    for choice in json.loads(line[6:])["choices"]:
                        text = choice["delta"].get("content")
                        if text:
                            yield text

    async def openai_client() -> AsyncIterator[str]:
        stream = await client.chat.completions.create(
            model=MODEL, messages=messages, stream=True)  # type: ignore[arg-type]
        async for chunk in stream:  # type: ignore[union-attr]
            for choice in chunk.choices:
                if choice.delta.content:
                    yield choice.delta.content

    return [("/openai/v1 chat SSE via Envoy+edge", openai_sse),
            ("/openai/v1 chat, official openai client", openai_client)]


async def wait_for_edge(http: httpx.AsyncClient) -> None:
    for _ in range(100):  # Envoy's first health checks of the edge
        if (await http.get("/openai/v1/models")).status_code == 401:
            return
        await asyncio.sleep(0.1)


async def bench(args: argparse.Namespace, settings: Settings) -> list[Path_]:
    gateway = settings.gateway_addr
    async with httpx.AsyncClient(base_url=f"http://{gateway}", timeout=300) as http:
        await wait_for_edge(http)
        account = await bench_account(http, settings)
        triton = TritonClient(settings.triton_url)
        channel = grpc.aio.insecure_channel(gateway)
        client = openai.AsyncOpenAI(base_url=f"http://{gateway}/openai/v1", api_key=account.secret,
                                    max_retries=0, timeout=300)
        try:
            paths = [("Triton responder, direct", triton_stream(triton)),
                     *native_paths(http, channel, account), *openai_paths(http, client, account)]
            results = await measure_interleaved(paths, args.requests)
            report(results)
            print()
            print_load("after the run")
            print_verdict(results[2], results[3])
        finally:
            await client.close()
            await triton.close()
            await channel.close()
        return results


def print_verdict(native: Path_, edge: Path_) -> None:
    a, b = native.ttft_p50 * 1000, edge.ttft_p50 * 1000
    extra = b - a
    p95 = (percentile([s.ttft for s in edge.samples], 0.95)
           - percentile([s.ttft for s in native.samples], 0.95)) * 1000
    print(f"OpenAI surface adds {extra:+.1f} ms to TTFT p50 over native JSON/SSE "
          f"({b:.1f} vs {a:.1f} ms, ratio {b / a:.2f}x; p95 {p95:+.1f} ms); "
          f"target <= {TARGET_MS:.0f} ms")
    print(verdict(f"the OpenAI surface adds <= {TARGET_MS:.0f} ms to TTFT p50 over native SSE",
                  extra <= TARGET_MS, f"{extra:+.1f} ms"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.openai", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30, help="sequential requests per path")
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
