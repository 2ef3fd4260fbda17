"""What metrics and tracing cost: the same mesh three times, side by side in one run: with
instrumentation off (AIMESH_METRICS=false, no OTLP endpoint), with metrics only, and with
everything on (every service's Prometheus metrics, plus spans from Envoy and every service
exported over OTLP to a receiver in this process), under the default mTLS.

    .venv/bin/python -m bench.observability [--seconds 6] [--concurrency 32] [--chat-concurrency 4]

Two workloads, each through the real gateway with an API key:
- gateway: AuthService.GetOrganization over gRPC (ext_authz → Auth, rate limit → Usage, Auth);
- chat: ConversationService.SendMessage streamed over gRPC (Conversation → Orchestrator → the
  grounded responder on Triton), time to first event and completed turns per second.

Measurements alternate between the two meshes in short slices so both see the same background
load; the client is this Python process on the same cores, so ratios are the point. Target:
instrumentation costs at most 5 % throughput. Prints the machine load and one verdict line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from aimesh.auth.v1 import auth_pb2, auth_pb2_grpc
from aimesh.conversation.v1 import conversation_pb2, conversation_pb2_grpc
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench.scratch import scratch_dir
from scripts.stack import Stack
from services.common.channels import open_channel
from tests.support.mesh import private_addresses

Call = Callable[[], Awaitable[float | None]]
NEEDED = ("auth", "usage", "billing", "knowledge", "orchestrator", "conversation")


class SpanCounter(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP receiver that only counts: the exporters' work is what is being measured."""

    def __init__(self) -> None:
        self.spans = 0

    async def Export(self, request, context):  # type: ignore[no-untyped-def]
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@dataclass
class Mesh:
    name: str
    stack: Stack
    calls: dict[str, Call] = field(default_factory=dict)


async def start_mesh(name: str, metrics: bool, otlp: str, base: Path,
                     sample_percent: float) -> Mesh:
    var_dir = base / name
    overrides = private_addresses(var_dir)
    overrides.update({
        "AIMESH_CERTS_DIR": str(base / "certs"),
        "AIMESH_METRICS": "true" if metrics else "false",
        "AIMESH_OTLP_ENDPOINT": otlp,
        "AIMESH_TRACE_SAMPLE_PERCENT": str(sample_percent),
    })
    stack = Stack.create(overrides, log_dir=var_dir / "log")
    try:
        for service in NEEDED:
            stack.start_service(service)
        stack.start_gateway()
        stack.wait_ready([*NEEDED, "gateway"], timeout=120)
    except BaseException:
        stack.stop_all()  # nothing of a mesh that did not come up outlives the run
        raise
    return Mesh(name, stack)


async def prepare(mesh: Mesh) -> list[grpc.aio.Channel]:
    """An organization with a key and no practical rate limit; the two calls to measure."""
    settings = mesh.stack.settings
    async with httpx.AsyncClient(base_url=f"http://{settings.gateway_addr}", timeout=30) as http:
        signup = (await http.post("/v1/auth:signUp", json={
            "email": f"bench-{uuid.uuid4().hex[:10]}@example.com",
            "password": "benchmark password 123", "organizationDisplayName": "Bench"})).json()
        org = signup["organization"]
        bearer = {"authorization": f"Bearer {signup['accessToken']}"}
        secret = (await http.post(f"/v1/{org}/apiKeys", headers=bearer,
                                  json={"displayName": "bench"})).json()["secret"]
        conversation = (await http.post("/v1/conversations", headers=bearer,
                                        json={"title": "bench"})).json()["name"]
    # As Billing (the only caller the mesh policy lets set limits), under mTLS.
    usage = open_channel(settings, "usage", caller="billing")
    await usage_pb2_grpc.UsageServiceStub(usage).SetRateLimitPolicy(
        usage_pb2.SetRateLimitPolicyRequest(policy=usage_pb2.RateLimitPolicy(
            name=f"{org}/rateLimitPolicy", organization_requests_per_minute=10_000_000,
            api_key_requests_per_minute=10_000_000, plan="bench")), timeout=10)
    await usage.close()

    gateway = grpc.aio.insecure_channel(settings.gateway_addr)
    key = (("x-api-key", secret),)
    auth = auth_pb2_grpc.AuthServiceStub(gateway)
    chat = conversation_pb2_grpc.ConversationServiceStub(gateway)
    get_org = auth_pb2.GetOrganizationRequest(name=org)

    async def call_gateway() -> None:
        await auth.GetOrganization(get_org, metadata=key, timeout=10)

    async def call_chat() -> float:
        start = time.perf_counter()
        first: float | None = None
        request = conversation_pb2.SendMessageRequest(
            conversation=conversation, content="What can you tell me about the spare bulbs?")
        async for _ in chat.SendMessage(request, metadata=key, timeout=60):
            if first is None:
                first = time.perf_counter() - start
        return first or 0.0

    mesh.calls = {"gateway": call_gateway, "chat": call_chat}
    return [gateway]


