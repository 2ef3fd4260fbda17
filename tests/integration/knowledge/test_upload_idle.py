"""Issue 12 item 9: an UploadDocument stream that goes quiet (here: only metadata, then nothing)
is ended by the service with OUT_OF_RANGE / STREAM_IDLE_TIMEOUT, as StreamingRecognize is —
it does not stay open until the client gives up, and nothing is stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from aimesh.knowledge.v1 import knowledge_pb2

from services.common.errors import error_info, status_from_rpc_error
from services.common.streams import CLIENT_STREAM_IDLE_SECONDS
from tests.integration.knowledge.conftest import Caller


async def test_upload_that_sends_only_metadata_is_ended_by_the_idle_limit(caller: Caller) -> None:
    finished = asyncio.Event()

    async def metadata_then_silence() -> AsyncIterator[knowledge_pb2.UploadDocumentRequest]:
        yield knowledge_pb2.UploadDocumentRequest(metadata=knowledge_pb2.UploadDocumentMetadata(
            document=knowledge_pb2.Document(display_name="quiet.txt", mime_type="text/plain")))
        await finished.wait()  # never sends content, never half-closes on its own

    # The client's own deadline is far beyond the service's idle limit: only the service ends it.
    call = caller.stub.UploadDocument(metadata_then_silence(), metadata=caller.metadata,
                                      timeout=CLIENT_STREAM_IDLE_SECONDS * 4)
    try:
        await call
        raise AssertionError("an idle upload was accepted")
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.OUT_OF_RANGE, (error.code(), error.details())
        status = status_from_rpc_error(error)
        assert status is not None and error_info(status).reason == "STREAM_IDLE_TIMEOUT"  # type: ignore[union-attr]
    finally:
        finished.set()
    listed = await caller.stub.ListDocuments(knowledge_pb2.ListDocumentsRequest(),
                                             metadata=caller.metadata, timeout=10)
    assert not listed.documents
