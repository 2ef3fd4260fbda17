"""The OpenAI surface meters, budgets and rate-limits exactly like native calls: a streamed
chat's usage records and budget spend equal a native Generate's (streamed spend is never $0),
a used-up budget is a 429 `insufficient_quota` not worth retrying, and the gateway's rate
limit is a RateLimitError carrying retry-after."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

from tests.integration.edge.conftest import EdgeStack
from tests.support.accounts import Account, create_key, sign_up
from tests.support.mesh import TestMesh

PRICED = "priced-test"  # the replay server reports 11 prompt + 4 completion tokens
PROMPT = "Tell me about the sky."


async def _records(http: httpx.AsyncClient, account: Account, generation_id: str) -> set[tuple[str, str, str]]:
    """(resource type, quantity, model) of the usage records of one generation, once delivered."""
    found: set[tuple[str, str, str]] = set()
    for _ in range(100):
        reply = await http.get("/v1/usageRecords", headers=account.bearer, params={"pageSize": 1000})
        assert reply.status_code == 200, reply.text
        found = {(r["resourceType"], str(r["quantityMicros"]), r.get("model", ""))
                 for r in reply.json().get("usageRecords", [])
                 if r["requestId"].startswith(generation_id + "/")}
        if len(found) == 2:
            return found
        await asyncio.sleep(0.2)
    return found


async def _budget(http: httpx.AsyncClient, account: Account, limit_micros: int) -> str:
    reply = await http.post("/v1/budgets", headers=account.bearer, json={
        "displayName": "cap", "scope": "SCOPE_ORGANIZATION", "monthlyLimitMicros": str(limit_micros),
        "currencyCode": "USD"})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["name"])


async def _spent(http: httpx.AsyncClient, account: Account, budget: str, at_least: int) -> dict[str, int]:
    for _ in range(100):
        body = (await http.get(f"/v1/{budget}", headers=account.bearer)).json()
        spent = {k: int(body.get(k, 0)) for k in ("spentMicros", "reservedMicros", "usedTokens")}
        if spent["spentMicros"] >= at_least and spent["reservedMicros"] == 0:
            return spent
        await asyncio.sleep(0.2)
    return spent


async def test_usage_and_budget_equal_native_calls(edge: EdgeStack, edge_http: httpx.AsyncClient,
                                                   edge_account: Account, api_key: str) -> None:
    account = edge_account
    budget = await _budget(edge_http, account, 10_000_000)
    # Native: Generate through the gateway as JSON with server-sent events.
    events = []
    async with edge_http.stream("POST", f"/v1/models/{PRICED}:generate", headers=account.bearer, json={
            "messages": [{"role": "ROLE_USER", "content": PROMPT}]}) as reply:
        assert reply.status_code == 200, await reply.aread()
        async for line in reply.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[len("data:"):]))
    native_id = events[0]["metadata"]["generationId"]
    native_usage = events[-1]["completion"]["usage"]
    native = await _records(edge_http, account, native_id)
    after_native = await _spent(edge_http, account, budget, 1)

    async with openai.AsyncOpenAI(base_url=edge.openai_base, api_key=api_key, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=PRICED, messages=[{"role": "user", "content": PROMPT}], stream=True,
            stream_options={"include_usage": True})
        chunks = [c async for c in stream]
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        native_usage["promptTokens"], native_usage["completionTokens"]) == (11, 4)
    ours = await _records(edge_http, account, chunks[0].id.removeprefix("chatcmpl-"))
    assert ours == native and len(ours) == 2
    after_edge = await _spent(edge_http, account, budget, 2 * after_native["spentMicros"])
    assert after_native["spentMicros"] > 0  # a streamed, priced chat is never free
    assert after_edge["spentMicros"] == 2 * after_native["spentMicros"]
    assert after_edge["usedTokens"] == 2 * after_native["usedTokens"]


async def test_used_up_budget_is_insufficient_quota(edge: EdgeStack, edge_http: httpx.AsyncClient) -> None:
    account = await sign_up(edge_http, "Broke")
    key = (await create_key(edge_http, account))["secret"]
    await _budget(edge_http, account, 1)  # one micro-dollar: no generation fits
    async with openai.AsyncOpenAI(base_url=edge.openai_base, api_key=key, max_retries=0) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model=PRICED, messages=[{"role": "user", "content": PROMPT}])
    assert caught.value.code == "insufficient_quota"
    assert caught.value.response.headers["x-should-retry"] == "false"


async def test_rate_limit_is_rate_limit_error_with_retry_after(
    mesh: TestMesh, edge: EdgeStack, edge_http: httpx.AsyncClient
) -> None:
    account = await sign_up(edge_http, "Busy")
    key = (await create_key(edge_http, account))["secret"]
    stub = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="billing"))
    await stub.SetRateLimitPolicy(usage_pb2.SetRateLimitPolicyRequest(
        policy=usage_pb2.RateLimitPolicy(
            name=f"{account.org}/rateLimitPolicy", organization_requests_per_minute=1000,
            api_key_requests_per_minute=2, plan="plans/test")), timeout=5)
    async with openai.AsyncOpenAI(base_url=edge.openai_base, api_key=key, max_retries=0) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            for _ in range(5):
                await client.models.list()
    error = caught.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    retry_after = int(error.response.headers["retry-after"])
    assert 1 <= retry_after <= 60  # what OpenAI clients wait before retrying
