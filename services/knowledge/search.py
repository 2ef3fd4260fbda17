"""Search: semantic (Milvus), keyword (PostgreSQL FTS or OpenSearch) and hybrid by reciprocal
rank fusion, with a Redis cache of whole answers keyed by the org's corpus generation (bumped on
every change to the org's searchable corpus, so a cached answer is never stale)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from redis.exceptions import RedisError

from services.common import metrics
from services.common.cache import CORPUS_CHANGED_CHANNEL, ServiceCache
from services.common.errors import FieldViolations
from services.common.identity import Identity
from services.common.triton import TritonClient
from services.common.usage_client import ResourceType, UsageClient
from services.knowledge.documents import DOCUMENT
from services.knowledge.keyword_index import KeywordIndex
from services.knowledge.store import ChunkHit, Store
from services.knowledge.vector_index import VectorIndex

log = logging.getLogger("aimesh.knowledge.search")

RRF_K = 60
SEMANTIC, KEYWORD, HYBRID = "semantic", "keyword", "hybrid"
CACHE_TTL_SECONDS = 300
QUERY_VECTOR_TTL_SECONDS = 86_400


@dataclass(frozen=True)
class SearchQuery:
    """One checked search request."""

    text: str
    mode: str
    top_k: int
    metadata_filters: dict[str, str]
    document_ids: list[str] | None  # None: every document of the org

    def fingerprint(self) -> bytes:
        """The same bytes for the same question: the key of its cached answer."""
        filters = sorted(self.metadata_filters.items())
        return json.dumps([self.text, self.mode, self.top_k, filters, self.document_ids]).encode()


def check_search(
    text: str, mode: str | None, top_k: int, metadata_filters: dict[str, str],
    documents: Sequence[str],
) -> SearchQuery:
    """A search's text, mode (None: an unknown one) and limits; top_k defaults to 10 and the
    documents are resource names. Every problem is one INVALID_ARGUMENT."""
    v = FieldViolations()
    v.check(mode is not None, "mode", "unknown search mode")
    v.check(bool(text.strip()) and len(text) <= 2048, "query", "required, 1-2,048 characters")
    top_k = top_k or 10
    v.check(1 <= top_k <= 100, "top_k", "must be 1-100 (default 10)")
    v.check(len(metadata_filters) <= 16, "metadata_filters", "at most 16 entries")
    v.check(len(documents) <= 100, "documents", "at most 100 names")
    document_ids = [
        DOCUMENT.id(name, f"documents[{i}]", v) for i, name in enumerate(documents)
    ] or None
    v.raise_if_any()
    return SearchQuery(text, mode or HYBRID, top_k, metadata_filters, document_ids)


@dataclass
class Result:
    hit: ChunkHit
    score: float
    semantic_rank: int
    keyword_rank: int


def _dump(results: list[Result]) -> bytes:
    return json.dumps(
        [[asdict(r.hit), r.score, r.semantic_rank, r.keyword_rank] for r in results]
    ).encode()


def _load(answer: bytes) -> list[Result]:
    return [Result(ChunkHit(**hit), score, semantic, keyword)
            for hit, score, semantic, keyword in json.loads(answer)]


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
        usage: UsageClient | None = None,
    ) -> None:
        self.store = store
        self.vectors = vectors
        self.keywords = keywords
        self.triton = triton
        self.cache = cache
        self.usage = usage  # None only where nothing is answered to a caller (bench)

    async def answer(self, payer: Identity, query: SearchQuery, work_id: str) -> list[Result]:
        """A caller's search: from the cache while the org's corpus is unchanged, else searched
        and remembered. Metered before the reply (cached or not) is sent: a search the caller
        saw is billed once."""
        assert self.usage is not None, "answering callers needs the usage client"
        org = payer.org
        generation = await self.generation(org)
        fingerprint = query.fingerprint()
        cached = await self.cached(org, generation, fingerprint)
        await self.usage.meter(payer, ResourceType.RESOURCE_TYPE_SEARCHES, 1, work_id)
        if cached is not None:
            return cached
        results = await self.search(org, query.text, query.mode, query.top_k,
                                    query.metadata_filters, query.document_ids)
        await self.remember(org, generation, fingerprint, results)
        return results

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
        """The org's corpus changed (after the change committed): new cache generation, and
        the change announced on CORPUS_CHANGED_CHANNEL (one round trip for both)."""
        if self.cache is None:
            return
        try:
            pipe = self.cache.redis.pipeline(transaction=False)
            pipe.incr(self.cache.key("gen", org))
            pipe.publish(CORPUS_CHANGED_CHANNEL, org)
            await pipe.execute()
        except RedisError as exc:
            # Cached answers expire on their own within CACHE_TTL_SECONDS (and listeners'
            # conclusions within theirs).
            log.warning("could not bump corpus generation: %s", exc)

    async def cached(
        self, org: str, generation: str | None, fingerprint: bytes
    ) -> list[Result] | None:
        if self.cache is None or generation is None:
            return None
        try:
            answer = await self.cache.redis.get(self._answer_key(org, generation, fingerprint))
        except RedisError:
            return None
        metrics.record_cache("knowledge_search", answer is not None)
        return None if answer is None else _load(answer)

    async def remember(
        self, org: str, generation: str | None, fingerprint: bytes, results: list[Result]
    ) -> None:
        if self.cache is None or generation is None:
            return
        try:
            await self.cache.redis.set(
                self._answer_key(org, generation, fingerprint), _dump(results),
                ex=CACHE_TTL_SECONDS,
            )
        except RedisError:
            pass

    def _answer_key(self, org: str, generation: str, fingerprint: bytes) -> str:
        assert self.cache is not None
        digest = hashlib.sha256(fingerprint).hexdigest()
        return self.cache.key(
            "answer", hashlib.sha256(org.encode()).hexdigest()[:24], generation, digest
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
