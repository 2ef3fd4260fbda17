"""The early answer: when Conversation knows what a conversation's prompt is built from (it wrote
or read the row last), Orchestrator.Generate starts while the turn's statement runs, not after
it; the row that statement returns decides whether that answer is the turn's. A conversation
changed elsewhere (another replica) gets its answer from the row as it is now.

The turn's statement is slowed in the real PostgreSQL: a trigger on `conversation.conversations`
sleeps when a turn is taken on a conversation whose system prompt carries a marker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from aimesh.conversation.v1 import conversation_pb2 as cpb
from aimesh.conversation.v1 import conversation_pb2_grpc

from services.conversation.chat import BUSY_TURNS
from tests.integration.chat.conftest import ChatStack, sleeping_trigger

SLOW_TURN_SECONDS = 1.5  # far longer than starting Generate and the replay server's answer
ANSWER = "The sky is blue."  # the replay server's "picky" scenario (tests/.../replay_server.py)


@pytest.fixture
async def slow_turns(chat: ChatStack) -> AsyncIterator[tuple[psycopg.AsyncConnection, str]]:
    """Taking the turn of a conversation whose system prompt contains the yielded marker
    takes SLOW_TURN_SECONDS."""
    condition = ("position('{marker}' in NEW.system_prompt) > 0 AND NEW.turn_holder IS NOT NULL "
                 "AND OLD.turn_holder IS DISTINCT FROM NEW.turn_holder")
    async with sleeping_trigger(chat, "UPDATE", "conversation.conversations", condition,
                                SLOW_TURN_SECONDS) as made:
        yield made


def _stub(chat: ChatStack) -> conversation_pb2_grpc.ConversationServiceStub:
    return conversation_pb2_grpc.ConversationServiceStub(chat.conversation)


async def _conversation(chat: ChatStack, system_prompt: str) -> tuple[list[tuple[str, str]], str]:
    """(identity headers, conversation name) of a new organization's new conversation."""
    md = [("x-aimesh-org", f"org-{uuid.uuid4().hex[:12]}"), ("x-aimesh-subject", "user-1"),
          ("x-aimesh-roles", "member")]
    conv = await _stub(chat).CreateConversation(cpb.CreateConversationRequest(
        conversation=cpb.Conversation(system_prompt=system_prompt)), metadata=md)
    return md, conv.name


def _system_prompts(chat: ChatStack, since: int) -> list[str]:
    """The system prompt of each request the provider received after the first `since`."""
    return [r["messages"][0]["content"] for r in chat.replay.requests[since:]]


async def test_answer_starts_while_the_turn_is_taken(
    chat: ChatStack, slow_turns: tuple[psycopg.AsyncConnection, str]
) -> None:
    _, marker = slow_turns
    system = f"The lighthouse lamp is switched on thirty minutes before sunset. {marker}"
    md, conv = await _conversation(chat, system)
    asked = len(chat.replay.requests)
    call = _stub(chat).SendMessage(cpb.SendMessageRequest(
        conversation=conv, content="When is the lamp switched on?", model="models/picky-test"),
        metadata=md, timeout=60)
    events: list[cpb.SendMessageResponse] = []

    async def consume() -> None:
        async for event in call:
            events.append(event)

    consumer = asyncio.ensure_future(consume())
    # The provider is asked while the turn's statement still sleeps in the trigger: nothing
    # has come back yet (the question is stored after the turn is taken).
    assert await chat.replay.asked_beyond(asked, 1.0), (
        "Generate should start while the turn is taken")
    assert events == []
    await asyncio.wait_for(consumer, 30)
    assert _system_prompts(chat, asked) == [system]  # one answer, the one relayed
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "user_message" and kinds[-1] == "assistant_message", kinds
    assert "".join(e.delta.text for e in events if e.HasField("delta")) == ANSWER
    assert events[-1].assistant_message.state == cpb.Message.STATE_COMPLETE
    got = await _stub(chat).GetConversation(cpb.GetConversationRequest(name=conv), metadata=md)
    assert got.message_count == 2


