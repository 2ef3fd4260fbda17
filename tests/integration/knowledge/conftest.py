"""Fixtures for the Knowledge tests: the service (with Triton for embeddings) and a caller per org."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from aimesh.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc

from services.common.errors import field_violations, status_from_rpc_error
from services.common.triton import EMBEDDING_MODEL, TritonClient
from tests.support.mesh import TestMesh

Doc = knowledge_pb2.Document


class Caller:
    """A KnowledgeService stub bound to one organization's identity headers."""

    def __init__(self, mesh: TestMesh, org: str, role: str = "member") -> None:
        self.mesh = mesh
        self.org = org
        self.metadata = (("x-aimesh-org", org), ("x-aimesh-subject", "users/tester"), ("x-aimesh-roles", role))

    @property
    def stub(self) -> knowledge_pb2_grpc.KnowledgeServiceStub:
        # A fresh stub each time: the mesh may have restarted the service (the channel reconnects).
        return knowledge_pb2_grpc.KnowledgeServiceStub(self.mesh.channel("knowledge"))

    async def create(self, content: bytes, mime_type: str = "text/plain", display_name: str = "doc",
                     document_id: str = "", metadata: dict[str, str] | None = None,
                     request_id: str = "") -> knowledge_pb2.Document:
        return await self.stub.CreateDocument(
            knowledge_pb2.CreateDocumentRequest(
                document=knowledge_pb2.Document(display_name=display_name, mime_type=mime_type, metadata=metadata or {}),
                content=content, document_id=document_id, request_id=request_id,
            ),
            metadata=self.metadata, timeout=30,
        )

    async def get(self, name: str) -> knowledge_pb2.Document:
        return await self.stub.GetDocument(knowledge_pb2.GetDocumentRequest(name=name), metadata=self.metadata, timeout=10)

    async def delete(self, name: str) -> None:
        await self.stub.DeleteDocument(knowledge_pb2.DeleteDocumentRequest(name=name), metadata=self.metadata, timeout=30)

    async def search(self, query: str, mode: int = knowledge_pb2.SEARCH_MODE_HYBRID, top_k: int = 10,
                     **kw: object) -> list[knowledge_pb2.SearchResult]:
        response = await self.stub.SearchDocuments(
            knowledge_pb2.SearchDocumentsRequest(query=query, mode=mode, top_k=top_k, **kw),  # type: ignore[arg-type]
            metadata=self.metadata, timeout=30,
        )
        return list(response.results)

    async def wait_done(self, name: str, timeout: float = 180.0) -> knowledge_pb2.Document:
        """Polls until the document leaves PROCESSING (tolerates a service restart meanwhile)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                doc = await self.get(name)
                if doc.state != Doc.STATE_PROCESSING:
                    return doc
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} still PROCESSING after {timeout}s")
            await asyncio.sleep(0.3)


def new_org() -> str:
    return f"organizations/kt-{uuid.uuid4().hex[:12]}"


async def expect_error(awaitable: object, code: grpc.StatusCode) -> list[tuple[str, str]]:
    """Awaits, asserts the call failed with `code`, returns the BadRequest field violations."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable  # type: ignore[misc]
    assert info.value.code() == code, f"{info.value.code()}: {info.value.details()}"
    status = status_from_rpc_error(info.value)
    return field_violations(status) if status else []


@pytest.fixture(scope="session")
async def knowledge(mesh: TestMesh) -> AsyncIterator[TestMesh]:
    url = mesh.ensure_triton()
    # A shared Triton may be (re)loading its models: wait for the embedding model itself.
    async with TritonClient(url) as triton:
        await triton.wait_until_ready([EMBEDDING_MODEL], timeout=300)
    mesh.ensure("knowledge")
    yield mesh


@pytest.fixture
async def caller(knowledge: TestMesh) -> Caller:
    return Caller(knowledge, new_org())
