"""EmbedTexts (plain Python): check texts against the embedding model's limits, embed them on
Triton, meter the texts embedded."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.common.errors import FieldViolations
from services.common.identity import Identity
from services.common.triton import TritonClient
from services.common.usage_client import ResourceType, UsageClient
from services.knowledge.chunking import count_tokens

MAX_EMBED_TEXTS = 2048
EMBED_MAX_TOKENS = 256  # the Triton model's limit (triton/models/text_embedding)
# No text of at most 256 word pieces is longer (a word piece covers at most 100 characters):
# longer texts are refused before tokenizing, which would hold the event loop for seconds.
EMBED_MAX_CHARS = EMBED_MAX_TOKENS * 128
EMBEDDING_MODEL_ID = "all-minilm-l6-v2"


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray  # one row per text
    token_counts: list[int]


class Embedder:
    def __init__(self, triton: TritonClient, usage: UsageClient) -> None:
        self.triton = triton
        self.usage = usage

    async def embed(self, payer: Identity, texts: Sequence[str], work_id: str) -> Embedded:
        """Vectors of 1-2,048 non-empty texts of at most 256 tokens each, metered as texts
        embedded once they are computed; every problem is one INVALID_ARGUMENT."""
        texts = list(texts)
        v = FieldViolations()
        v.check(
            1 <= len(texts) <= MAX_EMBED_TEXTS, "texts", f"1-{MAX_EMBED_TEXTS:,} texts required"
        )
        for i, text in enumerate(texts[:MAX_EMBED_TEXTS]):
            v.check(bool(text.strip()), f"texts[{i}]", "must not be empty")
            v.check(len(text) <= EMBED_MAX_CHARS, f"texts[{i}]",
                    f"{len(text)} characters; at most {EMBED_MAX_TOKENS} word pieces fit")
        v.raise_if_any()
        counts = await asyncio.to_thread(count_tokens, texts)
        for i, n in enumerate(counts):
            v.check(
                n <= EMBED_MAX_TOKENS,
                f"texts[{i}]",
                f"{n} tokens; the embedding model takes at most {EMBED_MAX_TOKENS}",
            )
        v.raise_if_any()
        vectors = await self.triton.embed(texts, timeout=60.0)
        await self.usage.meter(
            payer, ResourceType.RESOURCE_TYPE_CHUNKS_EMBEDDED, len(texts), work_id
        )
        return Embedded(vectors, counts)
