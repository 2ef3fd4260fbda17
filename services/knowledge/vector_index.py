"""The vector index: Milvus through pymilvus — a Milvus Lite file under var_dir by default, a
Milvus server when AIMESH_MILVUS_URI is set (same client, same collection layout).

One collection holds every organization's chunk vectors; `org` is a partition key (so a Milvus
server routes each org to its own partition) and every search and delete also filters on it:
org isolation never depends on the caller passing the right partition. pymilvus is synchronous,
so calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np

from services.common.errors import unavailable

log = logging.getLogger("aimesh.knowledge.vectors")

COLLECTION = "knowledge_chunks"
DIMENSION = 384


def _quote(value: str) -> str:
    # Milvus boolean expressions take JSON-style double-quoted strings.
    return json.dumps(value)


def scope_filter(org: str, doc_uids: Sequence[str] | None = None) -> str:
    expr = f"org == {_quote(org)}"
    if doc_uids is not None:
        expr += f" and doc in [{', '.join(_quote(u) for u in doc_uids)}]"
    return expr


class VectorIndex:
    def __init__(self, uri: str, lite_path: Path | None = None, ef: int = 64) -> None:
        self.uri = uri or str(lite_path)
        self.is_lite = not uri
        self.lite_path = lite_path
        self.ef = ef
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        async with self._lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._open)

    def _open(self) -> Any:
        from pymilvus import DataType, MilvusClient

        if self.is_lite and self.lite_path is not None:
            self.lite_path.parent.mkdir(parents=True, exist_ok=True)
        client = MilvusClient(uri=self.uri)
        if not client.has_collection(COLLECTION):
            schema = client.create_schema(auto_id=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=96)
            schema.add_field("org", DataType.VARCHAR, max_length=256)
            schema.add_field("doc", DataType.VARCHAR, max_length=40)
            schema.add_field("vec", DataType.FLOAT_VECTOR, dim=DIMENSION)
            index = client.prepare_index_params()
            # AUTOINDEX: HNSW on a Milvus server and on Milvus Lite 3 (faiss); FLAT on Lite 2.x,
            # which accepts nothing else. Scalar indexes speed up the org/doc filters on a server.
            index.add_index("vec", index_type="AUTOINDEX", metric_type="COSINE")
            if not self.is_lite:
                index.add_index("org", index_type="INVERTED")
                index.add_index("doc", index_type="INVERTED")
            try:
                client.create_collection(COLLECTION, schema=schema, index_params=index)
            except Exception:
                if not client.has_collection(COLLECTION):  # lost a creation race: fine
                    raise
        client.load_collection(COLLECTION)
        return client

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """The client's `method` in a worker thread, the index opened first if it is not yet
        (the service opens it in the background: a call may arrive before). The method is
        looked up only after opening; any failure, opening included, is UNAVAILABLE."""
        try:
            if self._client is None:
                await self.open()
            return await asyncio.to_thread(getattr(self._client, method), *args, **kwargs)
        except Exception as exc:
            log.warning("vector index %s failed: %s", method, exc)
            raise unavailable(
                f"vector index {method} failed: {exc}", reason="VECTOR_INDEX_UNAVAILABLE"
            ) from None

    async def upsert(self, org: str, uid: UUID, ids: Sequence[str], vectors: np.ndarray) -> None:
        rows = [
            {"id": cid, "org": org, "doc": str(uid), "vec": vec.tolist()}
            for cid, vec in zip(ids, vectors.astype(np.float32))
        ]
        await self._call("upsert", COLLECTION, rows)

    async def delete_document(self, org: str, uid: UUID) -> None:
        await self._call("delete", COLLECTION, filter=scope_filter(org, [str(uid)]))

    async def search(
        self, org: str, vector: np.ndarray, limit: int, doc_uids: Sequence[str] | None
    ) -> list[tuple[str, float]]:
        hits = await self._call(
            "search",
            COLLECTION,
            data=[vector.astype(np.float32).tolist()],
            filter=scope_filter(org, doc_uids),
            limit=limit,
            output_fields=[],
            search_params={"metric_type": "COSINE", "params": {"ef": max(self.ef, limit)}},
        )
        return [(str(h["id"]), float(h["distance"])) for h in (hits[0] if hits else [])]

    async def ping(self) -> bool:
        if self._client is None:
            return False
        try:
            return bool(
                await asyncio.wait_for(
                    asyncio.to_thread(self._client.has_collection, COLLECTION), 2
                )
            )
        except Exception:
            return False

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)
