"""Chat completions through the gateway with the official `openai` client: JSON and SSE
(include_usage), a tool-call round trip against the OpenAI-compatible replay server, and bad
input answered with OpenAI-shaped 4xx errors."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.integration.edge.conftest import DEFAULT_MODEL, EdgeStack

CONTEXT = ("The sky looks blue because air molecules scatter blue sunlight more than red light. "
           "This effect is called Rayleigh scattering.")
QUESTION = "Why does the sky look blue?"
MESSAGES = [{"role": "system", "content": CONTEXT}, {"role": "user", "content": QUESTION}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


async def test_chat_non_streaming(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(model=DEFAULT_MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == DEFAULT_MODEL
    (choice,) = reply.choices
    assert choice.finish_reason == "stop"
    assert "Rayleigh" in (choice.message.content or "") or "scatter" in (choice.message.content or "")
    assert choice.message.role == "assistant" and choice.message.tool_calls is None
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_chat_streaming_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=DEFAULT_MODEL, messages=MESSAGES, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "scatter" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    *body, last = chunks
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens > 0
    assert all(c.usage is None for c in body)
    assert len({c.id for c in chunks}) == 1


async def test_stream_without_usage_omits_the_field(edge_http: httpx.AsyncClient, api_key: str) -> None:
    """Raw SSE: `data: {chunk}` lines, `data: [DONE]` last, no usage key unless asked for."""
    async with edge_http.stream("POST", "/openai/v1/chat/completions",
                                headers={"authorization": f"Bearer {api_key}"},
                                json={"model": DEFAULT_MODEL, "messages": MESSAGES, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in r.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all("usage" not in c and "logprobs" not in c["choices"][0] for c in chunks)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


async def test_tool_call_round_trip(client: openai.AsyncOpenAI, edge: EdgeStack) -> None:
    """Tools reach the provider in its wire format; tool calls come back; the tool's result goes
    to the provider on the next turn and it answers with it."""
    messages: list[dict[str, object]] = [{"role": "user", "content": "Weather in Paris?"}]
    first = await client.chat.completions.create(
        model="tools-test", messages=messages, tools=[WEATHER_TOOL], tool_choice="auto")  # type: ignore[arg-type, list-item]
    sent = edge.replay.requests[-1]
    assert sent["tools"] == [WEATHER_TOOL] and sent["tool_choice"] == "auto"
    (choice,) = first.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id == "call_abc123" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21})})
    second = await client.chat.completions.create(model="tools-test", messages=messages,  # type: ignore[arg-type]
                                                  tools=[WEATHER_TOOL])  # type: ignore[list-item]
    sent = edge.replay.requests[-1]
    assert sent["messages"][-2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent["messages"][-1] == {"role": "tool", "content": '{"temperature": 21}',
                                    "tool_call_id": "call_abc123"}
    assert second.choices[0].message.content == "It is 21 degrees."
    assert second.choices[0].finish_reason == "stop"


async def test_tool_call_deltas_stream(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="tools-test", messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL], stream=True)  # type: ignore[list-item]
    chunks = [c async for c in stream]
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id == "call_abc123" and deltas[0].function and deltas[0].function.name == "get_weather"
    assert "".join((d.function.arguments or "") for d in deltas if d.function) == '{"city": "Paris"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_tools_on_a_model_without_them_is_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=DEFAULT_MODEL, messages=MESSAGES,  # type: ignore[arg-type]
                                             tools=[WEATHER_TOOL])  # type: ignore[list-item]
    assert caught.value.param == "tools"


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"temperature": 5}, "temperature"),
    ({"max_tokens": 100_000}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
async def test_unsupported_or_out_of_range_is_400(client: openai.AsyncOpenAI, extra: dict[str, object],
                                                   param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=DEFAULT_MODEL, messages=MESSAGES, **extra)  # type: ignore[arg-type, call-overload]
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]


async def test_unknown_model_is_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(("body", "param", "code"), [
    (b'{"model": "x", "messages": [', None, "invalid_json"),
    (json.dumps({"messages": MESSAGES}).encode(), "model", "missing_required_parameter"),
    (json.dumps({"model": DEFAULT_MODEL, "messages": "hello"}).encode(), "messages", "invalid_value"),
    (json.dumps({"model": DEFAULT_MODEL, "messages": MESSAGES, "temperature": "hot"}).encode(),
     "temperature", "invalid_value"),
    (json.dumps({"model": DEFAULT_MODEL, "messages": MESSAGES, "bogus": 1}).encode(), "bogus",
     "unknown_parameter"),
    (json.dumps({"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}).encode(),
     "messages[0].content[0].type", "unsupported_parameter"),
    (json.dumps({"model": DEFAULT_MODEL, "messages": []}).encode(), "messages", "invalid_value"),
])
async def test_bad_input_is_an_openai_400(edge_http: httpx.AsyncClient, api_key: str, body: bytes,
                                          param: str | None, code: str) -> None:
    reply = await edge_http.post("/openai/v1/chat/completions", content=body, headers={
        "authorization": f"Bearer {api_key}", "content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["code"] == code, error


async def test_stream_failing_after_the_metadata_is_an_http_error(edge_http: httpx.AsyncClient,
                                                                  api_key: str) -> None:
    """doomed-test's only deployment accepts, then dies before any text: the Orchestrator sends
    its metadata, then UNAVAILABLE. The client gets the HTTP error it got before the metadata
    came early (503, OpenAI's error shape), never a 200 stream that breaks."""
    async with edge_http.stream("POST", "/openai/v1/chat/completions",
                                headers={"authorization": f"Bearer {api_key}"},
                                json={"model": "doomed-test", "messages": MESSAGES, "stream": True}) as r:
        body = await r.aread()
    assert r.status_code == 503, body
    error = json.loads(body)["error"]
    assert error["type"] == "server_error" and "accept-then-die" in error["message"]


async def test_transcoded_generate_failing_before_output_keeps_its_error_body(
        edge_http: httpx.AsyncClient, api_key: str) -> None:
    """Generate over the gateway's JSON/HTTP (SSE): Envoy commits the response at the first
    event, so such callers get the metadata with the first output. A failure before it stays
    what the transcoder makes of a status without messages: the google.rpc.Status as the body
    (an early metadata event would have been all they saw, the error lost)."""
    r = await edge_http.post("/v1/models/doomed-test:generate", headers={"x-api-key": api_key},
                             json={"messages": [{"role": "ROLE_USER", "content": QUESTION}]})
    status = json.loads(r.text)
    assert status["code"] == 14 and "accept-then-die" in status["message"], r.text
    assert status["details"][0]["reason"] == "ALL_PROVIDERS_FAILED"
