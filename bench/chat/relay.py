"""The floor of the design's two Python gRPC hops: no-op relays standing where Conversation and
the Orchestrator stand on the chat path (bench.chat's "relay floor" path, issue 15).

    python -m bench.chat.relay conversation   # hop 1: serves Generate, forwards to hop 2
    python -m bench.chat.relay orchestrator   # hop 2: serves Generate, forwards to Triton

Each hop is its own process (the design runs one process per service) on uvloop, serving the
real `aimesh.orchestrator.v1.OrchestratorService/Generate` contract from gen/ with the mesh's
transport: mTLS from the local CA with the identity of the service it stands for (hop 1 is
"conversation" and calls hop 2 as "conversation"; hop 2 is "orchestrator"), the mesh's server
keepalive options and its client channel options (services/common/tls.py, mesh_policy). Hop 1
listens on AIMESH_CONVERSATION_ADDR and reaches hop 2 at AIMESH_ORCHESTRATOR_ADDR, so the bench
starts both with those two addresses pointing at the relays (`start_relays`). Hop 2 calls
Triton's grounded responder with the project's one Triton client (services/common/triton.py
`respond`, as the Orchestrator's Triton provider does), the question being the last message
and the passages the earlier ones, and sends each token as a GenerateResponse delta the moment
it arrives; hop 1 relays every message of hop 2 as it arrives, in order. A Triton failure
becomes the RPC's status at hop 2 and hop 1 relays that status (never a hang).

What the hops leave out, on purpose, is everything but the hops: no storage, no admission, no
domain work, and no interceptors on either side — neither the services' server chain (peer
authorization, telemetry, error mapping, JWT, access, audit: services/common/server.py builds
it around a service runtime with its database and cache) nor the tracing, metrics and deadline
interceptors of services/common/channels.py (the bench's own client calls hop 1 through
`open_channel` here, without them too). What this path measures is therefore a lower bound for
any design with these two Python gRPC processes between the gateway and Triton.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvloop
from aimesh.orchestrator.v1 import orchestrator_pb2 as opb
from aimesh.orchestrator.v1 import orchestrator_pb2_grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from scripts.stack import Stack, grpc_healthy
from services.common import mesh_policy, tls
from services.common.config import Settings
from services.common.errors import ServiceError
from services.common.triton import TritonClient
from tests.support.mesh import free_port

HOPS = ("conversation", "orchestrator")  # hop 1, hop 2: the identities they serve and call as
NO_DEADLINE_SECONDS = 600.0
DRAIN_SECONDS = 1.0


def open_channel(settings: Settings, callee: str, caller: str) -> grpc.aio.Channel:
    """A channel to hop `callee` as `caller`: the mesh's channel (mTLS, options) without the
    interceptors services/common/channels.py adds, so that nothing but the hop is measured."""
    return tls.open_channel(settings.address_of(callee), caller=caller, callee=callee,
                            mode=settings.tls_mode, certs_dir=settings.certs_path)


def _time_left(context: grpc.aio.ServicerContext) -> float:
    left = context.time_remaining()
    return NO_DEADLINE_SECONDS if left is None else left


class ForwardHop(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """Hop 1: Generate forwarded to the next hop, every message relayed as it arrives."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._next = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)

    async def Generate(
        self, request: opb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[opb.GenerateResponse]:
        call = self._next.Generate(request, timeout=_time_left(context))
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
        finally:
            call.cancel()  # the caller left early: stop the next hop too (no-op when done)


class TritonHop(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """Hop 2: Generate answered by Triton's grounded responder, one delta per token."""

    def __init__(self, triton: TritonClient) -> None:
        self._triton = triton

    async def Generate(
        self, request: opb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[opb.GenerateResponse]:
        if not request.messages:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "messages: must not be empty")
        *earlier, last = request.messages
        passages = [m.content for m in earlier]
        ids = [f"message-{i}" for i in range(len(passages))]
        try:
            async for response in self._triton.respond(
                last.content, passages, ids, max_sentences=3, timeout=_time_left(context)
            ):
                text = response.text("TOKEN")
                if text:
                    yield opb.GenerateResponse(delta=opb.TextDelta(text=text))
        except ServiceError as exc:
            await context.abort(exc.code, exc.message)


async def _serve(hop: str, settings: Settings) -> None:
    """Serve `hop` until SIGTERM or SIGINT."""
    server = grpc.aio.server(options=list(mesh_policy.SERVER_KEEPALIVE_OPTIONS))
    servicer: Any
    if hop == HOPS[0]:
        upstream = open_channel(settings, HOPS[1], caller=hop)
        servicer, close = ForwardHop(upstream), upstream.close
    else:
        triton = TritonClient.from_settings(settings)
        servicer, close = TritonHop(triton), triton.close
    orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    tls.add_listen_port(server, f"127.0.0.1:{settings.listen_port(hop)}", hop,
                        settings.tls_mode, settings.certs_path)
    await server.start()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=DRAIN_SECONDS)
    await close()


def relay_env(stack: Stack) -> dict[str, str]:
    """`stack`'s environment with the two hops' addresses on free ports (the relays' own)."""
    return {**stack.env, **{f"AIMESH_{hop.upper()}_ADDR": f"127.0.0.1:{free_port()}"
                            for hop in HOPS}}


def start_relays(stack: Stack, timeout: float = 60.0) -> Settings:
    """Start both hops as processes of `stack` ("relay-<hop>", stopped with it) and wait until
    they serve; returns the settings that address them (hop 1 is `address_of(HOPS[0])`)."""
    env = relay_env(stack)
    settings = Settings.from_env(env)
    names = []
    for hop in reversed(HOPS):
        name = f"relay-{hop}"
        stack.spawn(name, [sys.executable, "-m", "bench.chat.relay", hop],
                    lambda hop=hop: grpc_healthy(settings, hop), env=env)
        names.append(name)
    stack.wait_ready(names, timeout=timeout)
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.chat.relay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hop", choices=HOPS, help="the service this hop stands for")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(args.hop, Settings.from_env()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
