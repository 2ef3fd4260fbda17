"""bench.chat's relay floor (bench/chat/relay.py): its two no-op relay processes, under the
mesh's mTLS, in front of the real Triton, relay every token of the grounded responder in order,
and a failure at Triton comes back through both hops as the RPC's status instead of a hang."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from aimesh.orchestrator.v1 import orchestrator_pb2 as opb
from aimesh.orchestrator.v1 import orchestrator_pb2_grpc

from bench.chat import relay
from scripts.stack import Stack
from services.common.config import Settings
from services.common.triton import TritonClient
from tests.support.mesh import TestMesh

CONTEXT = (
    "The ferry leaves the north pier at seven. Tickets are sold in the kiosk by the gate. "
    "Bicycles travel free on weekdays."
)
QUESTION = "When does the ferry leave, and where are tickets sold?"
# Far beyond the few seconds an answer takes: reaching it would mean a hop hung.
CALL_SECONDS = 60.0


@pytest.fixture(scope="module")
def relays(mesh: TestMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Both hops running (a stack of their own, the mesh's certificates and Triton)."""
    mesh.ensure_triton()
    stack = Stack.create(mesh.env, log_dir=Path(tmp_path_factory.mktemp("relay-log")))
    try:
        yield relay.start_relays(stack)
    finally:
        stack.stop_all()


@pytest.fixture
async def first_hop(
    relays: Settings,
) -> AsyncIterator[orchestrator_pb2_grpc.OrchestratorServiceStub]:
    channel = relay.open_channel(relays, relay.HOPS[0], caller="gateway")
    yield orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
    await channel.close()


def generate(*messages: opb.ChatMessage) -> opb.GenerateRequest:
    return opb.GenerateRequest(model="models/grounded-extractive-v1", messages=list(messages))


async def test_every_token_is_relayed_in_order(
    first_hop: orchestrator_pb2_grpc.OrchestratorServiceStub, relays: Settings
) -> None:
    triton = TritonClient(relays.triton_url)
    try:
        direct = [t async for r in triton.respond(QUESTION, [CONTEXT], ["message-0"],
                                                  max_sentences=3, timeout=CALL_SECONDS)
                  if (t := r.text("TOKEN"))]
    finally:
        await triton.close()
    request = generate(opb.ChatMessage(role=opb.ROLE_SYSTEM, content=CONTEXT),
                       opb.ChatMessage(role=opb.ROLE_USER, content=QUESTION))
    events = [e async for e in first_hop.Generate(request, timeout=CALL_SECONDS)]
    assert all(e.HasField("delta") for e in events), events
    assert len(direct) > 1
    assert [e.delta.text for e in events] == direct


async def test_a_triton_error_is_the_calls_status(
    first_hop: orchestrator_pb2_grpc.OrchestratorServiceStub,
) -> None:
    # No earlier message: no passages, which the grounded responder refuses (INVALID_ARG).
    call = first_hop.Generate(generate(opb.ChatMessage(role=opb.ROLE_USER, content=QUESTION)),
                              timeout=CALL_SECONDS)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for _ in call:
            pass
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failed.value
    assert "PASSAGES" in (failed.value.details() or ""), failed.value


async def test_no_messages_is_invalid_argument(
    first_hop: orchestrator_pb2_grpc.OrchestratorServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for _ in first_hop.Generate(generate(), timeout=CALL_SECONDS):
            pass
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failed.value
    assert "messages" in (failed.value.details() or ""), failed.value
