"""Embeddings on Knowledge's EmbedTexts: the same Triton model (all-MiniLM-L6-v2) and the same
vectors Knowledge indexes documents with, metered by Knowledge like a native call."""

from __future__ import annotations

import base64

import grpc
import numpy as np
from aimesh.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc

from services.common.identity import Identity
from services.edge import schemas
from services.edge.errors import OpenAIError, bad_request, from_rpc_error, unsupported

EMBEDDING_MODEL = "all-minilm-l6-v2"
DIMENSIONS = 384
MAX_INPUTS = 2048
TIMEOUT_SECONDS = 120.0


def texts_of(req: schemas.EmbeddingRequest) -> list[str]:
    if req.model != EMBEDDING_MODEL:
        raise OpenAIError(404, f"The model '{req.model}' does not exist or is not an embedding "
                          f"model; use '{EMBEDDING_MODEL}'", param="model", code="model_not_found")
    if req.dimensions is not None and req.dimensions != DIMENSIONS:
        raise unsupported("dimensions", f"dimensions={req.dimensions} ({EMBEDDING_MODEL} has "
                          f"{DIMENSIONS})")
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts:
        raise bad_request("input must not be empty", "input")
    if any(not isinstance(t, str) for t in texts):
        raise unsupported("input", "token arrays as input (send text)")
    if len(texts) > MAX_INPUTS:
        raise bad_request(f"at most {MAX_INPUTS} inputs per request", "input")
    strings = [str(t) for t in texts]
    for i, text in enumerate(strings):
        if not text.strip():
            raise bad_request(f"input[{i}] must not be empty", f"input[{i}]")
    return strings


def encode(values: list[float] | np.ndarray, encoding_format: str | None) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()
    return [float(v) for v in values]


class Embeddings:
    def __init__(self, knowledge: knowledge_pb2_grpc.KnowledgeServiceStub) -> None:
        self.knowledge = knowledge

    async def create(self, req: schemas.EmbeddingRequest, identity: Identity,
                     metadata: list[tuple[str, str]]) -> dict[str, object]:
        texts = texts_of(req)
        try:
            reply = await self.knowledge.EmbedTexts(knowledge_pb2.EmbedTextsRequest(texts=texts),
                                                    metadata=metadata, timeout=TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, {"texts": "input"}) from None
        return schemas.EmbeddingList(
            data=[schemas.Embedding(index=i, embedding=encode(e.values, req.encoding_format))
                  for i, e in enumerate(reply.embeddings)],
            model=EMBEDDING_MODEL,
            usage=schemas.EmbeddingUsage(prompt_tokens=reply.total_tokens,
                                         total_tokens=reply.total_tokens),
        ).wire()
