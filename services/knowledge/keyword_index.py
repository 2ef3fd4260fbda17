"""Keyword indexes behind one interface: PostgreSQL full-text search (default) or OpenSearch
(when AIMESH_OPENSEARCH_URL is set).

Chunk rows always live in PostgreSQL (text and citation offsets); the PostgreSQL index is the
generated tsvector column of those rows, so `index`/`delete_document` have nothing extra to do.
The OpenSearch adapter keeps a copy of each chunk's searchable text in one index, filtered by org.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol
from uuid import UUID

from services.common.errors import unavailable
from services.knowledge.chunking import Chunk
from services.knowledge.store import Store, chunk_id


class KeywordIndex(Protocol):
    name: str

    async def index(self, org: str, uid: UUID, chunks: Sequence[Chunk]) -> None: ...

    async def delete_document(self, org: str, uid: UUID) -> None: ...

    async def search(
        self,
        org: str,
        query: str,
        limit: int,
        doc_uids: Sequence[str] | None,
        require_all: bool = False,
    ) -> list[tuple[str, float]]:
        """Best chunk ids with the engine's score; `require_all`: only chunks with every term."""
        ...

    async def close(self) -> None: ...


class PostgresKeywordIndex:
    """tsvector + GIN over the chunk rows (written by the Store in the same pipeline step)."""

    name = "postgres"

    def __init__(self, store: Store) -> None:
        self.store = store

    async def index(self, org: str, uid: UUID, chunks: Sequence[Chunk]) -> None:
        return None  # the chunk rows' generated tsvector is the index

    async def delete_document(self, org: str, uid: UUID) -> None:
        return None  # deleting the document row cascades to its chunk rows

    async def search(
        self,
        org: str,
        query: str,
        limit: int,
        doc_uids: Sequence[str] | None,
        require_all: bool = False,
    ) -> list[tuple[str, float]]:
        return await self.store.keyword_search(org, query, limit, doc_uids, require_all)

    async def close(self) -> None:
        return None


# --- OpenSearch ----------------------------------------------------------------------------------

OPENSEARCH_INDEX = "aimesh-knowledge-chunks"

# Mapping: org/doc are exact-match keywords (filters), text is analyzed with the English analyzer
# (stemming like PostgreSQL's 'english' configuration), headings boosted at query time.
INDEX_BODY: dict[str, Any] = {
    "settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0}},
    "mappings": {
        "properties": {
            "org": {"type": "keyword"},
            "doc": {"type": "keyword"},
            "chunk_index": {"type": "integer"},
            "text": {"type": "text", "analyzer": "english"},
            "headings": {"type": "text", "analyzer": "english"},
        }
    },
}


def bulk_index_body(org: str, uid: UUID, chunks: Sequence[Chunk]) -> list[dict[str, Any]]:
    """_bulk body: an `index` action per chunk with its id as _id (re-indexing overwrites)."""
    body: list[dict[str, Any]] = []
    for chunk in chunks:
        body.append({"index": {"_index": OPENSEARCH_INDEX, "_id": chunk_id(uid, chunk.index)}})
        body.append(
            {
                "org": org,
                "doc": str(uid),
                "chunk_index": chunk.index,
                "text": chunk.text,
                "headings": " ".join(chunk.heading_path),
            }
        )
    return body


def delete_query(org: str, uid: UUID) -> dict[str, Any]:
    return {"query": {"bool": {"filter": [{"term": {"org": org}}, {"term": {"doc": str(uid)}}]}}}


def search_body(
    org: str, query: str, limit: int, doc_uids: Sequence[str] | None, require_all: bool = False
) -> dict[str, Any]:
    filters: list[dict[str, Any]] = [{"term": {"org": org}}]
    if doc_uids is not None:
        filters.append({"terms": {"doc": list(doc_uids)}})
    return {
        "size": limit,
        "_source": False,
        "query": {
            "bool": {
                "must": [
                    {
                        "multi_match": {
                            "query": query,
                            "fields": ["text", "headings^2"],
                            "operator": "and" if require_all else "or",
                        }
                    }
                ],
                "filter": filters,
            }
        },
    }


def parse_hits(response: dict[str, Any]) -> list[tuple[str, float]]:
    return [
        (hit["_id"], float(hit.get("_score") or 0.0))
        for hit in response.get("hits", {}).get("hits", [])
    ]


class OpenSearchKeywordIndex:
    name = "opensearch"

    def __init__(self, url: str) -> None:
        from opensearchpy import AsyncOpenSearch

        self.client = AsyncOpenSearch(hosts=[url], timeout=10, max_retries=2, retry_on_timeout=True)
        self._ready = False

    async def ensure_index(self) -> None:
        if self._ready:
            return
        try:
            if not await self.client.indices.exists(index=OPENSEARCH_INDEX):
                await self.client.indices.create(index=OPENSEARCH_INDEX, body=INDEX_BODY)
        except Exception as exc:
            if "resource_already_exists" not in str(exc):
                raise unavailable(
                    f"OpenSearch is unreachable: {exc}", reason="KEYWORD_INDEX_UNAVAILABLE"
                ) from None
        self._ready = True

    async def index(self, org: str, uid: UUID, chunks: Sequence[Chunk]) -> None:
        await self.ensure_index()
        response = await self.client.bulk(
            body=bulk_index_body(org, uid, chunks), refresh="wait_for"
        )
        if response.get("errors"):
            first = next(
                (
                    item["index"].get("error")
                    for item in response["items"]
                    if item["index"].get("error")
                ),
                None,
            )
            raise unavailable(
                f"OpenSearch refused chunks: {first}", reason="KEYWORD_INDEX_UNAVAILABLE"
            )

    async def delete_document(self, org: str, uid: UUID) -> None:
        await self.ensure_index()
        await self.client.delete_by_query(
            index=OPENSEARCH_INDEX, body=delete_query(org, uid), refresh=True, conflicts="proceed"
        )

    async def search(
        self,
        org: str,
        query: str,
        limit: int,
        doc_uids: Sequence[str] | None,
        require_all: bool = False,
    ) -> list[tuple[str, float]]:
        await self.ensure_index()
        body = search_body(org, query, limit, doc_uids, require_all)
        try:
            response = await self.client.search(index=OPENSEARCH_INDEX, body=body)
        except Exception as exc:
            raise unavailable(
                f"OpenSearch search failed: {exc}", reason="KEYWORD_INDEX_UNAVAILABLE"
            ) from None
        return parse_hits(response)

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self.client.close()
