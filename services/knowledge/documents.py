"""Document lifecycle (plain Python): validate uploads, store the raw bytes, record the document,
hand it to the ingestion worker; get, list with keyset pagination, delete from every index."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from services.common.errors import (
    FieldViolations,
    already_exists,
    invalid_argument,
    not_found,
    resource_exhausted,
)
from services.common.names import resource
from services.common.pagination import Page
from services.knowledge.blobs import BlobStore
from services.knowledge.extract import SUPPORTED_TYPES, base_type, sniff
from services.knowledge.ingest import Ingestor
from services.knowledge.keyword_index import KeywordIndex
from services.knowledge.store import DocumentRow, DuplicateDocument, DuplicateRequest, Store
from services.knowledge.vector_index import VectorIndex

MAX_UNARY_BYTES = 8 * 1024 * 1024
MAX_STREAM_BYTES = 64 * 1024 * 1024
MAX_STREAM_PIECE = 1024 * 1024
DOCUMENT_ID = re.compile(r"^[a-z][a-z0-9-]{3,62}$")
METADATA_KEY = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DOCUMENT = resource("knowledge.aimesh.dev/Document")
STATES = ("PROCESSING", "READY", "FAILED")


@dataclass
class NewDocument:
    display_name: str
    mime_type: str
    metadata: dict[str, str] = field(default_factory=dict)
    document_id: str = ""
    request_id: str = ""


def check_new_document(doc: NewDocument, prefix: str, v: FieldViolations) -> None:
    """Every problem with the metadata of an upload, reported against `<prefix>document.*`."""
    v.check(1 <= len(doc.display_name) <= 256 and bool(doc.display_name.strip()),
            f"{prefix}document.display_name", "required, 1-256 characters")
    if not doc.mime_type:
        v.add(f"{prefix}document.mime_type", f"required; one of {', '.join(SUPPORTED_TYPES)}")
    elif base_type(doc.mime_type) not in SUPPORTED_TYPES:
        v.add(f"{prefix}document.mime_type",
              f"unsupported type {base_type(doc.mime_type)!r}; one of {', '.join(SUPPORTED_TYPES)}")
    if len(doc.metadata) > 32:
        v.add(f"{prefix}document.metadata", f"at most 32 entries, got {len(doc.metadata)}")
    for key, value in sorted(doc.metadata.items()):
        if not METADATA_KEY.match(key):
            v.add(f"{prefix}document.metadata[{key!r}]", "key must match [a-z][a-z0-9_]{0,62}")
        if len(value) > 256:
            v.add(f"{prefix}document.metadata[{key!r}]", "value must be at most 256 characters")
    if doc.document_id:
        v.check(bool(DOCUMENT_ID.match(doc.document_id)), f"{prefix}document_id",
                "4-63 characters of [a-z0-9-], starting with a letter")
    v.check(len(doc.request_id) <= 64, f"{prefix}request_id", "at most 64 characters")


class Documents:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        vectors: VectorIndex,
        keywords: KeywordIndex,
        ingestor: Ingestor,
        quota_bytes: int,
        on_corpus_change: Callable[[str], Awaitable[None]],
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.vectors = vectors
        self.keywords = keywords
        self.ingestor = ingestor
        self.quota_bytes = quota_bytes
        self.on_corpus_change = on_corpus_change

    async def replay(self, org: str, request_id: str) -> DocumentRow | None:
        """The document a previous attempt of this request created (AIP-155), if any."""
        return await self.store.get_by_request_id(org, request_id) if request_id else None

    async def create(
        self, org: str, doc: NewDocument, content: bytes, content_field: str
    ) -> DocumentRow:
        """Store and enqueue a fully received upload (its metadata was checked by the caller)."""
        previous = await self.replay(org, doc.request_id)
        if previous is not None:
            return previous
        problem = sniff(doc.mime_type, content) if content else "content is empty"
        if problem:
            raise invalid_argument(
                f"{content_field}: {problem}",
                [(content_field, problem)],
                reason="UNREADABLE_CONTENT" if content else "INVALID_ARGUMENT",
            )
        if await self.store.stored_bytes(org) + len(content) > self.quota_bytes:
            raise resource_exhausted(
                f"the organization's document storage quota ({self.quota_bytes} bytes) is used up",
                reason="STORAGE_QUOTA_EXCEEDED",
                metadata={"quota_bytes": str(self.quota_bytes)},
            )
        uid = uuid.uuid4()
        document_id = doc.document_id or str(uid)
        await self.blobs.put(org, uid, content)
        row = DocumentRow(
            org=org,
            document_id=document_id,
            uid=uid,
            display_name=doc.display_name,
            mime_type=doc.mime_type,
            size_bytes=len(content),
            content_sha256=hashlib.sha256(content).hexdigest(),
            metadata=dict(doc.metadata),
            state="PROCESSING",
            failure_reason="",
            chunk_count=0,
            attempts=0,
            create_time=datetime.min,
            update_time=datetime.min,
            request_id=doc.request_id or None,
        )
        try:
            created = await self.store.insert_document(row)
        except DuplicateDocument:
            await self.blobs.delete(org, uid)
            name = DOCUMENT.format(document_id)
            raise already_exists(
                f"{name} already exists", reason="DOCUMENT_EXISTS", metadata={"document": name}
            ) from None
        except DuplicateRequest:
            await self.blobs.delete(org, uid)
            replayed = await self.replay(org, doc.request_id)
            assert replayed is not None
            return replayed
        except BaseException:
            await self.blobs.delete(org, uid)
            raise
        self.ingestor.submit(org, uid)
        return created

    async def get(self, org: str, name: str) -> DocumentRow:
        document_id = DOCUMENT.id(name, "name")
        row = await self.store.get_document(org, document_id)
        if row is None:
            raise not_found(
                f"{name} not found", reason="DOCUMENT_NOT_FOUND", metadata={"document": name}
            )
        return row

    async def list(
        self, org: str, page: Page, state: str | None
    ) -> tuple[list[DocumentRow], str, int]:
        """One page, newest first; a `page` token checked by services.common.pagination."""
        rows, total = await self.store.list_documents(org, page.size + 1, state, page.cursor)
        rows, token = page.split(rows, lambda r: (r.create_time, r.document_id))
        return rows, token, total

    async def delete(self, org: str, name: str) -> None:
        document_id = DOCUMENT.id(name, "name")
        row = await self.store.get_document(org, document_id)
        if row is None:
            return  # idempotent; says nothing about other organizations
        await self.ingestor.cancel(row.uid)
        # Indexes first: if one is unreachable the call fails and a retry finds the row again.
        await self.vectors.delete_document(org, row.uid)
        await self.keywords.delete_document(org, row.uid)
        await self.store.delete_document(org, row.uid)
        await self.blobs.delete(org, row.uid)
        if row.state == "READY":
            await self.on_corpus_change(org)


def check_create(doc: NewDocument, has_document: bool, content: bytes) -> None:
    """CreateDocument's document (`has_document`: the field was set) and its whole content."""
    v = FieldViolations()
    v.check(has_document, "document", "required")
    check_new_document(doc, "", v)
    check_unary_content(content, v)
    v.raise_if_any()


