"""Server streams through a real Envoy as Server-Sent Events, and what an upstream receives.

A second Envoy is rendered from the same code as the mesh gateway, with the Conversation cluster
pointing at a stand-in ConversationService (SendMessage streams three deltas slowly) so the
test can see SSE framing, incremental delivery and the headers the gateway forwards upstream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from aimesh.conversation.v1 import conversation_pb2, conversation_pb2_grpc

from scripts import gateway as gw
from services.common import tls
from tests.support.accounts import create_key, sign_up
from tests.support.mesh import TestMesh, free_port


class StandInConversation(conversation_pb2_grpc.ConversationServiceServicer):
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    async def SendMessage(
        self, request: conversation_pb2.SendMessageRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[conversation_pb2.SendMessageResponse]:
        self.seen.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        for word in ("one", "two", "three"):
            yield conversation_pb2.SendMessageResponse(
                delta=conversation_pb2.AssistantDelta(text=word))
            await asyncio.sleep(0.3)


def _start_envoy(config: Path, admin_file: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(gw.envoy_argv(config, admin_file, concurrency=1), stdout=out,
                                stderr=subprocess.STDOUT)


@pytest.fixture
async def stream_gateway(mesh: TestMesh, tmp_path: Path) -> AsyncIterator[tuple[str, StandInConversation]]:
    mesh.ensure("auth", "usage")
    fake = StandInConversation()
    # Listens as "conversation" would (mTLS and the caller graph when the mesh runs mtls), so
    # the gateway's upstream TLS is exercised too.
    mode = mesh.settings.tls_mode
    server = grpc.aio.server(interceptors=[tls.interceptor_for("conversation", mode)])  # type: ignore[arg-type]
    conversation_pb2_grpc.add_ConversationServiceServicer_to_server(fake, server)
    port = tls.add_listen_port(server, "127.0.0.1:0", "conversation", mode,  # type: ignore[arg-type]
                               mesh.settings.certs_path)
    await server.start()
    settings = dataclasses.replace(
        mesh.settings,
        gateway_addr=f"127.0.0.1:{free_port()}",
        gateway_admin_addr=f"127.0.0.1:{free_port()}",
        service_addrs={**mesh.settings.service_addrs, "conversation": f"127.0.0.1:{port}"},
    )
    config, admin_file = gw.write_config(settings, tmp_path)
    envoy = _start_envoy(config, admin_file, tmp_path / "envoy.log")
    try:
        base = f"http://{settings.gateway_addr}"
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            while time.monotonic() < deadline:
                assert envoy.poll() is None, (tmp_path / "envoy.log").read_text()[-2000:]
                try:
                    if (await client.get("/.well-known/jwks.json")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        yield base, fake
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
        await server.stop(grace=None)


async def test_server_stream_is_sse_incremental_and_upstream_sees_the_key_not_a_spoofed_org(
    http: httpx.AsyncClient, stream_gateway: tuple[str, StandInConversation]
) -> None:
    base, fake = stream_gateway
    account = await sign_up(http)
    key = await create_key(http, account)
    arrivals: list[float] = []
    events: list[dict[str, object]] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        started = time.monotonic()
        async with client.stream(
            "POST", "/v1/conversations/c1:sendMessage", json={"content": "hi"},
            headers={"x-api-key": key["secret"], "x-aimesh-org": "o_spoofed"},
        ) as reply:
            assert reply.status_code == 200, await reply.aread()
            buffer = ""
            async for chunk in reply.aiter_text():
                buffer += chunk
                while "\n\n" in buffer:
                    event, buffer = buffer.split("\n\n", 1)
                    assert event.startswith("data: "), event
                    events.append(json.loads(event[len("data: "):]))
                    arrivals.append(time.monotonic() - started)
    assert [e["delta"]["text"] for e in events] == ["one", "two", "three"]  # type: ignore[index]
    # Delivered as produced (0.3 s apart), not buffered until the stream ended.
    assert arrivals[-1] - arrivals[0] > 0.4

    # An API key on a gRPC/JSON route skips ext_authz: the service admits the key itself
    # (services/common/gateway_keys.py), so the key goes upstream and no identity header does
    # (the client's spoofed one was stripped; the stand-in runs no admission of its own).
    seen = fake.seen[-1]
    assert seen["x-api-key"] == key["secret"]
    assert not any(name.startswith("x-aimesh-") for name in seen), seen