async def slice_throughput(call: Call, concurrency: int, seconds: float) -> tuple[int, int, list[float]]:
    done = errors = 0
    firsts: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, errors
        while time.perf_counter() < stop_at:
            try:
                first = await call()
                done += 1
                if first:
                    firsts.append(first)
            except grpc.RpcError:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, errors, firsts


async def compare(meshes: list[Mesh], workload: str, concurrency: int, seconds: float,
                  rounds: int) -> dict[str, tuple[float, int, float | None]]:
    totals = {m.name: [0, 0, []] for m in meshes}  # type: ignore[var-annotated]
    for m in meshes:  # warm-up: connections, caches, the responder
        await slice_throughput(m.calls[workload], min(concurrency, 4), 1.0)
    for _ in range(rounds):
        for m in meshes:
            done, errors, firsts = await slice_throughput(m.calls[workload], concurrency, seconds / rounds)
            totals[m.name][0] += done
            totals[m.name][1] += errors
            totals[m.name][2].extend(firsts)
    return {name: (done / seconds, errors, statistics.median(firsts) * 1000 if firsts else None)
            for name, (done, errors, firsts) in totals.items()}


async def run(args: argparse.Namespace) -> int:
    sink = SpanCounter()
    receiver = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, receiver)
    otlp = f"127.0.0.1:{receiver.add_insecure_port('127.0.0.1:0')}"
    await receiver.start()
    with scratch_dir("aimesh-bench-obs-") as base:
        meshes: list[Mesh] = []
        channels: list[grpc.aio.Channel] = []
        try:
            for name, metrics, endpoint in (("off", False, ""), ("metrics", True, ""),
                                            ("on", True, otlp)):
                meshes.append(await start_mesh(name, metrics, endpoint, base, args.sample_percent))
                channels += await prepare(meshes[-1])
            results = {
                "gateway": await compare(meshes, "gateway", args.concurrency, args.seconds,
                                         args.rounds),
                "chat": await compare(meshes, "chat", args.chat_concurrency, args.seconds,
                                      args.rounds),
            }
        finally:
            for channel in channels:
                await channel.close()
            for mesh in meshes:
                mesh.stack.stop_all()
            await receiver.stop(None)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\ninstrumentation off vs on, {os.cpu_count()} cores shared by client and both meshes "
          f"(load average {load}); {sink.spans} spans received from the instrumented mesh "
          f"(tracing {args.sample_percent:g} % of requests)\n")
    print(f"{'workload':10} {'off /s':>9} {'metrics /s':>11} {'all on /s':>10} {'metrics/off':>12} "
          f"{'all/off':>8} {'errors':>7} {'first event p50 off/all':>24}")
    worst = 1.0
    for workload, by in results.items():
        off, only_metrics, on = by["off"], by["metrics"], by["on"]
        ratio = on[0] / off[0] if off[0] else 0.0
        metrics_ratio = only_metrics[0] / off[0] if off[0] else 0.0
        worst = min(worst, ratio)
        ttft = (f"{off[2]:.1f} / {on[2]:.1f} ms" if off[2] is not None and on[2] is not None else "-")
        errors = off[1] + only_metrics[1] + on[1]
        print(f"{workload:10} {off[0]:9.1f} {only_metrics[0]:11.1f} {on[0]:10.1f} {metrics_ratio:12.3f} "
              f"{ratio:8.3f} {errors:7d} {ttft:>24}")
    verdict = "MET" if worst >= 0.95 else "MISSED"
    print(f"\ntarget: instrumentation costs <= 5 % throughput: {verdict} "
          f"(worst ratio {worst:.3f}; slices alternate, so noise of a few % is expected)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.observability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="per mesh and workload")
    parser.add_argument("--rounds", type=int, default=4, help="alternating slices")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--chat-concurrency", type=int, default=4)
    parser.add_argument("--sample-percent", type=float, default=10.0,
                        help="AIMESH_TRACE_SAMPLE_PERCENT of the traced mesh (default: the default)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
