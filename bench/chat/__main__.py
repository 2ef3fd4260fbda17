"""Chat benchmark: time to first token (TTFT) and tokens/s of one grounded answer, five paths,
same machine, same run, then many concurrent streams through Envoy.

    .venv/bin/python -m bench.chat [--requests 20] [--streams 100]

Paths (the same question and context each time; the Triton grounded responder answers):
1. Triton directly (services/common/triton.py `respond`, decoupled stream);
2. Orchestrator.Generate, direct gRPC (identity headers set by the client, as the gateway would);
3. Conversation.SendMessage, direct gRPC (stores both messages, builds history, calls 2);
4. SendMessage through Envoy, gRPC with an API key (ext_authz -> Auth, rate limit -> Usage);
5. SendMessage through Envoy, JSON/HTTP with server-sent events.

TTFT = request sent -> first text token received; tokens/s = tokens after the first divided by
the time from first to last. Ratios are to path 1 (mesh overhead). Then `--streams` SendMessage
streams through Envoy gRPC are started at once (each its own conversation) and held to the end:
p50/p95 TTFT under that load. Everything (services, Envoy, Triton, this client) shares the same
cores, so absolute numbers are bounded by the machine; the ratios are the point. The mesh runs
as configured (mTLS between services by default); the direct paths call as the mesh identities
allowed to (Conversation -> Orchestrator, gateway -> Conversation).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import socket
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from aimesh.conversation.v1 import conversation_pb2 as cpb
from aimesh.conversation.v1 import conversation_pb2_grpc
from aimesh.orchestrator.v1 import orchestrator_pb2 as opb
from aimesh.orchestrator.v1 import orchestrator_pb2_grpc

from bench.accounts import bench_account
from bench.report import print_load, verdict
from scripts import triton_server
from scripts.stack import Stack
from services.common.channels import open_channel
from services.common.config import SERVICES, Settings
from services.common.triton import TritonClient

CONTEXT = (
    "The harbor lighthouse was built in 1871 from granite blocks. Its lamp is switched on thirty "
    "minutes before sunset. The keeper logs the weather every four hours in a red ledger. Spare "
    "bulbs are stored in the iron cabinet on the second landing. Visitors may climb the tower on "
    "Saturdays between ten and noon. The fog horn sounds twice a minute when visibility drops."
)
QUESTION = "When is the lamp switched on, and where are spare bulbs kept?"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


Stream = Callable[[], AsyncIterator[str]]


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


async def measure(name: str, stream: Stream, requests: int) -> Path_:
    result = Path_(name)
    await timed(stream)  # warm-up (connections, caches)
    for _ in range(requests):
        try:
            result.samples.append(await timed(stream))
        except Exception as exc:  # noqa: BLE001 - count and show every kind of failure
            result.errors += 1
            print(f"  {name}: {type(exc).__name__}: {str(exc)[:160]}")
    return result


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> None:
    var_dir = Path(tempfile.mkdtemp(prefix="aimesh-bench-chat-"))
    overrides = {f"AIMESH_{s.upper()}_ADDR": f"127.0.0.1:{_free_port()}" for s in SERVICES}
    overrides.update({
        "AIMESH_GATEWAY_ADDR": f"127.0.0.1:{_free_port()}",
        "AIMESH_GATEWAY_ADMIN_ADDR": f"127.0.0.1:{_free_port()}",
        "AIMESH_VAR_DIR": str(var_dir), "AIMESH_LOG_LEVEL": "WARNING",
        "AIMESH_PROVIDER_FIRST_TOKEN_SECONDS": "120",
    })
    stack = Stack.create(overrides, log_dir=var_dir / "log")
    print_load("before the run")
    try:
        host, ports = stack.triton_ports()
        if not triton_server.is_ready(ports, host):
            print("starting Triton ...")
            stack.start_triton()
            stack.wait_ready(["triton"], timeout=600)
        services = ["auth", "usage", "orchestrator", "conversation"]
        for service in services:
            stack.start_service(service)
        stack.wait_ready(services, timeout=90)
        stack.start_gateway()
        stack.wait_ready(["gateway"], timeout=60)
        settings = stack.settings
        await bench(args, settings)
    finally:
        stack.stop_all()


async def bench(args: argparse.Namespace, settings: Settings) -> None:
    gateway = settings.gateway_addr
    async with httpx.AsyncClient(base_url=f"http://{gateway}", timeout=300) as http:
        account = await bench_account(http, settings)
        secret, identity, key_md = account.secret, account.identity, account.key_metadata

        triton = TritonClient(settings.triton_url)
        # Direct paths as the mesh identities allowed to make them (mTLS by default).
        direct_orch = open_channel(settings, "orchestrator", caller="conversation")
        direct_conv = open_channel(settings, "conversation", caller="gateway")
        edge = grpc.aio.insecure_channel(gateway)
        orch = orchestrator_pb2_grpc.OrchestratorServiceStub(direct_orch)
        conv_direct = conversation_pb2_grpc.ConversationServiceStub(direct_conv)
        conv_edge = conversation_pb2_grpc.ConversationServiceStub(edge)

        async def new_conversation() -> str:
            created = await conv_direct.CreateConversation(cpb.CreateConversationRequest(
                conversation=cpb.Conversation(system_prompt=CONTEXT)), metadata=identity, timeout=10)
            return created.name

        async def triton_stream() -> AsyncIterator[str]:
            async for response in triton.respond(QUESTION, [CONTEXT], ["context"], max_sentences=3, timeout=600):
                token = response.get("TOKEN")
                if token is not None and token.size:
                    value = token.reshape(-1)[0]
                    yield value.decode() if isinstance(value, bytes) else str(value)

        generate = opb.GenerateRequest(model="models/grounded-extractive-v1", disable_cache=True, messages=[
            opb.ChatMessage(role=opb.ROLE_SYSTEM, content=CONTEXT), opb.ChatMessage(role=opb.ROLE_USER, content=QUESTION)])

        async def orchestrator_stream() -> AsyncIterator[str]:
            async for event in orch.Generate(generate, metadata=identity, timeout=300):
                if event.HasField("delta"):
                    yield event.delta.text

        # Each SendMessage gets a fresh conversation (history stays the same size), created
        # beforehand so that its creation is not timed.
        spare = list(await asyncio.gather(*(new_conversation() for _ in range(3 * (args.requests + 1)))))

        async def send_stream(stub: conversation_pb2_grpc.ConversationServiceStub, md: tuple[tuple[str, str], ...]) -> AsyncIterator[str]:
            name = spare.pop()
            request = cpb.SendMessageRequest(conversation=name, content=QUESTION)
            async for event in stub.SendMessage(request, metadata=md, timeout=300):
                if event.HasField("delta"):
                    yield event.delta.text

        async def sse_stream() -> AsyncIterator[str]:
            name = spare.pop()
            async with http.stream("POST", f"/v1/{name}:sendMessage", headers={"x-api-key": secret},
                                   json={"content": QUESTION}) as reply:
                reply.raise_for_status()
                async for line in reply.aiter_lines():
                    if line.startswith("data:"):
                        event = json.loads(line[5:])
                        if "delta" in event:
                            yield event["delta"]["text"]

        paths = [
            ("Triton responder, direct", triton_stream),
            ("Orchestrator.Generate, direct gRPC", orchestrator_stream),
            ("Conversation.SendMessage, direct gRPC", lambda: send_stream(conv_direct, identity)),
            ("SendMessage via Envoy, gRPC + key", lambda: send_stream(conv_edge, key_md)),
            ("SendMessage via Envoy, JSON/SSE + key", sse_stream),
        ]
        results = []
        for name, stream in paths:
            print(f"measuring {name} ({args.requests} sequential requests) ...")
            results.append(await measure(name, stream, args.requests))
        report(results)

        names = await asyncio.gather(*(new_conversation() for _ in range(args.streams)))
        direct_p95 = await concurrent(f"{args.streams} Triton responder streams, direct",
                                      [triton_stream] * args.streams)
        edge_streams: list[Stream] = [functools.partial(_edge_send, conv_edge, n, key_md) for n in names]
        edge_p95 = await concurrent(f"{args.streams} SendMessage streams via Envoy gRPC", edge_streams)
        print()
        print_load("after the run")
        ttft = {r.name: statistics.median(s.ttft for s in r.samples) if r.samples else float("inf")
                for r in results}
        sse_ratio = ttft["SendMessage via Envoy, JSON/SSE + key"] / ttft["Triton responder, direct"]
        print(f"ratio SSE TTFT p50 / Triton direct: {sse_ratio:.2f}x")
        print(verdict("TTFT through the gateway's SSE <= 1.2x Triton direct (p50)", sse_ratio <= 1.2,
                      f"{sse_ratio:.2f}x"))
        stream_ratio = edge_p95 / direct_p95
        print(f"ratio {args.streams} concurrent streams TTFT p95, gateway / direct: {stream_ratio:.2f}x")
        print(verdict(f"{args.streams} concurrent streams TTFT p95 <= 1.1x direct", stream_ratio <= 1.1,
                      f"{stream_ratio:.2f}x"))

        await triton.close()
        for channel in (direct_orch, direct_conv, edge):
            await channel.close()


async def _edge_send(stub: conversation_pb2_grpc.ConversationServiceStub, name: str,
                     md: tuple[tuple[str, str], ...]) -> AsyncIterator[str]:
    request = cpb.SendMessageRequest(conversation=name, content=QUESTION)
    async for event in stub.SendMessage(request, metadata=md, timeout=600):
        if event.HasField("delta"):
            yield event.delta.text


async def concurrent(title: str, streams: list[Stream]) -> float:
    """Start every stream at once and hold them to the end; print TTFT percentiles."""
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
    print(f"  TTFT: p50 {_p(ttfts, 0.5):.0f} ms, p95 {_p(ttfts, 0.95):.0f} ms, max {max(ttfts, default=float('nan')):.0f} ms")
    print(f"  aggregate: {sum(s.tokens for s in ok) / wall:.0f} tokens/s across streams")
    return _p(ttfts, 0.95) if not failed else float("inf")  # any failure misses the target


def report(results: list[Path_]) -> None:
    base = statistics.median(s.ttft for s in results[0].samples) if results[0].samples else float("nan")
    print(f"\n{'path':42} {'TTFT p50':>9} {'TTFT p95':>9} {'tok/s p50':>10} {'tokens':>7} {'errors':>7} {'TTFT ratio':>11}")
    for r in results:
        ttft = [s.ttft for s in r.samples]
        rate = [s.tokens_per_s for s in r.samples if s.tokens_per_s == s.tokens_per_s]
        p50 = statistics.median(ttft) if ttft else float("nan")
        print(f"{r.name:42} {p50 * 1000:8.1f}ms {_p(ttft, 0.95) * 1000:8.1f}ms "
              f"{statistics.median(rate) if rate else float('nan'):10.0f} "
              f"{statistics.median(s.tokens for s in r.samples) if r.samples else 0:7.0f} {r.errors:7d} "
              f"{p50 / base:10.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.chat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="sequential requests per path")
    parser.add_argument("--streams", type=int, default=100, help="concurrent streams held through Envoy")
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
