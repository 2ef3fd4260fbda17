"""Issue 13 item 3, a first chat that answers: a new organization with nothing to ground on gets
a normal answer (STATE_COMPLETE) saying it has no documents and how to add them — natively
(Conversation over the gateway's JSON/SSE) and through /openai/v1; once a document is READY,
retrieval is on without asking and the answer cites it."""

from __future__ import annotations

import json

import httpx
import openai

from tests.integration.edge.conftest import DEFAULT_MODEL, EdgeStack
from tests.support.accounts import Account, create_key, upload_document

DOCUMENT = ("Refund policy of Northwind Outfitters.\n\n"
            "Customers may return unworn boots within 45 days for a full refund. "
            "Refunds go back to the original card within five business days.\n")
QUESTION = "How many days do customers have to return unworn boots?"


async def _send(http: httpx.AsyncClient, account: Account, content: str) -> list[dict]:  # type: ignore[type-arg]
    created = await http.post("/v1/conversations", headers=account.bearer, json={"title": "first"})
    assert created.status_code == 200, created.text
    events = []
    async with http.stream("POST", f"/v1/{created.json()['name']}:sendMessage",
                           headers=account.bearer, json={"content": content}) as reply:
        assert reply.status_code == 200, await reply.aread()
        async for line in reply.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[len("data:"):]))
    return events


async def _upload(http: httpx.AsyncClient, account: Account) -> str:
    return await upload_document(http, account, "Refund policy", DOCUMENT)


async def test_first_chat_answers_then_grounds_once_documents_exist(
    edge: EdgeStack, edge_http: httpx.AsyncClient, edge_account: Account
) -> None:
    account = edge_account
    events = await _send(edge_http, account, QUESTION)
    stored = events[-1]["assistantMessage"]
    assert stored["state"] == "STATE_COMPLETE", stored
    assert "no" in stored["content"] and "/v1/documents" in stored["content"]
    assert not stored.get("citations")

    key = (await create_key(edge_http, account))["secret"]
    async with openai.AsyncOpenAI(base_url=edge.openai_base, api_key=key, max_retries=0) as client:
        reply = await client.chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": QUESTION}])
        assert reply.choices[0].finish_reason == "stop"
        assert "/v1/documents" in (reply.choices[0].message.content or "")

        document = await _upload(edge_http, account)
        events = await _send(edge_http, account, QUESTION)
        stored = events[-1]["assistantMessage"]
        assert stored["state"] == "STATE_COMPLETE" and "45 days" in stored["content"], stored
        assert stored["citations"][0]["document"] == document
        # The OpenAI surface grounds the same way, with no aimesh-specific parameter.
        reply = await client.chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": QUESTION}])
        assert "45 days" in (reply.choices[0].message.content or "")
