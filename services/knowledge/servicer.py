"""Knowledge's gRPC surface: thin — decode, authorize, call the domain logic, encode."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from aimesh.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from google.protobuf import empty_pb2

from services.common.errors import FieldViolations, invalid_argument
from services.common.identity import Identity, require_identity
from services.common.pagination import Paginator
from services.common.server import Binding, Runtime, ServiceSpec, spec_for
from services.common.streams import CLIENT_STREAM_IDLE_SECONDS, idle_limited
from services.common.timestamps import to_timestamp
from services.common.triton import TritonClient
from services.common.usage_client import ResourceType, UsageClient
from services.knowledge.blobs import BlobStore
from services.knowledge.chunking import count_tokens
from services.knowledge.documents import (
    DOCUMENT,
    MAX_STREAM_BYTES,
    Documents,
    NewDocument,
    check_new_document,
    check_unary_content,
    collect_stream,
)
from services.knowledge.ingest import Ingestor
from services.knowledge.keyword_index import (
    KeywordIndex,
    OpenSearchKeywordIndex,
    PostgresKeywordIndex,
)
from services.knowledge.search import HYBRID, KEYWORD, SEMANTIC, Searcher, check_query
from services.knowledge.store import DocumentRow, Store
from services.knowledge.vector_index import VectorIndex

log = logging.getLogger("aimesh.knowledge")
Doc = knowledge_pb2.Document
MODES = {
    knowledge_pb2.SEARCH_MODE_UNSPECIFIED: HYBRID,
    knowledge_pb2.SEARCH_MODE_HYBRID: HYBRID,
    knowledge_pb2.SEARCH_MODE_SEMANTIC: SEMANTIC,
    knowledge_pb2.SEARCH_MODE_KEYWORD: KEYWORD,
}
STATE_NAMES = {
    Doc.STATE_PROCESSING: "PROCESSING",
    Doc.STATE_READY: "READY",
    Doc.STATE_FAILED: "FAILED",
}
STATE_VALUES = {v: k for k, v in STATE_NAMES.items()}


def to_proto(row: DocumentRow) -> knowledge_pb2.Document:
    return knowledge_pb2.Document(
        name=DOCUMENT.format(row.document_id),
        display_name=row.display_name,
        mime_type=row.mime_type,
        size_bytes=row.size_bytes,
        state=STATE_VALUES[row.state],
        failure_reason=row.failure_reason,
        chunk_count=row.chunk_count,
        metadata=row.metadata,
        create_time=to_timestamp(row.create_time),
        update_time=to_timestamp(row.update_time),
        content_sha256=row.content_sha256,
    )


def _new_document(doc: knowledge_pb2.Document, document_id: str, request_id: str) -> NewDocument:
    return NewDocument(doc.display_name, doc.mime_type, dict(doc.metadata), document_id, request_id)


MAX_EMBED_TEXTS = 2048
EMBED_MAX_TOKENS = 256  # the Triton model's limit (triton/models/text_embedding)
# No text of at most 256 word pieces is longer (a word piece covers at most 100 characters):
# longer texts are refused before tokenizing, which would hold the event loop for seconds.
EMBED_MAX_CHARS = EMBED_MAX_TOKENS * 128
EMBEDDING_MODEL_ID = "all-minilm-l6-v2"


class KnowledgeServicer(knowledge_pb2_grpc.KnowledgeServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        assert runtime.db is not None
        var = Path(settings.var_dir) / "knowledge"
        self.blobs = BlobStore(
            Path(settings.knowledge_blob_dir) if settings.knowledge_blob_dir else var / "blobs"
        )
        self.store = Store(runtime.db, self.blobs.identity)
        self.pages = Paginator(settings)
        self.vectors = VectorIndex(settings.milvus_uri, lite_path=var / "milvus.db")
        self.keywords: KeywordIndex = (
            OpenSearchKeywordIndex(settings.opensearch_url)
            if settings.opensearch_url
            else PostgresKeywordIndex(self.store)
        )
        self.triton = TritonClient.from_settings(settings)
        self.searcher = Searcher(
            self.store, self.vectors, self.keywords, self.triton, runtime.cache
        )
        # Chunks embedded and searches go through the durable usage outbox (in this schema).
        self.usage = UsageClient(runtime)
        self.ingestor = Ingestor(
            runtime,
            self.store,
            self.blobs,
            self.vectors,
            self.keywords,
            self.triton,
            self.usage,
            self.searcher.bump_generation,
        )
        self.documents = Documents(
            self.store,
            self.blobs,
            self.vectors,
            self.keywords,
            self.ingestor,
            settings.knowledge_org_quota_bytes,
            self.searcher.bump_generation,
        )
        runtime.add_health_check("vector-index", self.vectors.ping)
        runtime.on_shutdown(self._close)
        # Open the vector index (and create the collection) before processing starts.
        runtime.spawn(self._start(), "knowledge-start")

    async def _start(self) -> None:
        # Keep trying: a Milvus server may come up after us (readiness stays false meanwhile).
        delay = 1.0
        while True:
            try:
                await self.vectors.open()
                break
            except Exception as exc:  # any client/connection error: log and retry
                log.warning("vector index not reachable yet (%s); retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self.ingestor.start()

    async def _close(self) -> None:
        await self.triton.close()
        await self.keywords.close()
        await self.vectors.close()

    # --- RPCs -------------------------------------------------------------------------------

    async def CreateDocument(
        self, request: knowledge_pb2.CreateDocumentRequest, context: grpc.aio.ServicerContext
    ) -> knowledge_pb2.Document:
        identity = _caller(context)
        doc = _new_document(request.document, request.document_id, request.request_id)
        v = FieldViolations()
        v.check(request.HasField("document"), "document", "required")
        check_new_document(doc, "", v)
        check_unary_content(request.content, v)
        v.raise_if_any()
        row = await self.documents.create(identity.org, doc, request.content, "content")
        return to_proto(row)

    async def UploadDocument(
        self,
        request_iterator: AsyncIterator[knowledge_pb2.UploadDocumentRequest],
        context: grpc.aio.ServicerContext,
    ) -> knowledge_pb2.Document:
        identity = _caller(context)
        # Like every client stream, an upload that stops sending ends after an idle limit.
        stream = idle_limited(
            request_iterator.__aiter__(), CLIENT_STREAM_IDLE_SECONDS, "content_chunk"
        )
        first = await anext(stream, None)
        if first is None:
            raise invalid_argument(
                "the stream is empty", [("metadata", "the first message must carry metadata")]
            )
        if first.WhichOneof("payload") != "metadata":
            raise invalid_argument(
                "the first message must carry metadata",
                [("metadata", "required in the first message")],
            )
        meta = first.metadata
        doc = _new_document(meta.document, meta.document_id, meta.request_id)
        v = FieldViolations()
        v.check(meta.HasField("document"), "metadata.document", "required")
        check_new_document(doc, "metadata.", v)
        v.check(
            0 <= meta.size_bytes <= MAX_STREAM_BYTES,
            "metadata.size_bytes",
            f"must be 0-{MAX_STREAM_BYTES} (64 MiB)",
        )
        v.raise_if_any()

        async def pieces() -> AsyncIterator[bytes]:
            async for message in stream:
                if message.WhichOneof("payload") != "content_chunk":
                    raise invalid_argument(
                        "only the first message may carry metadata",
                        [("metadata", "allowed in the first message only")],
                    )
                yield message.content_chunk

        content = await collect_stream(pieces(), meta.size_bytes)
        row = await self.documents.create(identity.org, doc, content, "content_chunk")
        return to_proto(row)

    async def GetDocument(
        self, request: knowledge_pb2.GetDocumentRequest, context: grpc.aio.ServicerContext
    ) -> knowledge_pb2.Document:
        identity = _caller(context)
        return to_proto(await self.documents.get(identity.org, request.name))

    async def ListDocuments(
        self, request: knowledge_pb2.ListDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> knowledge_pb2.ListDocumentsResponse:
        identity = _caller(context)
        page = self.pages.start(request, identity.org)
        if request.state not in (Doc.STATE_UNSPECIFIED, *STATE_NAMES):
            raise invalid_argument("state is not a known value", [("state", "unknown enum value")])
        rows, token, total = await self.documents.list(
            identity.org, page, STATE_NAMES.get(request.state)
        )
        return knowledge_pb2.ListDocumentsResponse(
            documents=[to_proto(r) for r in rows], next_page_token=token, total_size=total
        )

    async def DeleteDocument(
        self, request: knowledge_pb2.DeleteDocumentRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        identity = _caller(context)
        await self.documents.delete(identity.org, request.name)
        return empty_pb2.Empty()

    async def SearchDocuments(
        self, request: knowledge_pb2.SearchDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> knowledge_pb2.SearchDocumentsResponse:
        identity = _caller(context)
        v = FieldViolations()
        v.check(request.mode in MODES, "mode", "unknown search mode")
        top_k = check_query(request.query, request.top_k, len(request.metadata_filters), v)
        v.check(len(request.documents) <= 100, "documents", "at most 100 names")
        document_ids = [
            DOCUMENT.id(name, f"documents[{i}]", v) for i, name in enumerate(request.documents)
        ] or None
        v.raise_if_any()
        mode = MODES[request.mode]
        mode_value = knowledge_pb2.SEARCH_MODE_HYBRID if mode == HYBRID else request.mode

        normalized = knowledge_pb2.SearchDocumentsRequest()
        normalized.CopyFrom(request)
        normalized.mode, normalized.top_k = mode_value, top_k
        fingerprint = normalized.SerializeToString(deterministic=True)
        generation = await self.searcher.generation(identity.org)
        cached = await self.searcher.cached(identity.org, generation, fingerprint)
        # Metered before the reply (cached or not) is sent: a search the caller saw is billed once.
        await self.usage.meter(
            identity, ResourceType.RESOURCE_TYPE_SEARCHES, 1, _request_id(context)
        )
        if cached is not None:
            return knowledge_pb2.SearchDocumentsResponse.FromString(cached)

        results = await self.searcher.search(
            identity.org, request.query, mode, top_k, dict(request.metadata_filters), document_ids
        )
        response = knowledge_pb2.SearchDocumentsResponse(
            mode=mode_value,
            results=[
                knowledge_pb2.SearchResult(
                    chunk_id=r.hit.chunk_id,
                    text=r.hit.text,
                    score=r.score,
                    semantic_rank=r.semantic_rank,
                    keyword_rank=r.keyword_rank,
                    document=DOCUMENT.format(r.hit.document_id),
                    document_display_name=r.hit.display_name,
                    chunk_index=r.hit.chunk_index,
                    start_offset=r.hit.start_offset,
                    end_offset=r.hit.end_offset,
                    heading_path=r.hit.heading_path,
                )
                for r in results
            ],
        )
        await self.searcher.remember(
            identity.org, generation, fingerprint, response.SerializeToString()
        )
        return response

    async def EmbedTexts(
        self, request: knowledge_pb2.EmbedTextsRequest, context: grpc.aio.ServicerContext
    ) -> knowledge_pb2.EmbedTextsResponse:
        identity = _caller(context)
        texts = list(request.texts)
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
            identity, ResourceType.RESOURCE_TYPE_CHUNKS_EMBEDDED, len(texts), _request_id(context)
        )
        return knowledge_pb2.EmbedTextsResponse(
            embeddings=[
                knowledge_pb2.TextEmbedding(values=vector.tolist(), token_count=n)
                for vector, n in zip(vectors, counts)
            ],
            model=EMBEDDING_MODEL_ID,
            total_tokens=sum(counts),
        )


def _caller(context: grpc.aio.ServicerContext) -> Identity:
    # Roles are checked before any servicer code (services/common/access.py).
    return require_identity(context.invocation_metadata() or ())


def _request_id(context: grpc.aio.ServicerContext) -> str:
    import uuid

    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return value
    return str(uuid.uuid4())


def build_spec() -> ServiceSpec:
    return spec_for(
        "knowledge",
        Path(__file__).parent,
        [
            Binding(
                knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server,
                KnowledgeServicer,
                knowledge_pb2.DESCRIPTOR.services_by_name["KnowledgeService"],
            )
        ],
    )
