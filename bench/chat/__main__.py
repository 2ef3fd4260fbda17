"""Chat benchmark: time to first token (TTFT) and tokens/s of one grounded answer, six paths,
same machine, same run, then many concurrent streams through Envoy.

    .venv/bin/python -m bench.chat [--requests 20] [--streams 100] [--rounds 4]

Paths (the same question and context each time; the Triton grounded responder answers):
1. Triton directly (services/common/triton.py `respond`, decoupled stream);
2. Orchestrator.Generate, direct gRPC (identity headers set by the client, as the gateway would);
3. Conversation.SendMessage, direct gRPC (stores both messages, builds history, calls 2);
4. SendMessage through Envoy, gRPC with an API key (ext_authz -> Auth, rate limit -> Usage);
5. SendMessage through Envoy, JSON/HTTP with server-sent events;
6. the relay floor: Generate through two no-op grpc.aio relay processes standing where
   Conversation and the Orchestrator stand (bench/chat/relay.py: the mesh's mTLS, no Envoy, no
   storage, no admission, no interceptors), the second calling Triton as path 1 does. It is the
   least that the design's two Python gRPC hops cost; the line after the table compares it
   with the room the SSE target leaves.

TTFT = request sent -> first text token received; tokens/s = tokens after the first divided by
the time from first to last. The paths are measured interleaved (one request of each per round,
bench/chat/timing.py), so load swings of the shared machine hit all alike. Ratios are to path 1
(mesh overhead). Then `--streams` direct Triton streams and as many SendMessage streams through
Envoy gRPC (each its own conversation), then as many Generate streams through the relay floor
(path 6, the floor of that target), are started at once and held to the end, in turn,
`--rounds` times: p95 TTFT of each side over all its rounds, and the CPU each process spent per
stream (read SETTLE_SECONDS after each phase, so work left behind counts), by round and as the
mean of the rounds. Knowledge runs as in production
(the Orchestrator asks it whether the organization has documents to ground on). Everything
(services, Envoy, Triton, this client) shares the same cores, so absolute numbers are bounded
by the machine; the ratios are the point. The mesh runs
as configured (mTLS between services by default); the direct paths call as the mesh identities
allowed to (Conversation -> Orchestrator, gateway -> Conversation).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from aimesh.conversation.v1 import conversation_pb2 as cpb
from aimesh.conversation.v1 import conversation_pb2_grpc
from aimesh.orchestrator.v1 import orchestrator_pb2 as opb
from aimesh.orchestrator.v1 import orchestrator_pb2_grpc

from bench.accounts import BenchAccount, bench_account
from bench.chat import relay
from bench.chat.timing import (
    Path_,
    Stream,
    concurrent,
    cpu_parts,
    cpu_seconds,
    mean_cpu,
    measure_interleaved,
    native_sse_events,
    percentile,
    print_cpu_per_stream,
    report,
)
from bench.gateway.envoy_split import JSON_KEY, Split, envoy_split
from bench.report import print_load, verdict
from bench.scratch import scratch_dir
from scripts import triton_server
from scripts.stack import Stack
from services.common.channels import open_channel
from services.common.config import Settings
from services.common.triton import TritonClient
from services.common.usage_client import DRAIN_GATHER_SECONDS
from tests.support.mesh import private_addresses

CONTEXT = (
    "The harbor lighthouse was built in 1871 from granite blocks. Its lamp is switched on thirty "
    "minutes before sunset. The keeper logs the weather every four hours in a red ledger. Spare "
    "bulbs are stored in the iron cabinet on the second landing. Visitors may climb the tower on "
    "Saturdays between ten and noon. The fog horn sounds twice a minute when visibility drops."
)
QUESTION = "When is the lamp switched on, and where are spare bulbs kept?"
MODEL = "models/grounded-extractive-v1"
SSE_PATH = "SendMessage via Envoy, JSON/SSE + key"
ORCHESTRATOR_PATH = "Orchestrator.Generate, direct gRPC"
RELAY_PATH = "relay floor: 2 no-op grpc.aio hops"
SSE_TARGET = 1.2  # TTFT through the gateway's SSE, times Triton direct (p50)
STREAMS_TARGET = 1.1  # concurrent streams' TTFT p95 through the gateway, times direct
ACCESS_LOG_FLUSH_SECONDS = 11.0  # Envoy's default file flush interval is 10 s
# After a concurrent phase, the CPU is read this much later: work the streams leave behind
# (the usage outbox delivered DRAIN_GATHER_SECONDS after the completions, to Usage; cache
# writes) counts with them, and does not run into the next phase.
SETTLE_SECONDS = 4 * DRAIN_GATHER_SECONDS
SERVICES_USED = ["auth", "usage", "knowledge", "orchestrator", "conversation"]


@contextmanager
def private_stack(prefix: str, services: list[str]) -> Iterator[Stack]:
    """Triton (unless one answers already), `services`, then Envoy, on free ports, in a var
    directory of their own that is removed (logs, certificates) when the run ends; on a failure
    what they logged is printed first."""
    with scratch_dir(prefix) as var_dir:
        stack = start_stack(var_dir, services)
        try:
            yield stack
        finally:
            stack.stop_all()


def start_stack(var_dir: Path, services: list[str]) -> Stack:
    """Triton (unless one answers already), `services`, then Envoy, on free ports."""
    overrides = {**private_addresses(var_dir), "AIMESH_PROVIDER_FIRST_TOKEN_SECONDS": "120"}
    stack = Stack.create(overrides, log_dir=var_dir / "log")
    try:
        host, ports = stack.triton_ports()
        if not triton_server.is_ready(ports, host):
            print("starting Triton ...")
            stack.start_triton()
            stack.wait_ready(["triton"], timeout=600)
        for service in services:
            stack.start_service(service)
        stack.wait_ready(services, timeout=120)
        stack.start_gateway()
        stack.wait_ready(["gateway"], timeout=60)
    except BaseException:
        stack.stop_all()
        raise
    return stack


async def run(args: argparse.Namespace) -> None:
    print_load("before the run")
    with private_stack("aimesh-bench-chat-", SERVICES_USED) as stack:
        mesh = {name: p.popen.pid for name, p in stack.processes.items()}
        relays = relay.start_relays(stack)
        relay_pids = {name: p.popen.pid for name, p in stack.processes.items()
                      if name.startswith("relay-")}
        await bench(args, stack.settings, relays, mesh, relay_pids, stack.log_dir / "gateway.log")


def triton_stream(triton: TritonClient) -> Stream:
    """The grounded responder on Triton directly: the baseline every ratio is taken against."""

    async def stream() -> AsyncIterator[str]:
        async for response in triton.respond(
            QUESTION, [CONTEXT], ["context"], max_sentences=3, timeout=600
        ):
            if text := response.text("TOKEN"):
                yield text

    return stream


@dataclass
class Clients:
    """Everything the paths call, opened once: direct paths as the mesh identities allowed to
    make them (mTLS by default; the relay floor's first hop as the gateway would call
    Conversation, but without client interceptors), gateway paths with the bench account's API
    key."""

    http: httpx.AsyncClient
    account: BenchAccount
    triton: TritonClient
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @classmethod
    def open(cls, http: httpx.AsyncClient, account: BenchAccount, settings: Settings,
             relays: Settings) -> Clients:
        """`relays`: the settings that address the relay floor's hops (relay.start_relays)."""
        clients = cls(http, account, TritonClient(settings.triton_url))
        clients.channels = [
            open_channel(settings, "orchestrator", caller="conversation"),
            open_channel(settings, "conversation", caller="gateway"),
            grpc.aio.insecure_channel(settings.gateway_addr),
            relay.open_channel(relays, relay.HOPS[0], caller="gateway"),
        ]
        return clients

    @property
    def orchestrator(self) -> orchestrator_pb2_grpc.OrchestratorServiceStub:
        return orchestrator_pb2_grpc.OrchestratorServiceStub(self.channels[0])

    @property
    def conversation(self) -> conversation_pb2_grpc.ConversationServiceStub:
        return conversation_pb2_grpc.ConversationServiceStub(self.channels[1])

    @property
    def gateway(self) -> conversation_pb2_grpc.ConversationServiceStub:
        return conversation_pb2_grpc.ConversationServiceStub(self.channels[2])

    @property
    def relay(self) -> orchestrator_pb2_grpc.OrchestratorServiceStub:
        """The relay floor's first hop (it serves Generate)."""
        return orchestrator_pb2_grpc.OrchestratorServiceStub(self.channels[3])

    async def new_conversations(self, count: int) -> list[str]:
        """Fresh conversations (created untimed), so every SendMessage has the same history."""

        async def one() -> str:
            created = await self.conversation.CreateConversation(
                cpb.CreateConversationRequest(conversation=cpb.Conversation(system_prompt=CONTEXT)),
                metadata=self.account.identity, timeout=10)
            return created.name

        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def close(self) -> None:
        await self.triton.close()
        for channel in self.channels:
            await channel.close()


