"""OpenAI-compatible chat completions (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp server),
streamed: `data: {chat.completion.chunk}` events, then `data: [DONE]`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from services.orchestrator.catalog import Deployment
from services.orchestrator.providers import (
    Finish,
    Piece,
    ProviderError,
    ProviderRequest,
    StreamItem,
    ToolCallPiece,
    grounding_prompt,
)
from services.orchestrator.providers.http import (
    HTTPProvider,
    load_json,
    raise_for_status,
    transport_error,
)
from services.orchestrator.providers.sse import iter_sse

_FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter",
           "tool_calls": "tool_calls", "function_call": "tool_calls"}


def chat_messages(request: ProviderRequest) -> list[dict[str, Any]]:
    """The prompt as chat-completions messages: tool calls and tool results kept, retrieved
    passages merged into the (first) system message."""
    messages: list[dict[str, Any]] = []
    for i, (role, content) in enumerate(request.messages):
        message: dict[str, Any] = {"role": role, "content": content}
        if i in request.tool_calls:
            message["tool_calls"] = request.tool_calls[i]
            if not content:
                message["content"] = None
        if i in request.tool_call_ids:
            message["tool_call_id"] = request.tool_call_ids[i]
        messages.append(message)
    if request.passages:
        context = grounding_prompt(request.passages)
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = f"{messages[0]['content']}\n\n{context}"
        else:
            messages.insert(0, {"role": "system", "content": context})
    return messages


class OpenAIProvider(HTTPProvider):
    name = "openai"

    def body(self, deployment: Deployment, request: ProviderRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": deployment.deployment,
            "messages": chat_messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": request.max_output_tokens,
        }
        for key, value in (("temperature", request.temperature), ("top_p", request.top_p),
                           ("seed", request.seed)):
            if value is not None:
                body[key] = value
        if request.stop:
            body["stop"] = request.stop
        if request.tools:
            body["tools"] = request.tools
            if request.tool_choice is not None:
                body["tool_choice"] = request.tool_choice
        if request.response_format is not None:
            body["response_format"] = request.response_format
        return body

    async def stream(
        self, deployment: Deployment, request: ProviderRequest
    ) -> AsyncIterator[StreamItem]:
        base = (deployment.base_url or self.settings.openai_base_url).rstrip("/")
        headers = {"accept": "text/event-stream"}
        if self.settings.openai_api_key:
            headers["authorization"] = f"Bearer {self.settings.openai_api_key}"
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        done = False
        try:
            async with self.client.stream(
                "POST",
                f"{base}/chat/completions",
                json=self.body(deployment, request),
                headers=headers,
            ) as response:
                await raise_for_status(self.name, response)
                request.sent()
                async for event in iter_sse(response):
                    if event.data.strip() == "[DONE]":
                        done = True
                        break
                    chunk = load_json(self.name, event.data)
                    if "error" in chunk:  # some servers report mid-stream errors in-band
                        error = chunk["error"]
                        message = error.get("message") if isinstance(error, dict) else error
                        raise ProviderError(f"{self.name}: stream error: {message}")
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        content = delta.get("content")
                        if content:
                            yield Piece(content)
                        for call in delta.get("tool_calls") or []:
                            function = call.get("function") or {}
                            yield ToolCallPiece(
                                index=int(call.get("index", 0)),
                                id=call.get("id") or "",
                                name=function.get("name") or "",
                                arguments=function.get("arguments") or "",
                            )
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from None
        if not done and finish_reason is None:
            raise ProviderError(f"{self.name}: stream ended before [DONE] (truncated)")
        yield Finish(
            reason=_FINISH.get(finish_reason or "stop", "stop"),
            prompt_tokens=(usage or {}).get("prompt_tokens"),
            completion_tokens=(usage or {}).get("completion_tokens"),
        )
