"""OpenAI-compatible surface benchmark: time to first token (TTFT) and tokens/s of one grounded
answer via /openai/v1/chat/completions (SSE) vs the native gateway paths vs Triton direct, same
prompt, same run.

    .venv/bin/python -m bench.openai [--requests 20]
    .venv/bin/python -m bench.openai --requests 1     # tiny: what tests/integration/edge runs

Paths (system context + question; the Triton grounded responder answers):
1. Triton directly (services/common/triton.py `respond`);
2. Orchestrator.Generate through Envoy, gRPC with an API key (the native gateway path);
3. Orchestrator.Generate through Envoy, JSON/HTTP with server-sent events (native SSE);
4. /openai/v1/chat/completions through Envoy and the edge, SSE read raw with httpx;
5. the same with the official `openai` Python client (its own parsing included).

TTFT = request sent -> first text token received; tokens/s = tokens after the first over the
time from first to last. Ratios are to path 1; the target line compares path 4 with path 3 (the
same transport, so the difference is the edge: target <= 5 ms at p50). Everything shares the
machine's cores; the ratios and differences are the point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
from aimesh.orchestrator.v1 import orchestrator_pb2 as opb
from aimesh.orchestrator.v1 import orchestrator_pb2_grpc

import openai
from bench.accounts import bench_account
from bench.chat.__main__ import CONTEXT, QUESTION, Path_, _free_port, _p, measure, report
from bench.report import print_load
from scripts import triton_server
from scripts.stack import COMPONENTS, Stack
from services.common.config import Settings
from services.common.triton import TritonClient

MODEL = "grounded-extractive-v1"
TARGET_MS = 5.0


async def run(args: argparse.Namespace) -> None:
    var_dir = Path(tempfile.mkdtemp(prefix="aimesh-bench-openai-"))
    overrides = {f"AIMESH_{s.upper()}_ADDR": f"127.0.0.1:{_free_port()}" for s in COMPONENTS}
    overrides.update({
        "AIMESH_GATEWAY_ADDR": f"127.0.0.1:{_free_port()}",
        "AIMESH_GATEWAY_ADMIN_ADDR": f"127.0.0.1:{_free_port()}",
        "AIMESH_VAR_DIR": str(var_dir), "AIMESH_LOG_LEVEL": "WARNING",
        "AIMESH_PROVIDER_FIRST_TOKEN_SECONDS": "120",
    })
    stack = Stack.create(overrides, log_dir=var_dir / "log")
    try:
        host, ports = stack.triton_ports()
        if not triton_server.is_ready(ports, host):
            print("starting Triton ...")
            stack.start_triton()
            stack.wait_ready(["triton"], timeout=600)
        services = ["auth", "usage", "knowledge", "orchestrator", "edge"]
        for service in services:
            stack.start_service(service)
        stack.wait_ready(services, timeout=120)
        stack.start_gateway()
        stack.wait_ready(["gateway"], timeout=60)
        await bench(args, stack.settings)
    finally:
        stack.stop_all()


async def bench(args: argparse.Namespace, settings: Settings) -> list[Path_]:
    gateway = settings.gateway_addr
    async with httpx.AsyncClient(base_url=f"http://{gateway}", timeout=300) as http:
        for _ in range(100):  # Envoy's first health checks of the edge
            if (await http.get("/openai/v1/models")).status_code == 401:
                break
            await asyncio.sleep(0.1)
        account = await bench_account(http, settings)
        key = {"authorization": f"Bearer {account.secret}"}
        triton = TritonClient(settings.triton_url)
        channel = grpc.aio.insecure_channel(gateway)
        native = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        client = openai.AsyncOpenAI(base_url=f"http://{gateway}/openai/v1", api_key=account.secret,
                                    max_retries=0, timeout=300)
        messages = [{"role": "system", "content": CONTEXT}, {"role": "user", "content": QUESTION}]
        generate = opb.GenerateRequest(model=f"models/{MODEL}", messages=[
            opb.ChatMessage(role=opb.ROLE_SYSTEM, content=CONTEXT),
            opb.ChatMessage(role=opb.ROLE_USER, content=QUESTION)])

        async def triton_stream() -> AsyncIterator[str]:
            async for response in triton.respond(QUESTION, [CONTEXT], ["context"], max_sentences=3, timeout=600):
                token = response.get("TOKEN")
                if token is not None and token.size:
                    value = token.reshape(-1)[0]
                    yield value.decode() if isinstance(value, bytes) else str(value)

        async def native_grpc() -> AsyncIterator[str]:
            async for event in native.Generate(generate, metadata=account.key_metadata, timeout=300):
                if event.HasField("delta"):
                    yield event.delta.text

        async def native_sse() -> AsyncIterator[str]:
            body = {"messages": [{"role": "ROLE_SYSTEM", "content": CONTEXT},
                                 {"role": "ROLE_USER", "content": QUESTION}]}
            async with http.stream("POST", f"/v1/models/{MODEL}:generate", headers=key, json=body) as reply:
                reply.raise_for_status()
                async for line in reply.aiter_lines():
                    if line.startswith("data:"):
                        event = json.loads(line[5:])
                        if "delta" in event:
                            yield event["delta"]["text"]

        async def openai_sse() -> AsyncIterator[str]:
            body = {"model": MODEL, "messages": messages, "stream": True}
            async with http.stream("POST", "/openai/v1/chat/completions", headers=key, json=body) as reply:
                reply.raise_for_status()
                async for line in reply.aiter_lines():
                    if line.startswith("data: {"):
                        for choice in json.loads(line[6:])["choices"]:
                            text = choice["delta"].get("content")
                            if text:
                                yield text

        async def openai_client() -> AsyncIterator[str]:
            stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)  # type: ignore[arg-type]
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield choice.delta.content

        paths = [
            ("Triton responder, direct", triton_stream),
            ("Generate via Envoy, gRPC + key", native_grpc),
            ("Generate via Envoy, JSON/SSE + key", native_sse),
            ("/openai/v1 chat SSE via Envoy+edge", openai_sse),
            ("/openai/v1 chat, official openai client", openai_client),
        ]
        results = []
        for name, stream in paths:
            print(f"measuring {name} ({args.requests} sequential requests) ...")
            results.append(await measure(name, stream, args.requests))
        report(results)
        verdict(results[2], results[3])
        print_load("after the run")
        await client.close()
        await triton.close()
        await channel.close()
        return results


def verdict(native: Path_, edge: Path_) -> None:
    if not native.samples or not edge.samples:
        print("\nOpenAI surface vs native SSE: no samples")
        return
    a = statistics.median(s.ttft for s in native.samples) * 1000
    b = statistics.median(s.ttft for s in edge.samples) * 1000
    extra = b - a
    p95 = (_p([s.ttft for s in edge.samples], 0.95) - _p([s.ttft for s in native.samples], 0.95)) * 1000
    print(f"\nOpenAI surface adds {extra:+.1f} ms to TTFT p50 over native JSON/SSE "
          f"({b:.1f} vs {a:.1f} ms, ratio {b / a:.2f}x; p95 {p95:+.1f} ms); target <= {TARGET_MS:.0f} ms: "
          f"{'met' if extra <= TARGET_MS else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.openai", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="sequential requests per path")
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