def check_upload_start(doc: NewDocument, has_document: bool, size_bytes: int) -> None:
    """UploadDocument's first message: the document and the size declared (0: unknown)."""
    v = FieldViolations()
    v.check(has_document, "metadata.document", "required")
    check_new_document(doc, "metadata.", v)
    v.check(
        0 <= size_bytes <= MAX_STREAM_BYTES,
        "metadata.size_bytes",
        f"must be 0-{MAX_STREAM_BYTES} (64 MiB)",
    )
    v.raise_if_any()


def check_unary_content(content: bytes, v: FieldViolations) -> None:
    """CreateDocument carries the whole file: 1 byte to 8 MiB (UploadDocument streams more)."""
    if not content:
        v.add("content", "required: 1 byte to 8 MiB")
    elif len(content) > MAX_UNARY_BYTES:
        v.add(
            "content",
            f"{len(content)} bytes is over the 8 MiB ({MAX_UNARY_BYTES} bytes) limit; "
            "use UploadDocument for up to 64 MiB",
        )


async def collect_stream(pieces: AsyncIterator[bytes], declared: int) -> bytes:
    """Joins the content pieces of an upload stream, enforcing the piece and total limits."""
    from services.common.errors import out_of_range

    buffer = bytearray()
    async for piece in pieces:
        if len(piece) > MAX_STREAM_PIECE:
            raise out_of_range(
                f"content_chunk of {len(piece)} bytes exceeds 1 MiB ({MAX_STREAM_PIECE} bytes)",
                reason="CHUNK_TOO_LARGE",
            )
        if not piece:
            raise invalid_argument("content_chunk is empty", [("content_chunk", "1 byte to 1 MiB")])
        buffer.extend(piece)
        if len(buffer) > MAX_STREAM_BYTES:
            raise out_of_range(
                f"upload exceeds 64 MiB ({MAX_STREAM_BYTES} bytes)", reason="UPLOAD_TOO_LARGE"
            )
    if declared and declared != len(buffer):
        raise invalid_argument(
            f"metadata.size_bytes was {declared} but {len(buffer)} bytes arrived",
            [("metadata.size_bytes", f"declared {declared}, received {len(buffer)}")],
        )
    return bytes(buffer)