# Path name -> ms from each request to its answer's announcement (Generate's `metadata`,
# SendMessage's `generation` event): it may come before the first token (issue 15).
Announced = dict[str, list[float]]


def send_stream(stub: conversation_pb2_grpc.ConversationServiceStub, name: str,
                metadata: tuple[tuple[str, str], ...], announced: list[float] | None = None
                ) -> Stream:
    async def stream() -> AsyncIterator[str]:
        start = time.perf_counter()
        request = cpb.SendMessageRequest(conversation=name, content=QUESTION)
        async for event in stub.SendMessage(request, metadata=metadata, timeout=600):
            if event.HasField("delta"):
                yield event.delta.text
            elif event.HasField("generation") and announced is not None:
                announced.append((time.perf_counter() - start) * 1000)

    return stream


def print_announced(results: list[Path_], announced: Announced) -> None:
    """When the answer was announced, next to its first token (p50 of each path)."""
    ttft = {r.name: r.ttft_p50 * 1000 for r in results}
    print("answer announced (metadata / generation event) vs first token, p50: " + "; ".join(
        f"{name} {statistics.median(times):.1f} vs {ttft[name]:.1f} ms"
        for name, times in announced.items() if times))


def generate_request() -> opb.GenerateRequest:
    """The Generate request of the Orchestrator and relay floor paths (the same grounded
    question as every path)."""
    return opb.GenerateRequest(model=MODEL, disable_cache=True, messages=[
        opb.ChatMessage(role=opb.ROLE_SYSTEM, content=CONTEXT),
        opb.ChatMessage(role=opb.ROLE_USER, content=QUESTION)])


