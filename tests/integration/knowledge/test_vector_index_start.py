"""A Knowledge whose vector index is not open yet answers a search UNAVAILABLE (retryable), and
searches once the index opens.

A fresh CI run's knowledge bench searched a just-restarted Knowledge before its background start
had opened the vector index: the search looked a method up on the unopened client and the caller
got INTERNAL. Here a file stands where the index's folder belongs, so Knowledge's start keeps
failing to open it (its readiness stays NOT_SERVING) until the test removes that file."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from aimesh.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc

from scripts.stack import Stack
from services.common.channels import open_channel
from services.common.errors import error_info, status_from_rpc_error
from tests.integration.knowledge.conftest import new_org
from tests.support.mesh import TestMesh, private_addresses


@pytest.fixture
def private_stack(knowledge: TestMesh) -> Iterator[Stack]:
    """A Knowledge of its own (its own var dir, so its own Milvus Lite file), not yet started."""
    var = knowledge.var_dir / f"knowledge-start-{time.monotonic_ns()}"
    stack = Stack.create(
        {**private_addresses(var), "AIMESH_TLS_MODE": knowledge.settings.tls_mode,
         "AIMESH_TRITON_URL": knowledge.settings.triton_url,
         "AIMESH_KNOWLEDGE_BLOB_DIR": str(var / "blobs")},
        log_dir=knowledge.stack.log_dir / var.name,
    )
    try:
        yield stack
    finally:
        stack.stop_all()


async def test_a_search_before_the_vector_index_opens_is_unavailable(
    private_stack: Stack,
) -> None:
    settings = private_stack.settings
    blocker = Path(settings.var_dir) / "knowledge"  # the Milvus Lite file's folder
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    private_stack.start_service("knowledge")
    channel = open_channel(settings, "knowledge", caller="gateway")
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    metadata = (("x-aimesh-org", new_org()), ("x-aimesh-subject", "users/tester"),
                ("x-aimesh-roles", "member"))
    request = knowledge_pb2.SearchDocumentsRequest(query="vector index start", top_k=5)
    try:
        deadline = time.monotonic() + 120
        while True:  # until Knowledge itself answers (not a refused connection)
            assert time.monotonic() < deadline, "Knowledge never answered"
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.SearchDocuments(request, metadata=metadata, timeout=30)
            error = raised.value
            status = status_from_rpc_error(error)
            if status is not None or error.code() != grpc.StatusCode.UNAVAILABLE:
                break
            await asyncio.sleep(0.2)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
        info = error_info(status) if status else None
        assert info is not None and info.reason == "VECTOR_INDEX_UNAVAILABLE", error.details()

        blocker.unlink()  # Knowledge's start, retrying, opens the index and becomes ready
        private_stack.wait_ready(["knowledge"], timeout=120)
        reply = await stub.SearchDocuments(request, metadata=metadata, timeout=30)
        assert list(reply.results) == []  # a new organization: nothing to find, no error
    finally:
        await channel.close()
