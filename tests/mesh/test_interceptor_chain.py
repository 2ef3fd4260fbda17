"""The server's interceptors wrap each method's handler once and share it across calls
(services/common/handlers.py `MethodInterceptor`, `InterceptorChain`): what depends on the call
(the peer's mesh identity, the end user's role, audit metadata) must still be decided per call.
A real grpc.aio server on localhost runs the chain as the services do, the peer identified by its
mTLS client certificate (local CA) or by an Istio sidecar's XFCC header; calls to the same method
are interleaved, each held open in the servicer while others with another identity come and go."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from aimesh.conversation.v1 import conversation_pb2 as cpb
from aimesh.conversation.v1 import conversation_pb2_grpc

from services.common import tls
from services.common.access import AccessInterceptor
from services.common.audit import Audited, AuditInterceptor, Event
from services.common.errors import error_info, status_from_rpc_error
from services.common.handlers import InterceptorChain
from services.common.identity import identity_from_metadata
from services.common.server import ErrorInterceptor

GET = "/aimesh.conversation.v1.ConversationService/GetConversation"
XFCC = "By=spiffe://cluster.local/ns/aimesh/sa/conversation;URI=spiffe://cluster.local/ns/aimesh/sa/"

Stub = conversation_pb2_grpc.ConversationServiceStub


def _user(identity: str, role: str) -> tuple[tuple[str, str], ...]:
    return (
        ("x-aimesh-org", "o_1"),
        ("x-aimesh-subject", f"users/{identity}-{role.lower()}"),
        ("x-aimesh-roles", role),
        ("x-request-id", f"req-{identity}-{role}"),
    )


class HeldServicer(conversation_pb2_grpc.ConversationServiceServicer):
    """Answers with who it saw (the verified peer and the end user), once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    def _seen(self, context: grpc.aio.ServicerContext) -> str:
        user = identity_from_metadata(context.invocation_metadata() or ())
        return f"{tls.current_peer.get()}:{user.subject if user else '-'}"

    async def GetConversation(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        seen = self._seen(context)
        self.entered += 1
        await self.release.wait()
        return cpb.Conversation(name=request.name, title=seen)

    async def SendMessage(self, request: Any, context: grpc.aio.ServicerContext
                          ) -> AsyncIterator[Any]:
        seen = self._seen(context)
        self.entered += 1
        yield cpb.SendMessageResponse(delta=cpb.AssistantDelta(text="first "))
        await self.release.wait()
        yield cpb.SendMessageResponse(delta=cpb.AssistantDelta(text=seen))


class Recorded:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def record(self, event: Event) -> None:
        self.events.append(event)


@pytest.fixture(params=["mtls", "xfcc"])
async def served(request: pytest.FixtureRequest, certs_dir: Path
                 ) -> AsyncIterator[tuple[Callable[[str], Any], HeldServicer, Recorded]]:
    """(caller identity -> (stub, metadata to send)), the servicer, the audit sink."""
    mode = request.param
    servicer, sink = HeldServicer(), Recorded()
    # GetConversation is not audited in production; here it is, to see each call's own metadata.
    audited = {GET: Audited(resource=lambda q, r: r.title)}
    server = grpc.aio.server(interceptors=[InterceptorChain([
        tls.PeerAuthorizationInterceptor("conversation", mode=mode),
        ErrorInterceptor(),
        AccessInterceptor(),
        AuditInterceptor(lambda: sink, audited),
    ])])
    conversation_pb2_grpc.add_ConversationServiceServicer_to_server(servicer, server)
    if mode == "mtls":
        creds = tls.server_credentials(tls.load_identity("conversation", certs_dir))
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channels: dict[str, grpc.aio.Channel] = {}

    def as_caller(identity: str) -> tuple[Stub, tuple[tuple[str, str], ...]]:
        if identity not in channels:
            channels[identity] = tls.open_channel(
                f"127.0.0.1:{port}", caller=identity, callee="conversation",
                mode="mtls" if mode == "mtls" else "plaintext", certs_dir=certs_dir)
        peer = () if mode == "mtls" else (("x-forwarded-client-cert", XFCC + identity),)
        return Stub(channels[identity]), peer

    yield as_caller, servicer, sink
    for channel in channels.values():
        await channel.close()
    await server.stop(0)


def _refusal(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    status = status_from_rpc_error(exc)
    info = error_info(status) if status is not None else None
    return exc.code(), info.reason if info else ""


async def _entered(servicer: HeldServicer, count: int) -> None:
    async with asyncio.timeout(5):  # a call refused instead of held fails the test, no hang
        while servicer.entered < count:
            await asyncio.sleep(0.005)


async def _get(as_caller: Callable[[str], Any], identity: str, role: str) -> Any:
    stub, peer = as_caller(identity)
    request = cpb.GetConversationRequest(name="conversations/c_1")
    return await stub.GetConversation(request, metadata=(*peer, *_user(identity, role)), timeout=5)


def _send(as_caller: Callable[[str], Any], identity: str, role: str) -> Any:
    stub, peer = as_caller(identity)
    request = cpb.SendMessageRequest(conversation="conversations/c_1", content="hi")
    return stub.SendMessage(request, metadata=(*peer, *_user(identity, role)), timeout=5)


async def test_peers_and_roles_get_their_own_verdicts_on_one_method(served: Any) -> None:
    as_caller, servicer, sink = served
    # A refusal first: the handler it was wrapped in must not refuse the next caller.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _get(as_caller, "edge", "OWNER")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED  # edge: not in the graph
    gateway = asyncio.ensure_future(_get(as_caller, "gateway", "VIEWER"))
    speech = asyncio.ensure_future(_get(as_caller, "speech", "ADMIN"))
    await _entered(servicer, 2)  # both held in the servicer; now a refused one in between
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _get(as_caller, "billing", "OWNER")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    servicer.release.set()
    assert (await gateway).title == "gateway:users/gateway-viewer"
    assert (await speech).title == "speech:users/speech-admin"
    # The audit records carry each call's own request id, not the first call's.
    assert sorted(e.request_id for e in sink.events) == ["req-gateway-VIEWER", "req-speech-ADMIN"]
    assert sorted(e.actor for e in sink.events) == ["users/gateway-viewer", "users/speech-admin"]


async def test_roles_get_their_own_verdicts_on_one_stream(served: Any) -> None:
    as_caller, servicer, _ = served
    member = _send(as_caller, "gateway", "MEMBER")
    assert (await member.read()).delta.text == "first "  # held open in the servicer
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in _send(as_caller, "gateway", "VIEWER"):
            pass
    assert _refusal(refused.value) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
    servicer.release.set()
    assert (await member.read()).delta.text == "gateway:users/gateway-member"
    assert await member.code() == grpc.StatusCode.OK
    # And the other way round: a member after the refused viewer is served.
    texts = [m.delta.text async for m in _send(as_caller, "speech", "MEMBER")]
    assert texts == ["first ", "speech:users/speech-member"]
