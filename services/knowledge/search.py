"""Search: semantic (Milvus), keyword (PostgreSQL FTS or OpenSearch) and hybrid by reciprocal
rank fusion, with a Redis cache of whole answers keyed by the org's corpus generation (bumped on
every change to the org's searchable corpus, so a cached answer is never stale)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from redis.exceptions import RedisError

from services.common import metrics
from services.common.cache import ServiceCache
from services.common.errors import FieldViolations
from services.common.triton import TritonClient
from services.knowledge.keyword_index import KeywordIndex
from services.knowledge.store import ChunkHit, Store
from services.knowledge.vector_index import VectorIndex

log = logging.getLogger("aimesh.knowledge.search")

RRF_K = 60
SEMANTIC, KEYWORD, HYBRID = "semantic", "keyword", "hybrid"
CACHE_TTL_SECONDS = 300
QUERY_VECTOR_TTL_SECONDS = 86_400


def check_query(query: str, top_k: int, filter_count: int, v: FieldViolations) -> int:
    """A search's text and limits; returns the number of results to return (default 10)."""
    v.check(bool(query.strip()) and len(query) <= 2048, "query", "required, 1-2,048 characters")
    top_k = top_k or 10
    v.check(1 <= top_k <= 100, "top_k", "must be 1-100 (default 10)")
    v.check(filter_count <= 16, "metadata_filters", "at most 16 entries")
    return top_k


@dataclass
class Result:
    hit: ChunkHit
    score: float
    semantic_rank: int
    keyword_rank: int


def rrf(
    rankings: dict[str, Sequence[str]], k: int = RRF_K
) -> list[tuple[str, float, dict[str, int]]]:
    """Reciprocal rank fusion: score = sum over rankings of 1 / (k + rank), ranks 1-based."""
    scores: dict[str, float] = {}
    ranks: dict[str, dict[str, int]] = {}
    for name, ranking in rankings.items():
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
            ranks.setdefault(item, {})[name] = rank
    ordered = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(item, score, ranks[item]) for item, score in ordered]


class Searcher:
    def __init__(
        self,
        store: Store,
        vectors: VectorIndex,
        keywords: KeywordIndex,
        triton: TritonClient,
        cache: ServiceCache | None,
    ) -> None:
        self.store = store
        self.vectors = vectors
        self.keywords = keywords
        self.triton = triton
        self.cache = cache

    # --- corpus generation (cache invalidation) -------------------------------------------

    async def generation(self, org: str) -> str | None:
        if self.cache is None:
            return None
        try:
            value = await self.cache.redis.get(self.cache.key("gen", org))
        except RedisError:
            return None  # no cache without Redis; search still works
        return value.decode() if value else "0"

    async def bump_generation(self, org: str) -> None:
        if self.cache is None:
            return
        try:
            await self.cache.redis.incr(self.cache.key("gen", org))
        except RedisError as exc:
            # Cached answers expire on their own within CACHE_TTL_SECONDS.
            log.warning("could not bump corpus generation: %s", exc)

    async def cached(self, org: str, generation: str | None, fingerprint: bytes) -> bytes | None:
        if self.cache is None or generation is None:
            return None
        try:
            answer = await self.cache.redis.get(self._answer_key(org, generation, fingerprint))
        except RedisError:
            return None
        metrics.record_cache("knowledge_search", answer is not None)
        return answer

    async def remember(
        self, org: str, generation: str | None, fingerprint: bytes, answer: bytes
    ) -> None:
        if self.cache is None or generation is None:
            return
        try:
            await self.cache.redis.set(
                self._answer_key(org, generation, fingerprint), answer, ex=CACHE_TTL_SECONDS
            )
        except RedisError:
            pass

    def _answer_key(self, org: str, generation: str, fingerprint: bytes) -> str:
        assert self.cache is not None
        digest = hashlib.sha256(fingerprint).hexdigest()
        return self.cache.key(
            "search", hashlib.sha256(org.encode()).hexdigest()[:24], generation, digest
        )

    # --- search ---------------------------------------------------------------------------

    async def query_vector(self, query: str) -> np.ndarray:
        key = (
            self.cache.key("qvec", hashlib.sha256(query.encode()).hexdigest())
            if self.cache
            else None
        )
        if key is not None:
            try:
                raw = await self.cache.redis.get(key)  # type: ignore[union-attr]
                if raw and len(raw) == 384 * 4:
                    return np.frombuffer(raw, dtype=np.float32)
            except RedisError:
                pass
        vector = (await self.triton.embed([query], timeout=10.0))[0].astype(np.float32)
        if key is not None:
            try:
                await self.cache.redis.set(key, vector.tobytes(), ex=QUERY_VECTOR_TTL_SECONDS)  # type: ignore[union-attr]
            except RedisError:
                pass
        return vector

    async def search(
        self,
        org: str,
        query: str,
        mode: str,
        top_k: int,
        metadata_filters: dict[str, str],
        document_ids: list[str] | None,
    ) -> list[Result]:
        doc_uids: list[str] | None = None
        if document_ids is not None or metadata_filters:
            doc_uids = await self.store.resolve_documents(
                org, document_ids, metadata_filters or None
            )
            if not doc_uids:
                return []
        # Extra candidates: fusion needs depth, and hydration drops chunks of documents that are
        # not READY (being processed or deleted) after the index answered.
        depth = max(top_k * 3, 30) if mode == HYBRID else top_k + 10

        async def semantic() -> list[tuple[str, float]]:
            return await self.vectors.search(org, await self.query_vector(query), depth, doc_uids)

        async def keyword() -> list[tuple[str, float]]:
            # In hybrid mode the keyword side ranks only chunks with every query term: a chunk
            # sharing one common word with a paraphrase would otherwise outvote the semantic
            # ranking in the fusion. Keyword mode alone fills up with any-term matches.
            return await self.keywords.search(
                org, query, depth, doc_uids, require_all=(mode == HYBRID)
            )

        if mode == SEMANTIC:
            sem, kw = await semantic(), []
        elif mode == KEYWORD:
            sem, kw = [], await keyword()
        else:
            sem, kw = await asyncio.gather(semantic(), keyword())

        if mode == HYBRID:
            fused = rrf({SEMANTIC: [c for c, _ in sem], KEYWORD: [c for c, _ in kw]})
            ranked = [
                (cid, score, r.get(SEMANTIC, 0), r.get(KEYWORD, 0)) for cid, score, r in fused
            ]
        elif mode == SEMANTIC:
            ranked = [(cid, score, i, 0) for i, (cid, score) in enumerate(sem, start=1)]
        else:
            ranked = [(cid, score, 0, i) for i, (cid, score) in enumerate(kw, start=1)]

        hits = await self.store.hydrate(org, [cid for cid, *_ in ranked[: top_k + 20]])
        results: list[Result] = []
        for cid, score, s_rank, k_rank in ranked:
            hit = hits.get(cid)
            if hit is not None:
                results.append(Result(hit, score, s_rank, k_rank))
                if len(results) == top_k:
                    break
        return results
