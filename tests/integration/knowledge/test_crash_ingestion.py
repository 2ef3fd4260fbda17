"""Crash mid-ingestion: the Knowledge process (and the Milvus Lite server it started) is
SIGKILLed while a document is PROCESSING, with part of its chunks already written. After the
restart the document reaches READY exactly once, and every store holds each chunk exactly once:
the chunk rows (which carry the PostgreSQL keyword index), the vectors in Milvus (read from the
Milvus Lite file itself), and the usage ledger (one chunks_embedded record)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from uuid import UUID

import psycopg
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

from services.knowledge.vector_index import COLLECTION
from tests.integration.knowledge.conftest import Caller, Doc

# ~370 chunks: a dozen embedding batches of 32, so the kill lands between the first batch's
# writes and READY (with 900 paragraphs, ~110 chunks, all four batches were in flight at once and
# the faster model finished them between two polls).
PARAGRAPHS = 3000


async def _sql(caller: Caller, query: str, *args: object) -> list[tuple]:  # type: ignore[type-arg]
    async with await psycopg.AsyncConnection.connect(caller.mesh.settings.database_url) as conn:
        cur = await conn.execute(query, args)
        return await cur.fetchall()


async def _document_uid(caller: Caller, document_id: str) -> UUID:
    rows = await _sql(
        caller,
        "SELECT uid FROM knowledge.documents WHERE org = %s AND document_id = %s",
        caller.org.removeprefix("organizations/"),
        document_id,
    )
    if not rows:  # the org is stored as sent
        rows = await _sql(
            caller,
            "SELECT uid FROM knowledge.documents WHERE org = %s AND document_id = %s",
            caller.org,
            document_id,
        )
    assert len(rows) == 1, rows
    return rows[0][0]


async def _chunk_rows(caller: Caller, uid: UUID) -> int:
    return (
        await _sql(caller, "SELECT count(*) FROM knowledge.chunks WHERE document_uid = %s", uid)
    )[0][0]


def _milvus_ids(var_dir: Path, uid: UUID) -> list[str]:
    """The vector ids stored for `uid`, read from the Milvus Lite file (Knowledge is stopped)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=str(var_dir / "knowledge" / "milvus.db"))
    try:
        client.load_collection(COLLECTION)
        rows = client.query(COLLECTION, filter=f'doc == "{uid}"', output_fields=["id"], limit=16384)
        return [r["id"] for r in rows]
    finally:
        client.close()


async def test_sigkill_mid_ingestion_reaches_ready_once_without_duplicates(caller: Caller) -> None:
    mesh = caller.mesh
    mesh.ensure("usage")
    paragraphs = [
        f"Part {i}: the Quillmarsh gauge logged {i * 11} litres at weir {i % 37}."
        for i in range(PARAGRAPHS)
    ]
    doc = await caller.create("\n\n".join(paragraphs).encode(), document_id="crash-me")
    uid = await _document_uid(caller, "crash-me")

    # Kill while it is PROCESSING with some, not all, of its chunks written.
    deadline = time.monotonic() + 180
    while await _chunk_rows(caller, uid) == 0:
        assert time.monotonic() < deadline, "ingestion never started writing chunks"
        assert (await caller.get(doc.name)).state == Doc.STATE_PROCESSING
        await asyncio.sleep(0.02)
    assert (await caller.get(doc.name)).state == Doc.STATE_PROCESSING
    written_before_kill = await _chunk_rows(caller, uid)
    mesh.crash("knowledge")
    mesh.ensure("knowledge", timeout=600)

    # The lease of the dead worker expires, the sweeper hands the document out again.
    states: list[int] = []
    deadline = time.monotonic() + 400
    while True:
        current = await caller.get(doc.name)
        if not states or states[-1] != current.state:
            states.append(current.state)
        if current.state != Doc.STATE_PROCESSING:
            break
        assert time.monotonic() < deadline, "still PROCESSING long after the restart"
        await asyncio.sleep(0.3)
    assert states[-1] == Doc.STATE_READY, current.failure_reason
    ready = current
    await asyncio.sleep(2.0)  # READY once: it does not go back to PROCESSING and READY again
    again = await caller.get(doc.name)
    assert (again.state, again.update_time) == (Doc.STATE_READY, ready.update_time)
    assert 0 < written_before_kill < ready.chunk_count, (written_before_kill, ready.chunk_count)

    # Chunk rows (and with them the keyword index): each index once, none missing.
    indexes = [
        r[0]
        for r in await _sql(
            caller,
            "SELECT chunk_index FROM knowledge.chunks WHERE document_uid = %s ORDER BY chunk_index",
            uid,
        )
    ]
    assert indexes == list(range(ready.chunk_count))
    keyword_rows = (
        await _sql(
            caller,
            "SELECT count(*) FROM knowledge.chunks WHERE document_uid = %s "
            "AND tsv @@ plainto_tsquery('english', 'Quillmarsh')",
            uid,
        )
    )[0][0]
    assert keyword_rows == ready.chunk_count

    # Usage: one chunks_embedded record for the document, of its final chunk count.
    stub = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="billing"))
    org_name = (
        caller.org if caller.org.startswith("organizations/") else f"organizations/{caller.org}"
    )
    embedded: list[usage_pb2.UsageRecord] = []
    for _ in range(100):
        page = await stub.ListUsageRecords(
            usage_pb2.ListUsageRecordsRequest(organization=org_name, page_size=1000), timeout=10
        )
        embedded = [
            r
            for r in page.usage_records
            if r.resource_type == usage_pb2.RESOURCE_TYPE_CHUNKS_EMBEDDED
        ]
        if embedded:
            break
        await asyncio.sleep(0.2)
    assert [(r.request_id, r.quantity_micros) for r in embedded] == [
        (f"{uid}/chunks_embedded", ready.chunk_count * 1_000_000)
    ]

    # Vectors: read Milvus itself, with Knowledge gone (Milvus Lite serves one process) - killed
    # again, so the vectors of a READY document must have been durable when it became READY.
    mesh.crash("knowledge")
    try:
        ids = await asyncio.to_thread(_milvus_ids, Path(mesh.settings.var_dir), uid)
    finally:
        mesh.ensure("knowledge", timeout=600)
    assert len(ids) == len(set(ids)) == ready.chunk_count
    assert set(ids) == {f"{uid}-{i}" for i in range(ready.chunk_count)}
