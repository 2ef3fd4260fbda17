"""Embeddings through the gateway with the official `openai` client: the vectors are the ones
Knowledge computes (native EmbedTexts through the gateway, and Triton's model called directly),
in float and base64 encodings; bad input is an OpenAI-shaped 400/404."""

from __future__ import annotations

import httpx
import numpy as np
import openai
import pytest

from services.common.triton import TritonClient
from tests.integration.edge.conftest import EdgeStack

MODEL = "all-minilm-l6-v2"
TEXTS = ["The sky looks blue because of Rayleigh scattering.", "Invoices are issued monthly."]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


async def test_embeddings_match_knowledge_and_triton(client: openai.AsyncOpenAI, edge: EdgeStack,
                                                     edge_http: httpx.AsyncClient, api_key: str) -> None:
    as_floats = await client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    as_base64 = await client.embeddings.create(model=MODEL, input=TEXTS)  # the client asks for base64
    assert [d.index for d in as_floats.data] == [0, 1]
    assert as_floats.model == MODEL and as_floats.usage.prompt_tokens > 10
    assert as_floats.usage.total_tokens == as_floats.usage.prompt_tokens
    ours = np.array([d.embedding for d in as_floats.data], dtype=np.float32)
    assert ours.shape == (2, 384)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-3)
    assert np.allclose(np.array([d.embedding for d in as_base64.data], dtype=np.float32), ours, atol=1e-6)
    # Knowledge's native call through the gateway (JSON) gives the same vectors ...
    native = await edge_http.post("/v1/documents:embedTexts", json={"texts": TEXTS},
                                  headers={"authorization": f"Bearer {api_key}"})
    assert native.status_code == 200, native.text
    theirs = np.array([e["values"] for e in native.json()["embeddings"]], dtype=np.float32)
    # ... and so does the Triton model Knowledge indexes chunks with, called directly.
    async with TritonClient.from_settings(edge.stack.settings) as triton:
        direct = await triton.embed(TEXTS, timeout=60)
    for i in range(2):
        assert _cosine(ours[i], theirs[i]) > 0.9999
        assert _cosine(ours[i], direct[i]) > 0.9999
    assert _cosine(ours[0], ours[1]) < 0.9  # different texts, different vectors


async def test_single_string_input(client: openai.AsyncOpenAI) -> None:
    reply = await client.embeddings.create(model=MODEL, input="hello world", encoding_format="float")
    assert len(reply.data) == 1 and len(reply.data[0].embedding) == 384


@pytest.mark.parametrize(("kwargs", "status", "param"), [
    ({"input": ""}, 400, "input[0]"),
    ({"input": []}, 400, "input"),
    ({"input": [[1, 2, 3]]}, 400, "input"),
    ({"input": "word " * 400}, 400, "input[0]"),
    ({"input": "hi", "dimensions": 128}, 400, "dimensions"),
    ({"input": "hi", "model": "text-embedding-3-small"}, 404, "model"),
])
async def test_bad_embedding_input(client: openai.AsyncOpenAI, kwargs: dict[str, object], status: int,
                                   param: str) -> None:
    args = {"model": MODEL, "encoding_format": "float", **kwargs}
    with pytest.raises(openai.APIStatusError) as caught:
        await client.embeddings.create(**args)  # type: ignore[arg-type]
    assert caught.value.status_code == status
    assert caught.value.body["param"] == param, caught.value.body  # type: ignore[index]
