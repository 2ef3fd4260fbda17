"""Knowledge's vector index (a real Milvus Lite file) answers calls that arrive before the
service's background start opened it, and a failure to open is UNAVAILABLE (retryable).

A fresh CI run's bench search met Knowledge right after a restart, before its vector index was
open: the call looked up a method on the not-yet-opened client and the caller got INTERNAL."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.common.errors import ServiceError
from services.knowledge.vector_index import DIMENSION, VectorIndex


def _unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(DIMENSION).astype(np.float32)
    return vector / np.linalg.norm(vector)


async def test_calls_before_the_index_was_opened_open_it(tmp_path: Path) -> None:
    index = VectorIndex("", lite_path=tmp_path / "milvus.db")  # never opened: as at start-up
    doc = uuid.uuid4()
    vectors = np.stack([_unit(1), _unit(2)])
    try:
        await index.upsert("org-a", doc, ["c1", "c2"], vectors)
        hits = await index.search("org-a", vectors[1], 2, None)
        assert [chunk for chunk, _ in hits][:1] == ["c2"]
        await index.delete_document("org-a", doc)
    finally:
        await index.close()

    unopened = VectorIndex("", lite_path=tmp_path / "milvus.db")
    try:  # a search first: nothing stored for this org, but an answer, not an error
        assert await unopened.search("org-b", _unit(3), 5, None) == []
    finally:
        await unopened.close()


async def test_an_index_that_cannot_open_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the index's folder should be")
    index = VectorIndex("", lite_path=blocker / "milvus.db")
    with pytest.raises(ServiceError) as raised:
        await index.search("org-a", _unit(4), 5, None)
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert raised.value.reason == "VECTOR_INDEX_UNAVAILABLE"