def relay_floor_stream(clients: Clients, generate: opb.GenerateRequest) -> Stream:
    """Generate through the relay floor's two no-op hops."""

    async def stream() -> AsyncIterator[str]:
        async for event in clients.relay.Generate(generate, timeout=600):
            if event.HasField("delta"):
                yield event.delta.text

    return stream


def sequential_paths(clients: Clients, spare: list[str],
                     announced: Announced) -> list[tuple[str, Stream]]:
    """The six paths (module docstring); each SendMessage takes a conversation from `spare`;
    `announced` receives when the paths through the mesh announced their answers."""
    account = clients.account
    generate = generate_request()

    names = [ORCHESTRATOR_PATH, "Conversation.SendMessage, direct gRPC",
             "SendMessage via Envoy, gRPC + key", SSE_PATH]
    for name in names:
        announced[name] = []

    async def orchestrator() -> AsyncIterator[str]:
        start = time.perf_counter()
        call = clients.orchestrator.Generate(generate, metadata=account.identity, timeout=300)
        async for event in call:
            if event.HasField("delta"):
                yield event.delta.text
            elif event.HasField("metadata"):
                announced[ORCHESTRATOR_PATH].append((time.perf_counter() - start) * 1000)

    async def sse() -> AsyncIterator[str]:
        start = time.perf_counter()
        async with clients.http.stream(
            "POST", f"/v1/{spare.pop()}:sendMessage", headers={"x-api-key": account.secret},
            json={"content": QUESTION},
        ) as reply:
            async for kind, text in native_sse_events(reply):
                if kind == "delta":
                    yield text
                elif kind == "generation":
                    announced[SSE_PATH].append((time.perf_counter() - start) * 1000)

    return [
        ("Triton responder, direct", triton_stream(clients.triton)),
        (ORCHESTRATOR_PATH, orchestrator),
        (names[1], lambda: send_stream(clients.conversation, spare.pop(), account.identity,
                                       announced[names[1]])()),
        (names[2], lambda: send_stream(clients.gateway, spare.pop(), account.key_metadata,
                                       announced[names[2]])()),
        (SSE_PATH, sse),
        (RELAY_PATH, relay_floor_stream(clients, generate)),
    ]


