"""Triton-hosted models through the one Triton client (services/common/triton.py).

* The grounded extractive responder streams one token per decoupled response, then its
  citations.
* Any other deployment is an LLM served with Triton's vLLM backend interface (decoupled;
  inputs `text_input`, `stream`, `sampling_parameters` JSON, `exclude_input_in_output`;
  output `text_output`, one new piece of text per response when streaming). The chat is
  rendered with the ChatML template, which the model must understand.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from services.common import deadlines
from services.common.errors import ServiceError
from services.common.triton import RESPONDER_MODEL, TritonClient
from services.orchestrator.catalog import Deployment
from services.orchestrator.providers import (
    Finish,
    Piece,
    ProviderError,
    ProviderRequest,
    StreamItem,
    with_grounding,
)

MAX_QUESTION_CHARS = 2000  # the responder's max_question_chars
MAX_PASSAGES = 64
NO_CONTEXT_ANSWER = (
    "I answer from your organization's documents, and it has none ready yet. Upload a document "
    "(POST /v1/documents with its content, or the console's Documents page); once it is READY, "
    "ask again and I will answer from it with citations. You can also give me context in a "
    "system prompt.")
NO_DEADLINE_SECONDS = 600.0


def _time_left() -> float:
    """The caller's remaining time: queued requests wait for a busy model instead of failing
    at the Triton client's default timeout (the router's first-token limit still applies)."""
    left = deadlines.time_left()
    return NO_DEADLINE_SECONDS if left is None else left


def _decode(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def grounding_passages(request: ProviderRequest) -> tuple[list[str], list[str]]:
    """Passages and their ids: retrieved chunks, else the system prompt and earlier turns."""
    if request.passages:
        chosen = request.passages[:MAX_PASSAGES]
        return [p.text for p in chosen], [p.id for p in chosen]
    texts = [content for _, content in request.messages[:-1] if content.strip()][-MAX_PASSAGES:]
    return texts, [f"message-{i}" for i in range(len(texts))]


class TritonProvider:
    name = "triton"

    def __init__(self, client: TritonClient) -> None:
        self.client = client

    def stream(self, deployment: Deployment, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        if deployment.deployment == RESPONDER_MODEL:
            return self._grounded(request)
        return self._llm(deployment, request)

    async def _llm(
        self, deployment: Deployment, request: ProviderRequest
    ) -> AsyncIterator[StreamItem]:
        params: dict[str, Any] = {"max_tokens": request.max_output_tokens}
        for key, value in (
            ("temperature", request.temperature),
            ("top_p", request.top_p),
            ("seed", request.seed),
        ):
            if value is not None:
                params[key] = value
        if request.stop:
            params["stop"] = request.stop
        inputs = {
            "text_input": np.array([chatml(with_grounding(request)).encode()], dtype=object),
            "stream": np.array([True]),
            "sampling_parameters": np.array([json.dumps(params).encode()], dtype=object),
            "exclude_input_in_output": np.array([True]),
        }
        produced = 0
        try:
            async for response in self.client.stream(
                deployment.deployment, inputs, timeout=_time_left(), on_sent=request.on_sent
            ):
                out = response.get("text_output")
                text = "".join(_decode(v) for v in out.reshape(-1)) if out is not None else ""
                if text:
                    produced += 1
                    yield Piece(text)
        except ServiceError as exc:
            raise ProviderError(f"triton: {exc.message}", exc.code) from None
        # The backend does not say why it stopped; reaching max_tokens pieces means LENGTH.
        yield Finish("length" if produced >= request.max_output_tokens else "stop")

    async def _grounded(self, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        question = request.messages[-1][1][-MAX_QUESTION_CHARS:]
        passages, ids = grounding_passages(request)
        if not passages:
            # Nothing to ground on (no documents, no system prompt, no earlier turns): say so
            # and how to fix it, as a normal answer rather than a failure.
            words = NO_CONTEXT_ANSWER.split(" ")
            shown = words[: request.max_output_tokens]
            for i, word in enumerate(shown):
                yield Piece(word if i == len(words) - 1 else word + " ")
            yield Finish("stop" if len(shown) == len(words) else "length",
                         completion_tokens=len(shown))
            return
        produced = 0
        try:
            async for response in self.client.respond(
                question, passages, ids, max_sentences=3, timeout=_time_left(),
                on_sent=request.on_sent,
            ):
                text = response.text("TOKEN")
                if text:
                    if produced >= request.max_output_tokens:
                        # Leaving the loop cancels the request on Triton.
                        yield Finish("length", completion_tokens=produced)
                        return
                    produced += 1
                    yield Piece(text)
                if response.final or response.get("CITATIONS") is not None:
                    cited = response.get("CITATIONS")
                    ids_out = (
                        tuple(_decode(v) for v in cited.reshape(-1)) if cited is not None else ()
                    )
                    yield Finish("stop", completion_tokens=produced, cited_passage_ids=ids_out)
                    return
        except ServiceError as exc:
            raise ProviderError(f"triton: {exc.message}", exc.code) from None
        raise ProviderError("triton: stream ended without a final response")

    async def close(self) -> None:
        await self.client.close()


def chatml(messages: list[tuple[str, str]]) -> str:
    """The ChatML rendering of a chat, ending with the assistant's turn opened."""
    turns = [f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages]
    return "".join(turns) + "<|im_start|>assistant\n"
