"""Anthropic Messages API, streamed: message_start, content_block_start/delta/stop, message_delta
(stop_reason, output usage), message_stop; `ping` keep-alives; `error` events."""

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
    with_grounding,
)
from services.orchestrator.providers.http import (
    HTTPProvider,
    load_json,
    raise_for_status,
    transport_error,
)
from services.orchestrator.providers.sse import iter_sse

API_VERSION = "2023-06-01"
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "refusal": "content_filter",
}


class AnthropicProvider(HTTPProvider):
    name = "anthropic"

    def body(self, deployment: Deployment, request: ProviderRequest) -> dict[str, Any]:
        messages = with_grounding(request)
        system = messages[0][1] if messages and messages[0][0] == "system" else None
        turns = messages[1:] if system is not None else messages
        body: dict[str, Any] = {
            "model": deployment.deployment,
            "max_tokens": request.max_output_tokens,
            "messages": [{"role": r, "content": c} for r, c in turns],
            "stream": True,
        }
        if system:
            body["system"] = system
        if request.temperature is not None:
            body["temperature"] = min(request.temperature, 1.0)  # Anthropic allows 0..1
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = request.stop
        return body

    async def stream(
        self, deployment: Deployment, request: ProviderRequest
    ) -> AsyncIterator[StreamItem]:
        base = (deployment.base_url or self.settings.anthropic_base_url).rstrip("/")
        headers = {
            "accept": "text/event-stream",
            "anthropic-version": API_VERSION,
            "x-api-key": self.settings.anthropic_api_key,
        }
        input_tokens: int | None = None
        output_tokens: int | None = None
        stop_reason: str | None = None
        stopped = False
        try:
            async with self.client.stream(
                "POST", f"{base}/v1/messages", json=self.body(deployment, request), headers=headers
            ) as response:
                await raise_for_status(self.name, response)
                request.sent()
                async for event in iter_sse(response):
                    if event.event == "ping":
                        continue
                    data = load_json(self.name, event.data)
                    kind = data.get("type", event.event)
                    if kind == "error":
                        error = data.get("error") or {}
                        raise ProviderError(
                            f"{self.name}: {error.get('type', 'error')}: {error.get('message', '')}"
                        )
                    if kind == "message_start":
                        usage = (data.get("message") or {}).get("usage") or {}
                        input_tokens = usage.get("input_tokens", input_tokens)
                    elif kind == "content_block_delta":
                        delta = data.get("delta") or {}
                        if delta.get("type") == "text_delta" and delta.get("text"):
                            yield Piece(delta["text"])
                    elif kind == "message_delta":
                        stop_reason = (data.get("delta") or {}).get("stop_reason") or stop_reason
                        output_tokens = (data.get("usage") or {}).get(
                            "output_tokens", output_tokens
                        )
                    elif kind == "message_stop":
                        stopped = True
                        break
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from None
        if not stopped:
            raise ProviderError(f"{self.name}: stream ended before message_stop (truncated)")
        yield Finish(
            reason=_FINISH.get(stop_reason or "end_turn", "stop"),
            prompt_tokens=input_tokens,
            completion_tokens=output_tokens,
        )
