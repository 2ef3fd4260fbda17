"""The user message's durable write runs beside the start of the answer (Conversation starts
Orchestrator.Generate while the INSERT commits), and nothing of the answer reaches the caller
before that write has committed. A write that fails cancels the answer and stores nothing.

The write is slowed (and, in the second test, broken) in the real PostgreSQL: a trigger on
`conversation.messages` sleeps for rows carrying a marker, and the test terminates the backend
running that INSERT, as a database restart or a lost connection would."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import psycopg
import pytest
from aimesh.conversation.v1 import conversation_pb2 as cpb
from aimesh.conversation.v1 import conversation_pb2_grpc

from tests.integration.chat.conftest import ChatStack

SYSTEM = "The lighthouse lamp is switched on thirty minutes before sunset."
SLOW_SECONDS = 1.5  # the marked INSERT's delay: far longer than the replay server's first token


async def _new_conversation(chat: ChatStack) -> tuple[list[tuple[str, str]], str, str]:
    """(identity headers, organization id, conversation name) of a new organization's chat."""
    org = f"org-{uuid.uuid4().hex[:12]}"
    md = [("x-aimesh-org", org), ("x-aimesh-subject", "user-1"), ("x-aimesh-roles", "member")]
    conv = await _stub(chat).CreateConversation(cpb.CreateConversationRequest(
        conversation=cpb.Conversation(system_prompt=SYSTEM)), metadata=md)
    return md, org, conv.name


@pytest.fixture
async def slow_writes(chat: ChatStack) -> AsyncIterator[tuple[psycopg.AsyncConnection, str]]:
    """A trigger delaying the INSERT of any message whose content contains the returned marker;
    dropped afterwards. Yields an autocommit connection to the same database and the marker."""
    marker = f"slow-{uuid.uuid4().hex[:10]}"
    function = f"conversation.delay_{marker.replace('-', '_')}"
    conn = await psycopg.AsyncConnection.connect(chat.stack.settings.database_url, autocommit=True)
    await conn.execute(
        f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF position('{marker}' in NEW.content) > 0 THEN PERFORM pg_sleep({SLOW_SECONDS}); "
        "END IF; RETURN NEW; END $$")
    await conn.execute(
        f"CREATE TRIGGER {marker.replace('-', '_')} BEFORE INSERT ON conversation.messages "
        f"FOR EACH ROW EXECUTE FUNCTION {function}()")
    try:
        yield conn, marker
    finally:
        await conn.execute(f"DROP TRIGGER IF EXISTS {marker.replace('-', '_')} "
                           "ON conversation.messages")
        await conn.execute(f"DROP FUNCTION IF EXISTS {function}()")
        await conn.close()


def _stub(chat: ChatStack) -> conversation_pb2_grpc.ConversationServiceStub:
    return conversation_pb2_grpc.ConversationServiceStub(chat.conversation)


async def _stored(conn: psycopg.AsyncConnection, org: str, conv: str) -> list[str]:
    cur = await conn.execute(
        "SELECT content FROM conversation.messages WHERE org = %s AND conversation_id = %s "
        "ORDER BY seq", (org, conv.rsplit("/", 1)[1]))
    return [row[0] for row in await cur.fetchall()]


async def test_answer_starts_during_the_write_and_waits_for_its_commit(
    chat: ChatStack, slow_writes: tuple[psycopg.AsyncConnection, str]
) -> None:
    conn, marker = slow_writes
    md, org, conv = await _new_conversation(chat)
    asked = len(chat.replay.requests)
    question = f"When is the lamp switched on? ({marker})"
    kinds: list[str] = []
    provider_asked_before_commit = False
    async for event in _stub(chat).SendMessage(cpb.SendMessageRequest(
            conversation=conv, content=question, model="models/picky-test"),
            metadata=md, timeout=60):
        kind = event.WhichOneof("event")
        if not kinds:
            # The first event: the question, durably stored by now, and the provider already
            # asked while the INSERT was still sleeping in the trigger.
            assert kind == "user_message", kind
            assert (await _stored(conn, org, conv))[:1] == [question]
            provider_asked_before_commit = len(chat.replay.requests) > asked
        kinds.append(kind)
    assert provider_asked_before_commit, "Generate should start while the question is written"
    assert chat.replay.requests[asked]["messages"][-1]["content"] == question
    assert "delta" in kinds and kinds[-1] == "assistant_message", kinds
    assert kinds.index("delta") > kinds.index("user_message")
    assert len(await _stored(conn, org, conv)) == 2


async def test_failed_write_cancels_the_answer_and_sends_nothing(
    chat: ChatStack, slow_writes: tuple[psycopg.AsyncConnection, str]
) -> None:
    conn, marker = slow_writes
    md, org, conv = await _new_conversation(chat)
    chat.replay.disconnected.clear()
    asked = len(chat.replay.requests)
    call = _stub(chat).SendMessage(cpb.SendMessageRequest(
        conversation=conv, content=f"Go on forever ({marker})", model="models/slow-test"),
        metadata=md, timeout=60)
    received: list[str] = []

    async def consume() -> None:
        async for event in call:
            received.append(event.WhichOneof("event"))

    consumer = asyncio.ensure_future(consume())
    # Wait until the answer is streaming from the provider while the INSERT sleeps, then kill
    # the backend running that INSERT (as a database restart would).
    for _ in range(100):
        if len(chat.replay.requests) > asked:
            break
        await asyncio.sleep(0.05)
    assert len(chat.replay.requests) > asked, "Generate should start while the question is written"
    await asyncio.sleep(0.3)  # the endless scenario streams a word every 20 ms meanwhile
    cur = await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE query LIKE '%%INSERT INTO messages%%' AND pid <> pg_backend_pid() "
        "AND state = 'active'")
    assert [row[0] for row in await cur.fetchall()] == [True]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(consumer, 30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
    assert received == [], received  # no question event, and not a word of the answer
    await asyncio.wait_for(chat.replay.disconnected.wait(), 10)  # the answer was cancelled
    assert await _stored(conn, org, conv) == []
    got = await _stub(chat).GetConversation(cpb.GetConversationRequest(name=conv), metadata=md)
    assert got.message_count == 0
    # The turn was released: the conversation goes on.
    events = [e async for e in _stub(chat).SendMessage(cpb.SendMessageRequest(
        conversation=conv, content="When is the lamp switched on?"), metadata=md, timeout=60)]
    assert events[-1].assistant_message.state == cpb.Message.STATE_COMPLETE, events[-1]