async def concurrent_ratio(clients: Clients, streams: int, rounds: int, mesh: dict[str, int],
                           relays: dict[str, int]) -> tuple[float, float]:
    """`streams` direct Triton streams, then as many SendMessage streams through Envoy gRPC, then
    as many Generate streams through the relay floor, `rounds` times in turn; the ratios of the
    gateway's and the floor's TTFT p95 to direct's over all rounds. Prints the CPU the mesh's
    processes (`mesh`: name -> pid) spent per gateway stream, and the relays' per floor stream."""
    direct: list[float] = []
    gateway: list[float] = []
    floor: list[float] = []
    paired: list[float] = []  # each round's gateway p95 / direct p95
    mesh_cpu: list[dict[str, float]] = []  # each round's CPU per stream by process (ms)
    floor_cpu: list[dict[str, float]] = []
    failed = False
    relay_stream = relay_floor_stream(clients, generate_request())

    for round_ in range(1, rounds + 1):
        names = await clients.new_conversations(streams)
        direct_ttfts = await concurrent(
            f"{streams} Triton responder streams, direct (round {round_})",
            [triton_stream(clients.triton)] * streams)
        direct += direct_ttfts
        failed |= not direct_ttfts
        cpu_before = cpu_seconds(mesh)
        ttfts = await concurrent(
            f"{streams} SendMessage streams via Envoy gRPC (round {round_})",
            [send_stream(clients.gateway, n, clients.account.key_metadata) for n in names])
        await asyncio.sleep(SETTLE_SECONDS)
        mesh_cpu.append(print_cpu_per_stream(cpu_before, cpu_seconds(mesh), streams))
        if ttfts and direct_ttfts:
            paired.append(percentile(ttfts, 0.95) / percentile(direct_ttfts, 0.95))
        gateway += ttfts
        failed |= not ttfts
        # The floor of the concurrent target: the same load through the two no-op hops. It is
        # reported, not judged (any failure shows in its own line).
        cpu_before = cpu_seconds(relays)
        floor += await concurrent(
            f"{streams} Generate streams via the relay floor (round {round_})",
            [relay_stream] * streams)
        await asyncio.sleep(SETTLE_SECONDS)
        floor_cpu.append(print_cpu_per_stream(cpu_before, cpu_seconds(relays), streams))
    print_mean_cpu(mesh_cpu, floor_cpu)
    if failed:
        return float("inf"), float("inf")
    direct_p95, gateway_p95 = percentile(direct, 0.95), percentile(gateway, 0.95)
    print(f"\nall rounds: TTFT p95 direct {direct_p95:.0f} ms, "
          f"via the gateway {gateway_p95:.0f} ms, via the relay floor "
          f"{percentile(floor, 0.95):.0f} ms")
    # For reading a loaded machine (the verdict stays on all rounds): one round under a load
    # spike sets the p95 of all rounds, while the median of the rounds' own ratios does not.
    print("per-round p95 ratios, gateway / direct: "
          + ", ".join(f"{r:.2f}x" for r in paired) + f"; median {statistics.median(paired):.2f}x")
    return gateway_p95 / direct_p95, percentile(floor, 0.95) / direct_p95


def print_mean_cpu(mesh: list[dict[str, float]], floor: list[dict[str, float]]) -> None:
    """CPU per stream by process, mean of the rounds: the mesh's (with and without Triton, whose
    work the direct path does too) and the relay floor's."""
    per_process, relays = mean_cpu(mesh), mean_cpu(floor)
    total = sum(per_process.values())
    print(f"\nCPU per stream, mean of {len(mesh)} rounds (ms): mesh {cpu_parts(per_process)}; "
          f"total {total:.1f}, without Triton {total - per_process.get('triton', 0.0):.1f}; "
          f"relay floor {cpu_parts(relays)}; total {sum(relays.values()):.1f}")


