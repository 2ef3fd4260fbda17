"""The ingestion pipeline: extract -> chunk -> embed (Triton, batched) -> index, in the background.

Crash safety: a worker takes a document with a lease in PostgreSQL (renewed while it works) and
counts attempts. A graceful shutdown gives the lease back, a crash lets it expire; either way the
sweeper finds the document again and starts over from the blob. Chunk ids are `<uid>-<index>` and
every write is an upsert after clearing the document's earlier partial output, so a retry never
indexes anything twice. A document that keeps failing for transient reasons ends FAILED after
MAX_ATTEMPTS, never stuck in PROCESSING.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from uuid import UUID

import grpc
import numpy as np

from services.common.errors import ServiceError
from services.common.identity import Identity
from services.common.server import Runtime
from services.common.triton import BULK_PRIORITY, TritonClient
from services.common.usage_client import ResourceType, UsageClient
from services.knowledge import metrics as knowledge_metrics
from services.knowledge.blobs import BlobStore
from services.knowledge.chunking import Chunk, chunk_document
from services.knowledge.extract import ExtractionError, extract_file
from services.knowledge.keyword_index import KeywordIndex
from services.knowledge.store import Store, chunk_id
from services.knowledge.vector_index import VectorIndex

log = logging.getLogger("aimesh.knowledge.ingest")

LEASE_SECONDS = 60.0
MAX_ATTEMPTS = 8
SWEEP_SECONDS = 5.0
EMBED_BATCH = 32  # chunks per embedding request: the Triton model's max_batch_size
EMBED_AHEAD = 4  # embedding requests a document keeps in flight
WORKERS = 4  # documents processed at once: one's writes and extraction overlap others' embeddings
TRANSIENT = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
)
# A model that Triton is (re)loading answers "unknown model" for a moment.
TRANSIENT_REASONS = ("TRITON_MODEL_NOT_FOUND", "TRITON_MODEL_NOT_READY")


class Ingestor:
    def __init__(
        self,
        runtime: Runtime,
        store: Store,
        blobs: BlobStore,
        vectors: VectorIndex,
        keywords: KeywordIndex,
        triton: TritonClient,
        usage: UsageClient,
        on_corpus_change: Callable[[str], Awaitable[None]],
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.blobs = blobs
        self.vectors = vectors
        self.keywords = keywords
        self.triton = triton
        self.usage = usage
        self.on_corpus_change = on_corpus_change
        self.queue: asyncio.Queue[tuple[str, UUID]] = asyncio.Queue()
        self.queued: set[UUID] = set()
        self.active: dict[UUID, asyncio.Task[None]] = {}

    def start(self) -> None:
        knowledge_metrics.watch_queue(lambda: (len(self.queued), len(self.active)))
        for i in range(WORKERS):
            self.runtime.spawn(self._worker(), f"knowledge-ingest-{i}")
        self.runtime.spawn(self._sweeper(), "knowledge-ingest-sweeper")

    def submit(self, org: str, uid: UUID) -> None:
        if uid not in self.queued and uid not in self.active:
            self.queued.add(uid)
            self.queue.put_nowait((org, uid))

    async def cancel(self, uid: UUID) -> None:
        """Stop processing `uid` (it is being deleted) and wait until its worker let go."""
        self.queued.discard(uid)
        task = self.active.get(uid)
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def _sweeper(self) -> None:
        # Picks up documents whose lease is free or expired: left by a crash, a shutdown, a retry.
        while True:
            try:
                for org, uid in await self.store.claimable():
                    self.submit(org, uid)
            except Exception as exc:
                log.warning("ingest sweep failed: %s", exc)
            await asyncio.sleep(SWEEP_SECONDS)

    async def _worker(self) -> None:
        while True:
            org, uid = await self.queue.get()
            if uid not in self.queued:
                continue  # cancelled while queued
            self.queued.discard(uid)
            task = asyncio.ensure_future(self._process(org, uid))
            self.active[uid] = task
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                task.cancel()
                await asyncio.wait({task})
                raise
            finally:
                self.active.pop(uid, None)
            if not task.cancelled() and task.exception() is not None:
                log.error("ingestion of %s crashed", uid, exc_info=task.exception())

    async def _heartbeat(self, uid: UUID) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            await self.store.renew(uid, LEASE_SECONDS)

    async def _process(self, org: str, uid: UUID) -> None:
        doc = await self.store.claim(org, uid, LEASE_SECONDS)
        if doc is None:
            return  # gone, finished, or another worker holds it
        if doc.attempts > MAX_ATTEMPTS:
            await self._fail(
                org, uid, f"processing was interrupted {MAX_ATTEMPTS} times; upload it again"
            )
            return
        heartbeat = asyncio.ensure_future(self._heartbeat(uid))
        try:
            count = await self._run(org, uid, doc.mime_type, retry=doc.attempts > 1)

            async def meter(conn: Any) -> None:
                # In mark_ready's transaction: the document is READY iff its chunks are billed.
                await self.usage.meter(
                    Identity(org=org, subject=""),
                    ResourceType.RESOURCE_TYPE_CHUNKS_EMBEDDED,
                    count,
                    str(uid),
                    conn=conn,
                )

            if await self.store.mark_ready(uid, count, meter):
                await self.on_corpus_change(org)
                knowledge_metrics.record_document(True, count)
                log.info("document ready", extra={"org": org, "uid": str(uid), "chunks": count})
            else:
                # Deleted while we worked: remove what we indexed.
                await self._purge(org, uid)
        except ExtractionError as exc:
            await self._fail(org, uid, str(exc))
        except ServiceError as exc:
            transient = exc.code in TRANSIENT or exc.reason in TRANSIENT_REASONS
            if transient and doc.attempts < MAX_ATTEMPTS:
                log.warning(
                    "transient ingestion failure, will retry: %s",
                    exc.message,
                    extra={"uid": str(uid)},
                )
                # Back off while still holding the lease, then let the sweeper hand it out again.
                await asyncio.sleep(min(2.0**doc.attempts, 60.0))
                await self.store.release(uid)
            elif transient:
                await self._fail(org, uid, f"a dependency stayed unavailable: {exc.message[:200]}")
            else:
                await self._fail(org, uid, f"embedding failed: {exc.message[:200]}")
        except asyncio.CancelledError:
            # Shutdown or delete: hand the document back (a deleted row simply is not updated).
            await asyncio.shield(self.store.release(uid))
            raise
        except Exception:
            log.exception("ingestion failed unexpectedly", extra={"uid": str(uid)})
            await self._fail(org, uid, "internal error while processing the document")
        finally:
            heartbeat.cancel()

    async def _run(self, org: str, uid: UUID, mime_type: str, retry: bool) -> int:
        path = self.blobs.path(org, uid)
        if not path.exists():
            raise ExtractionError("the uploaded content is missing from the blob store")
        extracted = await extract_file(mime_type, str(path))
        chunks = await asyncio.to_thread(chunk_document, extracted)
        if not chunks:
            raise ExtractionError("no extractable text")
        if retry:
            # A retry starts from a clean slate, so nothing from an interrupted attempt lingers.
            # (A first attempt has nothing to clear: claims count attempts, so none ran before.)
            await self._purge(org, uid)
        # Pipelined: up to EMBED_AHEAD batch requests wait at Triton (so its instances never idle
        # while this task writes to PostgreSQL and Milvus); writes follow in chunk order.
        in_flight: deque[tuple[list[Chunk], asyncio.Future[np.ndarray]]] = deque()
        try:
            for start in range(0, len(chunks), EMBED_BATCH):
                batch = chunks[start : start + EMBED_BATCH]
                texts = [c.embedding_input() for c in batch]
                in_flight.append((batch, asyncio.ensure_future(self.embed(texts))))
                if len(in_flight) == EMBED_AHEAD:
                    written, vectors = in_flight.popleft()
                    await self._index(org, uid, written, await vectors)
            while in_flight:
                written, vectors = in_flight.popleft()
                await self._index(org, uid, written, await vectors)
        finally:
            # A failed batch or a cancellation: drop the embeddings still under way.
            for _, pending in in_flight:
                pending.cancel()
            if in_flight:
                await asyncio.wait([pending for _, pending in in_flight])
        return len(chunks)

    async def _index(
        self, org: str, uid: UUID, batch: Sequence[Chunk], vectors: np.ndarray
    ) -> None:
        await self.store.upsert_chunks(org, uid, batch)
        await self.vectors.upsert(org, uid, [chunk_id(uid, c.index) for c in batch], vectors)
        await self.keywords.index(org, uid, batch)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return await self.triton.embed(list(texts), timeout=120.0, priority=BULK_PRIORITY)

    async def _purge(self, org: str, uid: UUID) -> None:
        await self.vectors.delete_document(org, uid)
        await self.keywords.delete_document(org, uid)
        await self.store.delete_chunks(uid)

    async def _fail(self, org: str, uid: UUID, reason: str) -> None:
        knowledge_metrics.record_document(False)
        log.info("document failed", extra={"org": org, "uid": str(uid), "reason": reason})
        try:
            await self._purge(org, uid)
        except ServiceError as exc:
            log.warning("could not purge indexes of failed document %s: %s", uid, exc.message)
        await self.store.mark_failed(uid, reason)
