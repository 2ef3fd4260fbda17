"""Conversation service: CRUD, SendMessage streaming from the real Orchestrator/Triton, the
stored assistant message on completion and on disconnect, ordering, org isolation."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from aimesh.conversation.v1 import conversation_pb2 as cpb
from aimesh.conversation.v1 import conversation_pb2_grpc
from aimesh.orchestrator.v1 import orchestrator_pb2 as opb
from google.protobuf import field_mask_pb2

from services.common.errors import field_violations, status_from_rpc_error
from tests.integration.chat.conftest import TINY_WINDOW, ChatStack

SYSTEM = ("Aimesh stores conversations in PostgreSQL. Answers stream token by token. "
          "The gateway is Envoy and it listens on port 8080.")


def _identity(org: str | None = None) -> list[tuple[str, str]]:
    return [("x-aimesh-org", org or f"org-{uuid.uuid4().hex[:12]}"), ("x-aimesh-subject", "user-1"),
            ("x-aimesh-roles", "member")]


def _stub(chat: ChatStack) -> conversation_pb2_grpc.ConversationServiceStub:
    return conversation_pb2_grpc.ConversationServiceStub(chat.conversation)


async def _create(chat: ChatStack, md: list[tuple[str, str]], **kw: object) -> cpb.Conversation:
    conv = cpb.Conversation(title="test", system_prompt=SYSTEM, **kw)  # type: ignore[arg-type]
    return await _stub(chat).CreateConversation(cpb.CreateConversationRequest(conversation=conv), metadata=md)


async def _send(chat: ChatStack, md: list[tuple[str, str]], conv: str, content: str, timeout: float = 60,
                **kw: object) -> list[cpb.SendMessageResponse]:
    request = cpb.SendMessageRequest(conversation=conv, content=content, **kw)  # type: ignore[arg-type]
    return [e async for e in _stub(chat).SendMessage(request, metadata=md, timeout=timeout)]


async def _messages(chat: ChatStack, md: list[tuple[str, str]], conv: str) -> list[cpb.Message]:
    return list((await _stub(chat).ListMessages(cpb.ListMessagesRequest(parent=conv), metadata=md)).messages)


async def test_send_message_streams_and_stores_both_messages(chat: ChatStack) -> None:
    md = _identity()
    conv = await _create(chat, md)
    events = await _send(chat, md, conv.name, "Which port does the gateway listen on?")
    kinds = [e.WhichOneof("event") for e in events]
    assert events[-1].assistant_message.state == cpb.Message.STATE_COMPLETE, events[-1]
    assert kinds[0] == "user_message" and kinds[1] == "generation" and kinds[-1] == "assistant_message"
    answer = "".join(e.delta.text for e in events if e.HasField("delta"))
    assert "8080" in answer
    stored = events[-1].assistant_message
    assert stored.state == cpb.Message.STATE_COMPLETE and stored.content == answer
    assert stored.usage.completion_tokens > 0 and stored.model == "models/grounded-extractive-v1"
    listed = await _messages(chat, md, conv.name)
    assert [m.role for m in listed] == [cpb.Message.ROLE_USER, cpb.Message.ROLE_ASSISTANT]
    assert listed[1] == stored
    got = await _stub(chat).GetConversation(cpb.GetConversationRequest(name=conv.name), metadata=md)
    assert got.message_count == 2
    assert await _stub(chat).GetMessage(cpb.GetMessageRequest(name=stored.name), metadata=md) == stored
    page = await _stub(chat).ListMessages(cpb.ListMessagesRequest(parent=conv.name, page_size=1), metadata=md)
    assert len(page.messages) == 1 and page.total_size == 2 and page.next_page_token
    rest = await _stub(chat).ListMessages(cpb.ListMessagesRequest(
        parent=conv.name, page_size=1, page_token=page.next_page_token), metadata=md)
    assert [m.name for m in rest.messages] == [stored.name] and not rest.next_page_token


async def test_history_is_context_for_the_next_turn(chat: ChatStack) -> None:
    md = _identity()
    conv = await _stub(chat).CreateConversation(cpb.CreateConversationRequest(conversation=cpb.Conversation()), metadata=md)
    await _send(chat, md, conv.name, "Note: the blue key opens the cellar door. The red key is lost.")
    events = await _send(chat, md, conv.name, "Which key opens the cellar?")
    answer = "".join(e.delta.text for e in events if e.HasField("delta"))
    assert "blue key" in answer  # grounded in the earlier user turn


async def test_disconnect_mid_stream_stores_incomplete_answer(chat: ChatStack) -> None:
    md = _identity()
    conv = await _create(chat, md)
    chat.replay.disconnected.clear()
    call = _stub(chat).SendMessage(
        cpb.SendMessageRequest(conversation=conv.name, content="Go on forever", model="models/slow-test"),
        metadata=md, timeout=60)
    received = ""
    async for event in call:
        if event.HasField("delta"):
            received += event.delta.text
            if received.count(" ") >= 3:
                break
    call.cancel()
    await asyncio.wait_for(chat.replay.disconnected.wait(), 10)  # upstream generation cancelled too
    for _ in range(50):
        messages = await _messages(chat, md, conv.name)
        if len(messages) == 2:
            break
        await asyncio.sleep(0.1)
    assert len(messages) == 2
    assistant = messages[1]
    assert assistant.state == cpb.Message.STATE_INCOMPLETE
    assert assistant.finish_reason == opb.FINISH_REASON_CANCELLED
    assert assistant.content.startswith(received) and assistant.content.startswith("w0 w1 w2")


async def test_deadline_mid_stream_stores_incomplete_answer(chat: ChatStack) -> None:
    md = _identity()
    conv = await _create(chat, md)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in _stub(chat).SendMessage(
                cpb.SendMessageRequest(conversation=conv.name, content="Go on", model="models/slow-test"),
                metadata=md, timeout=1.5):
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(50):
        messages = await _messages(chat, md, conv.name)
        if len(messages) == 2:
            break
        await asyncio.sleep(0.1)
    assert messages[1].state == cpb.Message.STATE_INCOMPLETE and messages[1].content.startswith("w0 ")


async def test_concurrent_sends_are_serialized(chat: ChatStack) -> None:
    md = _identity()
    conv = await _create(chat, md)
    questions = [f"Question number {i}: where are conversations stored?" for i in range(3)]
    await asyncio.gather(*(_send(chat, md, conv.name, q) for q in questions))
    messages = await _messages(chat, md, conv.name)
    assert len(messages) == 6
    roles = [m.role for m in messages]
    assert roles == [cpb.Message.ROLE_USER, cpb.Message.ROLE_ASSISTANT] * 3  # never interleaved
    assert all(m.state == cpb.Message.STATE_COMPLETE for m in messages)


async def test_all_providers_failing_is_stored_as_failed(chat: ChatStack) -> None:
    md = _identity()
    conv = await _create(chat, md)
    chat.replay.fail_next["flaky-conv"] = 1
    events = await _send(chat, md, conv.name, "hello", model="models/flaky-conv-test")
    stored = events[-1].assistant_message
    assert stored.state == cpb.Message.STATE_FAILED
    assert stored.error.code == grpc.StatusCode.UNAVAILABLE.value[0] and "openai/flaky-conv" in stored.error.message
    assert stored.finish_reason == opb.FINISH_REASON_ERROR


async def test_org_isolation(chat: ChatStack) -> None:
    owner, other = _identity(), _identity()
    conv = await _create(chat, owner)
    for call in (
        _stub(chat).GetConversation(cpb.GetConversationRequest(name=conv.name), metadata=other),
        _stub(chat).ListMessages(cpb.ListMessagesRequest(parent=conv.name), metadata=other),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _send(chat, other, conv.name, "hi")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await _stub(chat).ListConversations(cpb.ListConversationsRequest(), metadata=other)
    assert conv.name not in [c.name for c in listed.conversations]


async def test_crud_soft_delete_and_errors(chat: ChatStack) -> None:
    md = _identity()
    stub = _stub(chat)
    conv = await stub.CreateConversation(cpb.CreateConversationRequest(
        conversation=cpb.Conversation(title="a", metadata={"team": "x"}), conversation_id="my-chat",
        request_id="req-1"), metadata=md)
    assert conv.name == "conversations/my-chat"
    again = await stub.CreateConversation(cpb.CreateConversationRequest(
        conversation=cpb.Conversation(title="a"), conversation_id="my-chat", request_id="req-1"), metadata=md)
    assert again.name == conv.name  # request_id replay, not ALREADY_EXISTS
    updated = await stub.UpdateConversation(cpb.UpdateConversationRequest(
        conversation=cpb.Conversation(name=conv.name, title="b", etag=conv.etag),
        update_mask=field_mask_pb2.FieldMask(paths=["title"])), metadata=md)
    assert updated.title == "b" and updated.etag != conv.etag
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UpdateConversation(cpb.UpdateConversationRequest(
            conversation=cpb.Conversation(name=conv.name, title="c", etag=conv.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["title"])), metadata=md)
    assert caught.value.code() == grpc.StatusCode.ABORTED
    deleted = await stub.DeleteConversation(cpb.DeleteConversationRequest(name=conv.name), metadata=md)
    assert deleted.HasField("delete_time") and deleted.HasField("expire_time")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _send(chat, md, conv.name, "hello")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert conv.name not in [c.name for c in (await stub.ListConversations(cpb.ListConversationsRequest(), metadata=md)).conversations]
    shown = await stub.ListConversations(cpb.ListConversationsRequest(show_deleted=True), metadata=md)
    assert conv.name in [c.name for c in shown.conversations]
    restored = await stub.UndeleteConversation(cpb.UndeleteConversationRequest(name=conv.name), metadata=md)
    assert not restored.HasField("delete_time")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateConversation(cpb.CreateConversationRequest(
            conversation=cpb.Conversation(title="t" * 300, metadata={"Bad-Key": "v"}), conversation_id="X"), metadata=md)
    status = status_from_rpc_error(caught.value)
    assert status is not None
    assert {f for f, _ in field_violations(status)} >= {"conversation.title", "conversation.metadata[Bad-Key]", "conversation_id"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _send(chat, md, conv.name, "hi", model="models/nope")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "models/grounded-extractive-v1" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _send(chat, md, conv.name, "")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(await _messages(chat, md, conv.name)) == 0  # failed sends store nothing


async def test_send_with_request_id_replays(chat: ChatStack) -> None:
    md = _identity()
    conv = await _create(chat, md)
    rid = str(uuid.uuid4())
    first = await _send(chat, md, conv.name, "Where are conversations stored?", request_id=rid)
    second = await _send(chat, md, conv.name, "Where are conversations stored?", request_id=rid)
    assert [e.WhichOneof("event") for e in second] == ["user_message", "assistant_message"]
    assert second[0].user_message == first[0].user_message and second[1].assistant_message == first[-1].assistant_message
    assert len(await _messages(chat, md, conv.name)) == 2


async def test_history_is_trimmed_to_the_model_budget(chat: ChatStack) -> None:
    md = _identity()
    conv = await _stub(chat).CreateConversation(cpb.CreateConversationRequest(conversation=cpb.Conversation(
        system_prompt="The archive opens at nine.", default_model="models/tiny-test")), metadata=md)
    filler = " ".join(f"Sentence {i} talks about the weather in detail." for i in range(12))
    for _ in range(4):  # together far beyond the 400-token window
        events = await _send(chat, md, conv.name, filler)
        assert events[-1].assistant_message.state == cpb.Message.STATE_COMPLETE, events[-1]
    events = await _send(chat, md, conv.name, "When does the archive open?")
    final = events[-1].assistant_message
    assert final.state == cpb.Message.STATE_COMPLETE
    assert final.usage.prompt_tokens <= TINY_WINDOW - 64  # room left for the answer
    assert "nine" in final.content  # the system prompt is never trimmed


async def test_send_waiting_past_its_deadline_stores_nothing(chat: ChatStack) -> None:
    md = _identity()
    conv = await _create(chat, md)
    first = _stub(chat).SendMessage(
        cpb.SendMessageRequest(conversation=conv.name, content="Keep talking", model="models/slow-test"),
        metadata=md, timeout=60)
    async for event in first:
        if event.HasField("delta"):
            break  # the first send now holds the turn and is streaming
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _send(chat, md, conv.name, "Me next?", timeout=1.0)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    first.cancel()
    for _ in range(50):
        messages = await _messages(chat, md, conv.name)
        if len(messages) == 2:
            break
        await asyncio.sleep(0.1)
    assert [m.content for m in messages if m.role == cpb.Message.ROLE_USER] == ["Keep talking"]
    # The turn is free again: the next send goes through.
    events = await _send(chat, md, conv.name, "Where are conversations stored?")
    assert events[-1].assistant_message.state == cpb.Message.STATE_COMPLETE


async def test_truncate_message_keeps_what_was_heard(chat: ChatStack) -> None:
    """TruncateMessage (a voice caller heard only part of the answer): the stored assistant
    message keeps its first content_length code points and becomes STATE_INCOMPLETE; the
    same length again changes nothing; bad lengths, user messages, deleted conversations and
    another organization's messages are refused like the other message calls."""
    md, other = _identity(), _identity()
    stub = _stub(chat)
    conv = await _create(chat, md)
    events = await _send(chat, md, conv.name, "Which port does the gateway listen on?")
    answer = events[-1].assistant_message
    question = events[0].user_message
    assert len(answer.content) > 10
    cut = await stub.TruncateMessage(
        cpb.TruncateMessageRequest(name=answer.name, content_length=10), metadata=md)
    assert cut.content == answer.content[:10] and cut.state == cpb.Message.STATE_INCOMPLETE
    stored = await stub.GetMessage(cpb.GetMessageRequest(name=answer.name), metadata=md)
    assert stored == cut
    again = await stub.TruncateMessage(
        cpb.TruncateMessageRequest(name=answer.name, content_length=10), metadata=md)
    assert again == cut
    refusals = [
        (md, answer.name, 11, grpc.StatusCode.INVALID_ARGUMENT),  # longer than the content now
        (md, answer.name, -1, grpc.StatusCode.INVALID_ARGUMENT),
        (md, "conversations/x/messages", 0, grpc.StatusCode.INVALID_ARGUMENT),
        (md, question.name, 0, grpc.StatusCode.FAILED_PRECONDITION),
        (other, answer.name, 0, grpc.StatusCode.NOT_FOUND),
    ]
    for who, name, length, code in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.TruncateMessage(
                cpb.TruncateMessageRequest(name=name, content_length=length), metadata=who)
        assert caught.value.code() == code, (name, length, caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.TruncateMessage(
            cpb.TruncateMessageRequest(name=answer.name, content_length=11), metadata=md)
    status = status_from_rpc_error(caught.value)
    assert status is not None and [f for f, _ in field_violations(status)] == ["content_length"]
    await stub.DeleteConversation(cpb.DeleteConversationRequest(name=conv.name), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.TruncateMessage(
            cpb.TruncateMessageRequest(name=answer.name, content_length=0), metadata=md)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await stub.GetMessage(cpb.GetMessageRequest(name=answer.name), metadata=md)) == cut


async def test_generation_event_comes_before_the_answer(chat: ChatStack) -> None:
    """The Orchestrator's metadata comes once the only deployment has the request (issue 15):
    SendMessage relays it as `generation` right after the user message, before any text."""
    md = _identity()
    conv = await _create(chat, md)
    chat.replay.release.clear()
    request = cpb.SendMessageRequest(conversation=conv.name, content="hello", model="models/held-test")
    call = _stub(chat).SendMessage(request, metadata=md, timeout=60)
    try:
        first = await asyncio.wait_for(call.read(), 30)
        second = await asyncio.wait_for(call.read(), 30)
        assert first.WhichOneof("event") == "user_message"
        assert second.WhichOneof("event") == "generation" and second.generation.deployment == "held"
        assert not chat.replay.release.is_set()  # no text exists yet
    finally:
        chat.replay.release.set()
    rest = []
    while (event := await call.read()) is not grpc.aio.EOF:
        rest.append(event)
    assert rest[-1].assistant_message.state == cpb.Message.STATE_COMPLETE
    assert rest[-1].assistant_message.model == "models/held-test"


async def test_failure_after_the_generation_event_is_stored_as_failed(chat: ChatStack) -> None:
    md = _identity()
    conv = await _create(chat, md)
    events = await _send(chat, md, conv.name, "hello", model="models/doomed-conv-test")
    assert [e.WhichOneof("event") for e in events] == ["user_message", "generation", "assistant_message"]
    stored = events[-1].assistant_message
    assert stored.state == cpb.Message.STATE_FAILED and stored.content == ""
    assert stored.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "openai/accept-then-die-conv" in stored.error.message
    assert stored.model == "models/doomed-conv-test"


async def test_a_fallback_dying_after_its_generation_event_stores_the_model_asked_for(chat: ChatStack) -> None:
    """doomed-fallback-test's deployment is refused; its fallback model (the last candidate)
    accepts, is announced, then dies before any text. The generation event named the fallback;
    the stored FAILED message names the model that was asked for, as when nothing was announced."""
    md = _identity()
    conv = await _create(chat, md)
    events = await _send(chat, md, conv.name, "hello", model="models/doomed-fallback-test")
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["user_message", "generation", "assistant_message"]
    assert events[1].generation.model == "models/doomed-fallback-last-test"
    stored = events[-1].assistant_message
    assert stored.state == cpb.Message.STATE_FAILED and stored.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert stored.model == "models/doomed-fallback-test"
