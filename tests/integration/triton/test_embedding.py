from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from services.common.errors import ServiceError
from services.common.triton import BULK_PRIORITY, EMBEDDING_MODEL, TritonClient


async def test_shape_and_normalization(triton: TritonClient) -> None:
    out = await triton.infer(
        EMBEDDING_MODEL,
        {"TEXT": np.array([[b"hello world"], [b"a second, longer sentence here"]], dtype=object)},
    )
    vectors = out["EMBEDDING"]
    assert vectors.shape == (2, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert out["TOKEN_COUNT"].reshape(-1).tolist()[0] == 4  # [CLS] hello world [SEP]


async def test_similar_sentences_are_closer(triton: TritonClient) -> None:
    v = await triton.embed(
        [
            "A cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "Interest rates rose again.",
        ]
    )
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2
    assert float(v[0] @ v[1]) > float(v[1] @ v[2]) + 0.2


async def test_embed_helper_batches_beyond_32(triton: TritonClient) -> None:
    texts = [f"sentence number {i}" for i in range(40)]
    v = await triton.embed(texts)
    assert v.shape == (40, 384)


async def test_interactive_requests_overtake_queued_bulk_ones(triton: TritonClient) -> None:
    # Ingestion queues many batch requests at bulk priority; a search query sent after them must
    # not wait for all of them (without priority levels it would finish last).
    text = "Ingestion sends its chunks in batches of thirty-two, several requests in flight. " * 4
    finished: list[str] = []

    async def bulk() -> None:
        await triton.embed([text] * 32, priority=BULK_PRIORITY, timeout=300)
        finished.append("bulk")

    batches = [asyncio.ensure_future(bulk()) for _ in range(16)]
    await asyncio.sleep(0.05)  # the bulk requests reach Triton's queue first
    await triton.embed(["an interactive search query"], timeout=300)
    finished.append("query")
    await asyncio.gather(*batches)
    assert finished.index("query") < 10, finished


@pytest.mark.parametrize(
    "text, needle",
    [(b"\xff\xfe broken", "UTF-8"), (b"word " * 400, "tokens"), (b"   ", "empty")],
)
async def test_bad_text_is_invalid_argument(triton: TritonClient, text: bytes, needle: str) -> None:
    with pytest.raises(ServiceError) as err:
        await triton.infer(EMBEDDING_MODEL, {"TEXT": np.array([[text]], dtype=object)})
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.message
    assert err.value.violations and err.value.violations[0][0].startswith("TEXT")
    # The instance survived: a good request still works.
    assert (await triton.embed(["still alive"])).shape == (1, 384)


async def test_oversized_batch_is_invalid_argument(triton: TritonClient) -> None:
    batch = np.array([[b"x"]] * 33, dtype=object)
    with pytest.raises(ServiceError) as err:
        await triton.infer(EMBEDDING_MODEL, {"TEXT": batch})
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch-size" in err.value.message


async def test_missing_model_is_failed_precondition(triton: TritonClient) -> None:
    with pytest.raises(ServiceError) as err:
        await triton.infer("no_such_model", {"TEXT": np.array([[b"x"]], dtype=object)})
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.reason == "TRITON_MODEL_NOT_FOUND"
    assert await triton.is_model_ready("no_such_model") is False
    assert (await triton.readiness([EMBEDDING_MODEL])) == {EMBEDDING_MODEL: True}


async def test_unreachable_server_is_unavailable() -> None:
    client = TritonClient("127.0.0.1:1", default_timeout=2.0)
    try:
        assert await client.is_model_ready(EMBEDDING_MODEL) is False
        with pytest.raises(ServiceError) as err:
            await client.embed(["x"])
        assert err.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        await client.close()
