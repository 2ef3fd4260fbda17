"""Triton-hosted models through the one Triton client (services/common/triton.py): the grounded
extractive responder streams one token per decoupled response, then its citations."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from services.common.errors import ServiceError
from services.common.triton import RESPONDER_MODEL, TritonClient
from services.orchestrator.catalog import Deployment
from services.orchestrator.providers import (
    Finish,
    Piece,
    ProviderError,
    ProviderRequest,
    StreamItem,
)

MAX_QUESTION_CHARS = 2000  # the responder's max_question_chars
MAX_PASSAGES = 64


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

    async def stream(self, deployment: Deployment, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        if deployment.deployment != RESPONDER_MODEL:
            raise ProviderError(
                f"triton: no chat adapter for model {deployment.deployment!r}",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        question = request.messages[-1][1][-MAX_QUESTION_CHARS:]
        passages, ids = grounding_passages(request)
        if not passages:
            raise ProviderError(
                "triton: the grounded responder answers only from context; enable retrieval or "
                "give a system prompt or earlier messages",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        produced = 0
        try:
            async for response in self.client.respond(question, passages, ids, max_sentences=3):
                token = response.get("TOKEN")
                text = _decode(token.reshape(-1)[0]) if token is not None and token.size else ""
                if text:
                    if produced >= request.max_output_tokens:
                        # Leaving the loop cancels the request on Triton.
                        yield Finish("length", completion_tokens=produced)
                        return
                    produced += 1
                    yield Piece(text)
                if response.final or response.get("CITATIONS") is not None:
                    cited = response.get("CITATIONS")
                    ids_out = tuple(_decode(v) for v in cited.reshape(-1)) if cited is not None else ()
                    yield Finish("stop", completion_tokens=produced, cited_passage_ids=ids_out)
                    return
        except ServiceError as exc:
            raise ProviderError(f"triton: {exc.message}", exc.code) from None
        raise ProviderError("triton: stream ended without a final response")

    async def close(self) -> None:
        await self.client.close()