async def test_conversation_changed_elsewhere_is_answered_as_it_is_now(
    chat: ChatStack, slow_turns: tuple[psycopg.AsyncConnection, str]
) -> None:
    conn, marker = slow_turns
    before = f"The lamp is switched on at dusk. {marker}"
    now = f"The lamp is switched on thirty minutes before sunset. {marker}"
    md, conv = await _conversation(chat, before)
    # Another replica changes the conversation: this process still knows the old prompt.
    await conn.execute(
        "UPDATE conversation.conversations SET system_prompt = %s WHERE org = %s AND id = %s",
        (now, md[0][1], conv.rsplit("/", 1)[1]))
    asked = len(chat.replay.requests)
    # With a request_id: the early answer (finished while the turn's statement slept, so kept
    # by the Orchestrator for replays) must not be replayed as the answer to the changed prompt.
    events = [e async for e in _stub(chat).SendMessage(cpb.SendMessageRequest(
        conversation=conv, content="When is the lamp switched on?", model="models/picky-test",
        request_id=str(uuid.uuid4())), metadata=md, timeout=60)]
    # The early answer was built from what this process knew; the turn's row said otherwise,
    # so the answer relayed and stored is the one asked with the conversation as it is now.
    prompts = _system_prompts(chat, asked)
    assert prompts[0] == before and prompts[-1] == now, prompts
    assert "".join(e.delta.text for e in events if e.HasField("delta")) == ANSWER
    assert events[-1].assistant_message.state == cpb.Message.STATE_COMPLETE
    listed = await _stub(chat).ListMessages(cpb.ListMessagesRequest(parent=conv), metadata=md)
    assert [m.role for m in listed.messages] == [cpb.Message.ROLE_USER,
                                                 cpb.Message.ROLE_ASSISTANT]
    # The next turn is known here from this one's writes: one request, the current prompt.
    asked = len(chat.replay.requests)
    events = [e async for e in _stub(chat).SendMessage(cpb.SendMessageRequest(
        conversation=conv, content="And when is it switched off?", model="models/picky-test"),
        metadata=md, timeout=60)]
    assert _system_prompts(chat, asked) == [now]
    assert events[-1].assistant_message.state == cpb.Message.STATE_COMPLETE


async def test_no_early_answers_while_many_turns_are_in_progress(
    chat: ChatStack, slow_turns: tuple[psycopg.AsyncConnection, str]
) -> None:
    """With BUSY_TURNS turns in progress, the next send starts its answer only once
    its turn is taken (under load the early start measured worse)."""
    _, marker = slow_turns
    system = f"The lighthouse lamp is switched on thirty minutes before sunset. {marker}"
    sends = BUSY_TURNS + 1
    conversations = [await _conversation(chat, system) for _ in range(sends)]
    asked = len(chat.replay.requests)

    async def send(md: list[tuple[str, str]], conv: str) -> list[cpb.SendMessageResponse]:
        return [e async for e in _stub(chat).SendMessage(cpb.SendMessageRequest(
            conversation=conv, content="When is the lamp switched on?",
            model="models/picky-test"), metadata=md, timeout=60)]

    # All but the last in progress (their turns' statements sleep), then the last one.
    running = [asyncio.ensure_future(send(md, conv)) for md, conv in conversations[:-1]]
    assert await chat.replay.asked_beyond(asked + sends - 2, 1.0), "the first ones start early"
    last = asyncio.ensure_future(send(*conversations[-1]))
    await asyncio.sleep(0.5)  # its turn's statement still sleeps: no answer asked for it yet
    assert len(chat.replay.requests) == asked + sends - 1
    for events in await asyncio.gather(*running, last):
        assert events[-1].assistant_message.state == cpb.Message.STATE_COMPLETE
    assert len(chat.replay.requests) == asked + sends
