"""Automatic retrieval remembers that an organization has no documents (the Orchestrator does not
ask Knowledge on every chat), and Knowledge's announcement of a change ends that at once: a first
document is used by the very next answer after it is READY, and deleting the last one stops
grounding."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
from aimesh.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from aimesh.orchestrator.v1 import orchestrator_pb2 as pb
from aimesh.orchestrator.v1 import orchestrator_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.chat.conftest import ChatStack
from tests.support.mesh import TestMesh

DOCUMENT = (b"Harbor lighthouse facts.\n\nThe lighthouse lamp is switched on thirty minutes "
            b"before sunset. Spare bulbs are kept in the iron cabinet on the second landing.\n")
QUESTION = "Where are the spare bulbs kept?"


def _identity(org: str) -> tuple[tuple[str, str], ...]:
    return (("x-aimesh-org", org), ("x-aimesh-subject", "users/grounding-test"),
            ("x-aimesh-roles", "owner"))


async def _generate(chat: ChatStack, org: str) -> pb.Completion:
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chat.orchestrator)
    request = pb.GenerateRequest(model="models/grounded-extractive-v1", messages=[
        pb.ChatMessage(role=pb.ROLE_USER, content=QUESTION)])
    events = [e async for e in stub.Generate(request, metadata=_identity(org), timeout=60)]
    assert events[-1].HasField("completion"), events[-1]
    return events[-1].completion


async def _list_documents_calls(mesh: TestMesh) -> float:
    """ListDocuments calls Knowledge has served so far (its Prometheus endpoint)."""
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"http://{mesh.settings.metrics_address_of('knowledge')}/metrics")
    reply.raise_for_status()
    return sum(
        sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
        if sample.name == "rpc_server_call_duration_seconds_count"
        and sample.labels.get("rpc_method") == "ListDocuments"
    )


async def _upload(mesh: TestMesh, org: str) -> str:
    """A document created directly at Knowledge, once READY: its name."""
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(mesh.channel("knowledge"))
    doc = await stub.CreateDocument(knowledge_pb2.CreateDocumentRequest(
        document=knowledge_pb2.Document(display_name="lighthouse", mime_type="text/plain"),
        content=DOCUMENT), metadata=_identity(org), timeout=30)
    deadline = time.monotonic() + 180
    while doc.state == knowledge_pb2.Document.STATE_PROCESSING:
        assert time.monotonic() < deadline, "document still PROCESSING after 180 s"
        await asyncio.sleep(0.1)
        doc = await stub.GetDocument(knowledge_pb2.GetDocumentRequest(name=doc.name),
                                     metadata=_identity(org), timeout=10)
    assert doc.state == knowledge_pb2.Document.STATE_READY, doc
    return doc.name


async def test_no_documents_is_remembered_until_knowledge_announces_a_change(
    chat: ChatStack, mesh: TestMesh
) -> None:
    org = f"organizations/gc-{uuid.uuid4().hex[:12]}"
    before = await _list_documents_calls(mesh)
    assert not (await _generate(chat, org)).citations  # nothing to ground on
    asked = await _list_documents_calls(mesh)
    assert asked > before, "the Orchestrator did not reach Knowledge"
    for _ in range(3):
        assert not (await _generate(chat, org)).citations
    assert await _list_documents_calls(mesh) == asked, "the 'no documents' answer was not kept"

    document = await _upload(mesh, org)
    # The very next answer is grounded: the READY announcement dropped the remembered "no".
    completion = await _generate(chat, org)
    assert [c.document for c in completion.citations][:1] == [document], completion

    stub = knowledge_pb2_grpc.KnowledgeServiceStub(mesh.channel("knowledge"))
    await stub.DeleteDocument(knowledge_pb2.DeleteDocumentRequest(name=document),
                              metadata=_identity(org), timeout=30)
    # The deletion was announced too: the remembered "yes" is dropped and Knowledge asked again.
    asked = await _list_documents_calls(mesh)
    assert not (await _generate(chat, org)).citations
    assert await _list_documents_calls(mesh) > asked
