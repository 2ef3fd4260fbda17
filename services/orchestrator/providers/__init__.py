"""Providers behind one interface: given a prompt, stream text pieces, then one Finish.

A provider raises ProviderError for a failure it can name (HTTP status, Triton error, malformed
stream); the router decides whether to fall back (only before the first piece was sent).
Closing the stream (aclose, or cancellation) cancels the upstream generation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from services.orchestrator.catalog import Deployment


@dataclass(frozen=True)
class Passage:
    """A context passage for grounding: its id (the Knowledge chunk id) and text."""

    id: str
    text: str


@dataclass
class ProviderRequest:
    # (role, content) with role "system", "user" or "assistant"; ends with a user message.
    messages: list[tuple[str, str]]
    max_output_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # Retrieved passages, numbered [1..n] in order; hosted models get them in the system prompt.
    passages: list[Passage] = field(default_factory=list)
    # Function calling (models with CAPABILITY_TOOLS), in OpenAI's chat-completions shapes:
    # tools [{"type": "function", "function": {...}}], tool_choice "auto"/"none"/"required" or
    # {"type": "function", ...}, and per message index its tool_calls / tool_call_id.
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | dict[str, Any] | None = None
    tool_calls: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    tool_call_ids: dict[int, str] = field(default_factory=dict)
    # OpenAI's response_format object (models with CAPABILITY_JSON_MODE), else None.
    response_format: dict[str, Any] | None = None
    # Called by the provider once the deployment has the request (Triton: written; hosted APIs:
    # accepted with a 2xx status), before any output: the router announces the answer then
    # when no other deployment could follow. Providers that never call it are announced at
    # their first piece.
    on_sent: Callable[[], None] | None = None

    def sent(self) -> None:
        if self.on_sent is not None:
            self.on_sent()


@dataclass(frozen=True)
class Piece:
    """Next piece of generated text."""

    text: str


@dataclass(frozen=True)
class Finish:
    """End of a generation: why it stopped and, if the provider reports them, token counts."""

    reason: str  # "stop" | "length" | "content_filter" | "tool_calls"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Grounded providers: ids of the passages the answer cites, in citation-number order.
    cited_passage_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ToolCallPiece:
    """Next piece of a tool call: id and name on a call's first piece, then argument text."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


StreamItem = Piece | ToolCallPiece | Finish


class ProviderError(Exception):
    """A provider failure with the gRPC code it maps to."""

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retry_after_seconds = retry_after_seconds


class Provider(Protocol):
    name: str

    def stream(self, deployment: Deployment, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        """Stream the answer; must end with exactly one Finish or raise ProviderError."""
        ...

    async def close(self) -> None: ...


def grounding_prompt(passages: list[Passage]) -> str:
    """System text that hands retrieved passages to a general chat model, numbered for citing."""
    lines = [
        (
            "Answer using the numbered sources below when they are relevant. Cite a source as [n] "
            "right after the sentence that uses it. "
            "If the sources do not contain the answer, say so."
        ),
        "",
    ]
    lines += [f"[{i}] {p.text}" for i, p in enumerate(passages, start=1)]
    return "\n".join(lines)


def with_grounding(request: ProviderRequest) -> list[tuple[str, str]]:
    """The request's messages with retrieved passages merged into the (first) system message."""
    if not request.passages:
        return list(request.messages)
    context = grounding_prompt(request.passages)
    messages = list(request.messages)
    if messages and messages[0][0] == "system":
        return [("system", messages[0][1] + "\n\n" + context), *messages[1:]]
    return [("system", context), *messages]
