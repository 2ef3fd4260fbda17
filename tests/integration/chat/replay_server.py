"""A local HTTP server replaying the OpenAI chat-completions and Anthropic Messages streaming
wire formats (hosted APIs cannot be reached from here). The requested model id picks the
scenario: "ok", "length", "rate-limited", "overloaded", "truncated", "malformed",
"error-mid-stream", "error-event", "die-before-first", "slow-first", "endless", "flaky",
"picky" (HTTP 400 invalid_request_error for a last message containing REJECT, else "ok"),
"tools" (a get_weather tool call, then an answer once the tool result is in the messages),
"held" (200 and the role chunk, then the answer only once `release` is set) and
"accept-then-die..." (200 and the role chunk, then the connection closes before any text)."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

ANSWER = ["The ", "sky ", "is ", "blue."]


def _openai_chunk(content: str | None = None, finish: str | None = None, role: bool = False) -> bytes:
    delta: dict[str, str] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    chunk = {
        "id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
        "model": "gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _anthropic(event: str, data: dict) -> bytes:  # type: ignore[type-arg]
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class Replay:
    """The local provider server; records what it saw."""

    def __init__(self) -> None:
        self.requests: list[dict] = []  # type: ignore[type-arg]
        self.headers: list[dict[str, str]] = []
        self.disconnected = asyncio.Event()
        # Scenario "held" writes its answer only once this is set.
        self.release = asyncio.Event()
        # Scenario "flaky..." -> how many of its next requests fail with 503.
        self.fail_next: dict[str, int] = {}

    async def openai(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        scenario = body["model"]
        if scenario.startswith("flaky") and self.fail_next.get(scenario, 0) > 0:
            self.fail_next[scenario] -= 1
            scenario = "overloaded"
        if scenario == "picky" and "REJECT" in str(body["messages"][-1].get("content", "")):
            return web.json_response(
                {"error": {"message": "Invalid 'messages[1].content': rejected by policy.",
                           "type": "invalid_request_error", "param": "messages",
                           "code": "invalid_value"}}, status=400)
        if scenario == "rate-limited":
            return web.json_response(
                {"error": {"message": "Rate limit reached for gpt-4o-mini", "type": "requests",
                           "param": None, "code": "rate_limit_exceeded"}},
                status=429, headers={"retry-after": "7"})
        if scenario == "overloaded":
            return web.json_response({"error": {"message": "The server is overloaded", "type": "server_error"}},
                                     status=503)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        if scenario == "tools":
            await self._tool_round(body, response)
            return response
        if scenario == "die-before-first":
            request.transport.close()  # type: ignore[union-attr]
            return response
        if scenario == "slow-first":
            await asyncio.sleep(2)
        await response.write(_openai_chunk("", role=True))
        if scenario.startswith("accept-then-die"):
            request.transport.close()  # type: ignore[union-attr]
            return response
        if scenario == "held":
            await self.release.wait()
        if scenario == "malformed":
            await response.write(b"data: {\"id\": \"chatcmpl-123\", \"choices\": [\n\n")
            return response
        if scenario == "endless":
            try:
                for i in range(10_000):
                    await response.write(_openai_chunk(f"w{i} "))
                    await asyncio.sleep(0.02)
            except (ConnectionResetError, asyncio.CancelledError):
                self.disconnected.set()
                raise
            return response
        for i, piece in enumerate(ANSWER):
            await response.write(_openai_chunk(piece))
            if scenario == "truncated" and i == 1:
                return response  # connection ends without finish_reason or [DONE]
            if scenario == "error-mid-stream" and i == 1:
                await response.write(b'data: {"error": {"message": "upstream model crashed", "type": "server_error"}}\n\n')
                return response
        await response.write(_openai_chunk(finish="length" if scenario == "length" else "stop"))
        usage = {"id": "chatcmpl-123", "object": "chat.completion.chunk", "choices": [],
                 "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}}
        await response.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    async def _tool_round(self, body: dict, response: web.StreamResponse) -> None:  # type: ignore[type-arg]
        """OpenAI's documented function-calling stream: tool_calls deltas (id, name, then the
        arguments in pieces), finish_reason "tool_calls"; with the tool's result, a text answer."""
        def chunk(delta: dict, finish: str | None = None) -> bytes:  # type: ignore[type-arg]
            data = {"id": "chatcmpl-tools", "object": "chat.completion.chunk", "created": 1694268190,
                    "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                         "finish_reason": finish}]}
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        await response.write(chunk({"role": "assistant", "content": None}))
        last = body["messages"][-1]
        if last["role"] == "tool":
            for piece in ("It is ", json.loads(last["content"])["temperature"], " degrees."):
                await response.write(chunk({"content": str(piece)}))
            await response.write(chunk({}, "stop"))
        else:
            await response.write(chunk({"tool_calls": [{"index": 0, "id": "call_abc123", "type": "function",
                                                        "function": {"name": "get_weather", "arguments": ""}}]}))
            for piece in ('{"city', '": "Par', 'is"}'):
                await response.write(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
            await response.write(chunk({}, "tool_calls"))
        usage = {"id": "chatcmpl-tools", "object": "chat.completion.chunk", "choices": [],
                 "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}}
        await response.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")

    async def anthropic(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        scenario = body["model"]
        if scenario == "rate-limited":
            return web.json_response(
                {"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your rate limit"}},
                status=429, headers={"retry-after": "3"})
        if scenario == "overloaded":
            return web.json_response({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                                     status=529)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_anthropic("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": scenario,
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 25, "output_tokens": 1}}}))
        await response.write(_anthropic("content_block_start", {"type": "content_block_start", "index": 0,
                                                                "content_block": {"type": "text", "text": ""}}))
        await response.write(_anthropic("ping", {"type": "ping"}))
        if scenario == "error-event":
            await response.write(_anthropic("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
            return response
        if scenario == "malformed":
            await response.write(b"event: content_block_delta\ndata: {\"type\": \"content_block_delta\",\n\n")
            return response
        for i, piece in enumerate(ANSWER):
            await response.write(_anthropic("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                                    "delta": {"type": "text_delta", "text": piece}}))
            if scenario == "truncated" and i == 1:
                return response
        await response.write(_anthropic("content_block_stop", {"type": "content_block_stop", "index": 0}))
        await response.write(_anthropic("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": "max_tokens" if scenario == "length" else "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 4}}))
        await response.write(_anthropic("message_stop", {"type": "message_stop"}))
        return response


async def start_replay() -> tuple[Replay, web.AppRunner, str]:
    server = Replay()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.openai)
    app.router.add_post("/v1/messages", server.anthropic)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return server, runner, f"http://127.0.0.1:{port}"