async def print_gateway_time(access_log: Path, window: tuple[float, float]
                             ) -> Split:
    """Envoy's own share of the sequential SendMessage paths (`window`: their wall-clock start
    and end), from its access log (bench/gateway/envoy_split.py): request filters (first request
    byte to the upstream request) and the first response byte through the gateway (upstream in
    -> downstream out), medians in microseconds. Envoy writes its log every 10 s
    (--file-flush-interval-msec)."""
    await asyncio.sleep(max(0.0, window[1] + ACCESS_LOG_FLUSH_SECONDS - time.time()))
    split = envoy_split(access_log, *window, fields=("filters_us", "response_us"))
    for kind, fields in sorted(split.items()):
        print(f"Envoy's own time on SendMessage via {kind} (access log, medians): request "
              f"filters {fields.get('filters_us', 0):.0f} us, first response byte "
              f"{fields.get('response_us', 0):.0f} us")
    return split


def print_relay_floor(results: list[Path_], envoy_sse_us: float | None) -> None:
    """The relay floor next to the room the SSE target leaves over Triton direct (p50s), and
    with Envoy's own request filters on the SSE path (`envoy_sse_us`, from its access log) added:
    what is left for everything the services themselves do before the first token."""
    by_name = {r.name: r for r in results}
    triton, floor = results[0].ttft_p50 * 1000, by_name[RELAY_PATH].ttft_p50 * 1000
    room, hops = (SSE_TARGET - 1) * triton, floor - triton
    print(f"relay floor: {floor / triton:.2f}x Triton direct (two no-op hops, no Envoy); "
          f"SSE target {SSE_TARGET}x leaves {room:.1f} ms, the hops alone take {hops:.1f} ms")
    if envoy_sse_us is not None:
        envoy = envoy_sse_us / 1000
        print(f"SSE budget: {room:.1f} ms room - {hops:.1f} ms hops - {envoy:.1f} ms Envoy's SSE "
              f"request filters = {room - hops - envoy:.1f} ms left for admission, the turn's "
              "statement, the prompt and every interceptor")


def print_verdicts(results: list[Path_], streams: int, stream_ratio: float,
                   floor_ratio: float, envoy_sse_us: float | None) -> None:
    by_name = {r.name: r for r in results}
    print_relay_floor(results, envoy_sse_us)
    print(f"relay floor, {streams} concurrent streams: TTFT p95 {floor_ratio:.2f}x direct (two "
          f"no-op hops, no Envoy, no storage; the target is {STREAMS_TARGET}x)")
    sse_ratio = by_name[SSE_PATH].ttft_p50 / results[0].ttft_p50
    print(f"ratio SSE TTFT p50 / Triton direct: {sse_ratio:.2f}x")
    print(verdict(f"TTFT through the gateway's SSE <= {SSE_TARGET}x Triton direct (p50)",
                  sse_ratio <= SSE_TARGET, f"{sse_ratio:.2f}x"))
    print(f"ratio {streams} concurrent streams TTFT p95, gateway / direct: {stream_ratio:.2f}x")
    print(verdict(f"{streams} concurrent streams TTFT p95 <= {STREAMS_TARGET}x direct",
                  stream_ratio <= STREAMS_TARGET, f"{stream_ratio:.2f}x"))


async def bench(args: argparse.Namespace, settings: Settings, relays: Settings,
                mesh: dict[str, int], relay_pids: dict[str, int], access_log: Path) -> None:
    async with httpx.AsyncClient(base_url=f"http://{settings.gateway_addr}", timeout=300) as http:
        clients = Clients.open(http, await bench_account(http, settings), settings, relays)
        try:
            spare = await clients.new_conversations(4 * (args.requests + 1))
            announced: Announced = {}
            sequential_start = time.time()
            results = await measure_interleaved(
                sequential_paths(clients, spare, announced), args.requests)
            report(results)
            print_announced(results, announced)
            sequential = (sequential_start, time.time())
            stream_ratio, floor_ratio = await concurrent_ratio(
                clients, args.streams, args.rounds, mesh, relay_pids)
            print()
            envoy = await print_gateway_time(access_log, sequential)
            print_load("after the run")
            print_verdicts(results, args.streams, stream_ratio, floor_ratio,
                           envoy.get(JSON_KEY, {}).get("filters_us"))
        finally:
            await clients.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.chat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="sequential requests per path")
    parser.add_argument("--streams", type=int, default=100,
                        help="concurrent streams per side (direct, through Envoy)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternating rounds of the concurrent streams")
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
