"""Chat end to end through the real Envoy gateway: sign up, upload a document to Knowledge, then
SendMessage with retrieval as JSON/HTTP with server-sent events (httpx, and curl -N) and as gRPC (grpcio; grpcurl cannot be installed here). The answer is grounded in the document and
cites it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from aimesh.conversation.v1 import conversation_pb2 as cpb
from aimesh.conversation.v1 import conversation_pb2_grpc

from tests.support.accounts import Account, sign_up, upload_document
from tests.support.mesh import TestMesh

DOCUMENT = (
    "Harbor Lights operating manual.\n\n"
    "The lighthouse lamp is switched on thirty minutes before sunset. "
    "The keeper logs the weather every four hours in the red ledger. "
    "Spare bulbs are stored in the iron cabinet on the second landing. "
    "Visitors may climb the tower on Saturdays between ten and noon.\n"
)
QUESTION = "Where are the spare bulbs stored?"


@pytest.fixture(scope="module")
async def edge(mesh: TestMesh) -> AsyncIterator[httpx.AsyncClient]:
    mesh.ensure_triton()
    mesh.ensure("auth", "usage", "knowledge", "orchestrator", "conversation")
    address = mesh.ensure_gateway()
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=60) as client:
        yield client


async def _document(http: httpx.AsyncClient, account: Account) -> str:
    return await upload_document(http, account, "Harbor Lights manual", DOCUMENT)


async def _conversation(http: httpx.AsyncClient, account: Account) -> str:
    reply = await http.post("/v1/conversations", headers=account.bearer, json={"title": "manual questions"})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["name"])


async def test_grounded_chat_over_sse_and_grpc_cites_the_document(edge: httpx.AsyncClient, mesh: TestMesh) -> None:
    account = await sign_up(edge, "Harbor")
    document = await _document(edge, account)
    conversation = await _conversation(edge, account)

    events: list[dict] = []  # type: ignore[type-arg]
    async with edge.stream("POST", f"/v1/{conversation}:sendMessage", headers=account.bearer,
                           json={"content": QUESTION, "retrieval": {"enabled": True, "topK": 3}}) as reply:
        assert reply.status_code == 200, await reply.aread()
        assert reply.headers["content-type"].startswith("text/event-stream")
        async for line in reply.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[len("data:"):]))
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "userMessage" and kinds[1] == "generation" and kinds[-1] == "assistantMessage"
    answer = "".join(e["delta"]["text"] for e in events if "delta" in e)
    assert "iron cabinet" in answer
    stored = events[-1]["assistantMessage"]
    assert stored["state"] == "STATE_COMPLETE" and stored["content"] == answer
    assert stored["citations"][0]["document"] == document
    assert "iron cabinet" in stored["citations"][0]["quote"]
    assert any("citation" in e for e in events)

    # The same turn as gRPC through the gateway.
    async with grpc.aio.insecure_channel(mesh.settings.gateway_addr) as channel:
        stub = conversation_pb2_grpc.ConversationServiceStub(channel)
        request = cpb.SendMessageRequest(conversation=conversation, content="When is the lamp switched on?")
        request.retrieval.enabled = True
        replies = [r async for r in stub.SendMessage(request, metadata=tuple(account.bearer.items()), timeout=60)]
    final = replies[-1].assistant_message
    assert final.state == cpb.Message.STATE_COMPLETE and "sunset" in final.content
    assert final.citations and final.citations[0].document == document

    # And with curl, as a shell user would (-N: print events as they arrive).
    curl = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-N", "--max-time", "60", "-X", "POST",
        "-H", f"authorization: {account.bearer['authorization']}", "-H", "content-type: application/json",
        "-d", json.dumps({"content": "Who logs the weather?", "retrieval": {"enabled": True}}),
        f"{edge.base_url}/v1/{conversation}:sendMessage", stdout=asyncio.subprocess.PIPE)
    out, _ = await curl.communicate()
    assert curl.returncode == 0
    curl_events = [json.loads(line[5:]) for line in out.decode().splitlines() if line.startswith("data:")]
    last = curl_events[-1]["assistantMessage"]
    assert last["state"] == "STATE_COMPLETE" and "red ledger" in last["content"]
    assert last["citations"][0]["document"] == document

    listed = (await edge.get(f"/v1/{conversation}/messages", headers=account.bearer)).json()
    assert [m["role"] for m in listed["messages"]] == ["ROLE_USER", "ROLE_ASSISTANT"] * 3


async def test_other_org_cannot_read_the_conversation(edge: httpx.AsyncClient) -> None:
    owner, stranger = await sign_up(edge, "Owner"), await sign_up(edge, "Stranger")
    conversation = await _conversation(edge, owner)
    reply = await edge.get(f"/v1/{conversation}", headers=stranger.bearer)
    assert reply.status_code == 404
    reply = await edge.post(f"/v1/{conversation}:sendMessage", headers=stranger.bearer, json={"content": "hi"})
    assert reply.status_code == 404 or '"code": 5' in reply.text or '"code":5' in reply.text


async def _key_send(http: httpx.AsyncClient, conversation: str, secret: str
                    ) -> tuple[httpx.Response, list[dict]]:  # type: ignore[type-arg]
    events: list[dict] = []  # type: ignore[type-arg]
    async with http.stream("POST", f"/v1/{conversation}:sendMessage", headers={"x-api-key": secret},
                           json={"content": QUESTION}) as reply:
        if reply.status_code != 200:
            await reply.aread()
            return reply, events
        async for line in reply.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[len("data:"):]))
    return reply, events


async def test_an_api_key_send_is_counted_while_its_turn_is_taken_and_a_refusal_leaves_nothing(
        edge: httpx.AsyncClient, mesh: TestMesh) -> None:
    """SendMessage runs while an API key's request is counted (services/common/gateway_jwt.py
    count_alongside; Conversation waits for the count once it holds the turn). What callers see
    is what counting first gave: x-ratelimit-* ahead of the first event, RESOURCE_EXHAUSTED over
    the limit even for a conversation that is not there (not NOT_FOUND), and a refused send
    stores nothing and leaves the turn free."""
    from tests.integration.gateway.test_gateway import _status, _wait_for_fresh_window
    from tests.support.accounts import create_key, set_rate_limits

    account = await sign_up(edge, "Counted")
    conversation = await _conversation(edge, account)
    elsewhere = await _conversation(edge, await sign_up(edge, "Other"))  # NOT_FOUND for account
    secret = (await create_key(edge, account))["secret"]
    limit = 3
    await set_rate_limits(mesh, account, org_rpm=1000, key_rpm=limit)
    await _wait_for_fresh_window(margin=20.0)

    # 1: counted by Auth's Check (no verdict held yet); 2 and 3: counted by Conversation while
    # the turn is taken, over gRPC and SSE.
    reply, events = await _key_send(edge, conversation, secret)
    assert reply.status_code == 200 and reply.headers["x-ratelimit-remaining"] == "2"
    async with grpc.aio.insecure_channel(mesh.settings.gateway_addr) as channel:
        stub = conversation_pb2_grpc.ConversationServiceStub(channel)
        call = stub.SendMessage(cpb.SendMessageRequest(conversation=conversation, content=QUESTION),
                                metadata=(("x-api-key", secret),), timeout=60)
        first = await call.read()
        assert first.HasField("user_message")
        assert dict(await call.initial_metadata())["x-ratelimit-remaining"] == "1"
        last = first
        while (message := await call.read()) is not grpc.aio.EOF:
            last = message
        assert last.assistant_message.state == cpb.Message.STATE_COMPLETE
    reply, events = await _key_send(edge, conversation, secret)
    assert reply.status_code == 200 and reply.headers["x-ratelimit-remaining"] == "0"
    assert next(iter(events[0])) == "userMessage" and "assistantMessage" in events[-1]

    # Over the limit on a conversation this organization does not have: the refusal, not 404.
    reply, _ = await _key_send(edge, elsewhere, secret)
    assert reply.status_code == 429 and _status(reply) == (8, "RATE_LIMITED"), reply.text
    assert reply.headers["x-ratelimit-remaining"] == "0"
    # Past the refusal memory (1 s) a send runs alongside its count again: refused, nothing
    # stored, and the turn it took is free at once for the organization's JWT user.
    await asyncio.sleep(1.2)
    reply, _ = await _key_send(edge, conversation, secret)
    assert reply.status_code == 429 and _status(reply) == (8, "RATE_LIMITED"), reply.text
    listed = await edge.get(f"/v1/{conversation}/messages", headers=account.bearer)
    assert listed.status_code == 200 and len(listed.json()["messages"]) == 2 * limit
    async with edge.stream("POST", f"/v1/{conversation}:sendMessage", headers=account.bearer,
                           json={"content": QUESTION}) as served:
        assert served.status_code == 200, await served.aread()
        lines = [line async for line in served.aiter_lines() if line.startswith("data:")]
    assert "assistantMessage" in lines[-1]
