"""Knowledge's gRPC surface: thin — decode, authorize, call the domain logic, encode."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from aimesh.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from google.protobuf import empty_pb2

from services.common.errors import invalid_argument
from services.common.identity import Identity, require_identity
from services.common.pagination import Paginator
from services.common.server import Binding, Runtime, ServiceSpec, spec_for
from services.common.streams import CLIENT_STREAM_IDLE_SECONDS, idle_limited
from services.common.timestamps import to_timestamp
from services.common.triton import TritonClient
from services.common.usage_client import UsageClient
from services.knowledge.blobs import BlobStore
from services.knowledge.documents import (
    DOCUMENT,
    Documents,
    NewDocument,
    check_create,
    check_upload_start,
    collect_stream,
)
from services.knowledge.embeddings import EMBEDDING_MODEL_ID, Embedder
from services.knowledge.ingest import Ingestor
from services.knowledge.keyword_index import (
    KeywordIndex,
    OpenSearchKeywordIndex,
    PostgresKeywordIndex,
)
from services.knowledge.search import HYBRID, KEYWORD, SEMANTIC, Searcher, check_search
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
MODE_VALUES = {
    HYBRID: knowledge_pb2.SEARCH_MODE_HYBRID,
    SEMANTIC: knowledge_pb2.SEARCH_MODE_SEMANTIC,
    KEYWORD: knowledge_pb2.SEARCH_MODE_KEYWORD,
}


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
        # Chunks embedded and searches go through the durable usage outbox (in this schema).
        self.usage = UsageClient(runtime)
        self.searcher = Searcher(
            self.store, self.vectors, self.keywords, self.triton, runtime.cache, self.usage
        )
        self.embedder = Embedder(self.triton, self.usage)
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
        check_create(doc, request.HasField("document"), request.content)
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
        check_upload_start(doc, meta.HasField("document"), meta.size_bytes)

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
        query = check_search(
            request.query, MODES.get(request.mode), request.top_k,
            dict(request.metadata_filters), request.documents,
        )
        results = await self.searcher.answer(identity, query, _request_id(context))
        return knowledge_pb2.SearchDocumentsResponse(
            mode=MODE_VALUES[query.mode],
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

    async def EmbedTexts(
        self, request: knowledge_pb2.EmbedTextsRequest, context: grpc.aio.ServicerContext
    ) -> knowledge_pb2.EmbedTextsResponse:
        identity = _caller(context)
        embedded = await self.embedder.embed(identity, request.texts, _request_id(context))
        return knowledge_pb2.EmbedTextsResponse(
            embeddings=[
                knowledge_pb2.TextEmbedding(values=vector.tolist(), token_count=n)
                for vector, n in zip(embedded.vectors, embedded.token_counts, strict=True)
            ],
            model=EMBEDDING_MODEL_ID,
            total_tokens=sum(embedded.token_counts),
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
