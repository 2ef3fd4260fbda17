"""A turn survives SIGKILL: the Conversation process is killed while an answer streams (its
Generate call already running beside the user message's write). The user message, committed
before anything was sent back, is stored; after a restart and the dead holder's lease, the next
turn runs on the same conversation and the stored count matches the stored messages."""

from __future__ import annotations

import signal
import uuid

import grpc
import pytest
from aimesh.conversation.v1 import conversation_pb2 as cpb
from aimesh.conversation.v1 import conversation_pb2_grpc

from scripts.stack import Stack
from services.common.channels import open_channel
from tests.integration.chat.conftest import ChatStack
from tests.support.mesh import free_port

SYSTEM = ("The lighthouse lamp is switched on thirty minutes before sunset. Spare bulbs are kept "
          "in the iron cabinet on the second landing. The keeper logs the weather every four hours.")
QUESTION = "When is the lamp switched on?"


async def test_sigkill_mid_stream_keeps_the_stored_question(chat: ChatStack) -> None:
    env = dict(chat.stack.env)
    env["AIMESH_CONVERSATION_ADDR"] = f"127.0.0.1:{free_port()}"
    own = Stack.create(env, log_dir=chat.stack.log_dir / "crash")
    own.start_service("conversation")
    own.wait_ready(["conversation"], timeout=60)
    channel = open_channel(own.settings, "conversation", caller="gateway")
    stub = conversation_pb2_grpc.ConversationServiceStub(channel)
    md = [("x-aimesh-org", f"org-{uuid.uuid4().hex[:12]}"), ("x-aimesh-subject", "user-1"),
          ("x-aimesh-roles", "member")]
    try:
        conv = await stub.CreateConversation(cpb.CreateConversationRequest(
            conversation=cpb.Conversation(system_prompt=SYSTEM)), metadata=md, timeout=30)
        call = stub.SendMessage(cpb.SendMessageRequest(conversation=conv.name, content=QUESTION),
                                metadata=md, timeout=120)
        kinds = []
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            async for event in call:
                kinds.append(event.WhichOneof("event"))
                if kinds[-1] == "delta":
                    victim = own.processes["conversation"].popen
                    victim.send_signal(signal.SIGKILL)
                    victim.wait(timeout=30)
        assert kinds[0] == "user_message" and "delta" in kinds, kinds
        assert cut.value.code() == grpc.StatusCode.UNAVAILABLE, cut.value

        own.start_service("conversation")
        own.wait_ready(["conversation"], timeout=60)
        listed = (await stub.ListMessages(cpb.ListMessagesRequest(parent=conv.name), metadata=md,
                                          timeout=30)).messages
        assert listed[0].role == cpb.Message.ROLE_USER and listed[0].content == QUESTION
        assert listed[0].state == cpb.Message.STATE_COMPLETE

        # The killed holder's lease lapses (TURN_LEASE_SECONDS); then the conversation goes on.
        events = [e async for e in stub.SendMessage(
            cpb.SendMessageRequest(conversation=conv.name, content=QUESTION), metadata=md,
            timeout=120)]
        assert events[-1].assistant_message.state == cpb.Message.STATE_COMPLETE, events[-1]
        listed = (await stub.ListMessages(cpb.ListMessagesRequest(parent=conv.name), metadata=md,
                                          timeout=30)).messages
        stored = await stub.GetConversation(cpb.GetConversationRequest(name=conv.name),
                                            metadata=md, timeout=30)
        assert stored.message_count == len(listed)
        assert [m.role for m in listed][-2:] == [cpb.Message.ROLE_USER, cpb.Message.ROLE_ASSISTANT]
    finally:
        await channel.close()
        own.stop_all()
