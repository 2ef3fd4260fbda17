"""Knowledge against real PostgreSQL, Redis, Milvus Lite and Triton: each format end to end,
semantic vs keyword vs hybrid, org isolation, delete, bad input, poisoned files, restart."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
from aimesh.knowledge.v1 import knowledge_pb2

from tests.integration.knowledge.conftest import Caller, Doc, expect_error, new_org
from tests.integration.knowledge.pdfs import blank_pdf, encrypted_pdf, make_pdf, poisoned_pdf

SEM, KW, HYB = knowledge_pb2.SEARCH_MODE_SEMANTIC, knowledge_pb2.SEARCH_MODE_KEYWORD, knowledge_pb2.SEARCH_MODE_HYBRID
INVALID = grpc.StatusCode.INVALID_ARGUMENT

TEXT = (
    b"Our bakery opens at seven in the morning. Fresh sourdough loaves come out of the oven "
    b"before eight, and the croissants are laminated by hand every night. The special of the "
    b"week is the Brotzeitkorb, a basket of rye rolls."
)
MARKDOWN = b"""# Gardening handbook

## Watering tomatoes

Tomato plants need deep watering twice a week; shallow daily sprinkling leads to weak roots.
Mulch keeps the soil moist. Ask for the Xylofertil blend at the garden centre.

## Pruning roses

Cut rose canes back in late winter, just above an outward-facing bud.
"""
HTML = b"""<!doctype html><html><head><title>Astronomy</title><style>p{color:red}</style>
<script>var tracking = "ignore me";</script></head><body>
<h1>Night sky guide</h1>
<p>Jupiter is the largest planet in the solar system, a gas giant with a <b>Great Red Spot</b>.</p>
<h2>Telescopes</h2><ul><li>A Dobsonian reflector gives the most aperture per euro.</li>
<li>Observers log sightings in the Quasarbook catalogue.</li></ul></body></html>"""
PDF = make_pdf(
    [
        ["Employee travel policy.", "Flights longer than six hours may be booked in premium economy."],
        ["Expense claims are filed within thirty days.", "Use form TRV-9931 for mileage reimbursement."],
    ],
    outline=[("Travel", 0), ("Expenses", 1)],
)

FORMATS = [
    # (mime type, content, paraphrased question, rare exact term, expected heading)
    ("text/plain", TEXT, "when does the bread shop start its day", "Brotzeitkorb", None),
    ("text/markdown", MARKDOWN, "how often should I irrigate my tomato plants", "Xylofertil", "Watering tomatoes"),
    ("text/html", HTML, "which is the biggest world orbiting our sun", "Quasarbook", "Night sky guide"),
    ("application/pdf", PDF, "how long do I have to submit reimbursement requests", "TRV-9931", "Expenses"),
]


async def test_each_format_is_found_by_paraphrase_and_rare_term(caller: Caller) -> None:
    docs = {}
    for mime, content, *_ in FORMATS:
        doc = await caller.create(content, mime, display_name=f"{mime} sample")
        assert doc.state == Doc.STATE_PROCESSING and doc.size_bytes == len(content)
        docs[mime] = doc.name
    for mime, content, paraphrase, rare, heading in FORMATS:
        done = await caller.wait_done(docs[mime])
        assert done.state == Doc.STATE_READY, f"{mime}: {done.failure_reason}"
        assert done.chunk_count >= 1

        semantic = await caller.search(paraphrase, SEM, top_k=3)
        assert semantic and semantic[0].document == docs[mime], (mime, [r.text[:60] for r in semantic])
        assert semantic[0].semantic_rank == 1 and semantic[0].keyword_rank == 0

        keyword = await caller.search(rare, KW, top_k=3)
        assert [r.document for r in keyword] == [docs[mime]], (mime, rare)
        top = keyword[0]
        assert rare in top.text and top.keyword_rank == 1 and top.score > 0
        assert top.end_offset - top.start_offset == len(top.text)
        assert top.document_display_name == f"{mime} sample"
        if heading:
            assert heading in top.heading_path, (mime, list(top.heading_path))
        hybrid = await caller.search(paraphrase + " " + rare, HYB, top_k=3)
        assert hybrid[0].document == docs[mime]
    # Markup never reaches the index.
    assert not await caller.search("tracking", KW)


# A labeled set where each mode alone misses what the other finds: paraphrases with no word in
# common with their passage (keyword misses), and part numbers among look-alikes (the embedding
# cannot tell them apart, exact match can).
LABELED_DOCS = {
    "pump": "The centrifugal pump moves coolant through the engine block. Replacement part QX-4471-B fits the 2019 model.",
    "valve": "The pressure relief valve opens when the boiler gets too hot. Replacement part QX-4417-D fits the 2019 model.",
    "filter": "The cabin air filter traps pollen and dust before air enters the car. Replacement part QX-7144-B fits the 2019 model.",
    "belt": "The timing belt keeps the camshaft and crankshaft turning together. Replacement part QX-1744-D fits the 2019 model.",
    "battery": "A lithium battery stores electric charge for the starter motor. Replacement part QX-4147-B fits the 2019 model.",
    "wiper": "Windscreen wipers clear rain from the glass so the driver can see. Replacement part QX-7414-D fits the 2019 model.",
}
LABELED_QUERIES = [
    ("what circulates the cooling liquid around the motor", "pump"),
    ("safety device that releases steam when the heater overheats", "valve"),
    ("keeps allergens out of the passenger compartment", "filter"),
    ("synchronises the shafts inside an engine", "belt"),
    ("what gives energy to crank the vehicle", "battery"),
    ("rubber arms that sweep water off the front window", "wiper"),
    ("QX-4417-D", "valve"),
    ("QX-7144-B", "filter"),
    ("QX-1744-D", "belt"),
    ("QX-4147-B", "battery"),
    ("QX-7414-D", "wiper"),
    ("QX-4471-B", "pump"),
]


async def test_hybrid_beats_semantic_and_keyword_alone(caller: Caller) -> None:
    names = {}
    for key, text in LABELED_DOCS.items():
        names[key] = (await caller.create(text.encode(), display_name=key, document_id=f"part-{key}")).name
    for name in names.values():
        assert (await caller.wait_done(name)).state == Doc.STATE_READY
    hits = {SEM: 0, KW: 0, HYB: 0}
    for query, expected in LABELED_QUERIES:
        for mode in hits:
            results = await caller.search(query, mode, top_k=3)
            hits[mode] += bool(results) and results[0].document == names[expected]
    print(f"hit@1 over {len(LABELED_QUERIES)} queries: semantic={hits[SEM]} keyword={hits[KW]} hybrid={hits[HYB]}")
    assert hits[HYB] > hits[SEM] and hits[HYB] > hits[KW], hits


async def test_org_isolation(knowledge: object, caller: Caller) -> None:
    other = Caller(caller.mesh, new_org())
    secret = await other.create(b"The launch code word is Vermilionfalcon.", document_id="secret-plan")
    assert (await other.wait_done(secret.name)).state == Doc.STATE_READY
    mine = await caller.create(b"Public notes about falcons and their nests.", document_id="secret-plan")
    assert (await caller.wait_done(mine.name)).state == Doc.STATE_READY

    for mode in (SEM, KW, HYB):
        results = await caller.search("Vermilionfalcon launch code word", mode)
        assert all("Vermilionfalcon" not in r.text for r in results), mode
        assert {r.document for r in results} <= {mine.name}
    # Same name in both orgs: each sees only its own.
    assert (await caller.get("documents/secret-plan")).content_sha256 == mine.content_sha256
    only_other = await other.create(b"another secret", document_id="other-only")
    await expect_error(caller.get(only_other.name), grpc.StatusCode.NOT_FOUND)
    await caller.delete(only_other.name)  # idempotent no-op for a name it cannot see
    assert (await other.get(only_other.name)).name == only_other.name
    listed = await caller.stub.ListDocuments(knowledge_pb2.ListDocumentsRequest(), metadata=caller.metadata)
    assert [d.name for d in listed.documents] == [mine.name]
    # Naming another org's document in a filter matches nothing (and reveals nothing).
    assert await caller.search("another secret", KW, documents=[only_other.name]) == []
    assert [r.document for r in await caller.search("falcons", KW, documents=[secret.name])] == [mine.name]


async def test_delete_removes_from_search_and_blob_store(caller: Caller) -> None:
    doc = await caller.create(b"Zanzibarite crystals glow faintly in ultraviolet light.", document_id="to-delete")
    assert (await caller.wait_done(doc.name)).state == Doc.STATE_READY
    assert await caller.search("Zanzibarite", KW)
    assert await caller.search("minerals that shine under UV", SEM)  # also fills the cache
    blobs = list(Path(caller.mesh.settings.var_dir, "knowledge", "blobs").rglob("*.blob"))
    await caller.delete(doc.name)
    await caller.delete(doc.name)  # idempotent
    await expect_error(caller.get(doc.name), grpc.StatusCode.NOT_FOUND)
    for mode in (SEM, KW, HYB):
        assert not [r for r in await caller.search("Zanzibarite crystals ultraviolet", mode) if r.document == doc.name]
    after = list(Path(caller.mesh.settings.var_dir, "knowledge", "blobs").rglob("*.blob"))
    assert len(after) == len(blobs) - 1


async def test_cache_is_invalidated_when_the_corpus_changes(caller: Caller) -> None:
    first = await caller.create(b"Notes on the Obsidianwren, a small black bird.")
    assert (await caller.wait_done(first.name)).state == Doc.STATE_READY
    before = await caller.search("Obsidianwren", KW)
    assert [r.document for r in before] == [first.name]
    assert [r.document for r in await caller.search("Obsidianwren", KW)] == [first.name]  # cached
    second = await caller.create(b"The Obsidianwren nests in basalt cliffs.")
    assert (await caller.wait_done(second.name)).state == Doc.STATE_READY
    after = {r.document for r in await caller.search("Obsidianwren", KW)}
    assert after == {first.name, second.name}


async def test_metadata_and_document_filters(caller: Caller) -> None:
    a = await caller.create(b"Quarterly revenue grew in the Nordics region.", metadata={"team": "sales", "year": "2024"})
    b = await caller.create(b"Quarterly revenue shrank in the Alpine region.", metadata={"team": "finance", "year": "2024"})
    for d in (a, b):
        assert (await caller.wait_done(d.name)).state == Doc.STATE_READY
    assert {r.document for r in await caller.search("quarterly revenue", metadata_filters={"team": "sales"})} == {a.name}
    assert {r.document for r in await caller.search("quarterly revenue", metadata_filters={"year": "2024"})} == {a.name, b.name}
    assert await caller.search("quarterly revenue", metadata_filters={"team": "nobody"}) == []
    assert {r.document for r in await caller.search("quarterly revenue", documents=[b.name])} == {b.name}


async def test_bad_input_is_invalid_argument_naming_the_field(caller: Caller) -> None:
    cases = [
        ({"content": b"x", "mime_type": "application/msword"}, "document.mime_type"),
        ({"content": b""}, "content"),
        ({"content": b"\xff\xfe\x00bad"}, "content"),
        ({"content": b"hello", "display_name": ""}, "document.display_name"),
        ({"content": b"hello", "document_id": "Bad_ID"}, "document_id"),
        ({"content": b"hello", "metadata": {"Bad-Key": "v"}}, "document.metadata['Bad-Key']"),
        ({"content": b"just text", "mime_type": "application/pdf"}, "content"),
        ({"content": b"x" * (8 * 1024 * 1024 + 1)}, "content"),
    ]
    for kwargs, field in cases:
        violations = await expect_error(caller.create(**kwargs), INVALID)  # type: ignore[arg-type]
        assert field in [f for f, _ in violations], (kwargs.get("mime_type"), field, violations)
    listed = await caller.stub.ListDocuments(knowledge_pb2.ListDocumentsRequest(), metadata=caller.metadata)
    assert listed.total_size == 0  # nothing half-created

    for request, field in [
        (knowledge_pb2.SearchDocumentsRequest(query="", top_k=5), "query"),
        (knowledge_pb2.SearchDocumentsRequest(query="x", top_k=101), "top_k"),
        (knowledge_pb2.SearchDocumentsRequest(query="x" * 2049), "query"),
        (knowledge_pb2.SearchDocumentsRequest(query="x", documents=["docs/x"]), "documents[0]"),
    ]:
        violations = await expect_error(caller.stub.SearchDocuments(request, metadata=caller.metadata), INVALID)
        assert field in [f for f, _ in violations]
    await expect_error(caller.get("documents/"), INVALID)
    await expect_error(caller.get("documents/nope-" + uuid.uuid4().hex[:8]), grpc.StatusCode.NOT_FOUND)
    await expect_error(
        caller.stub.ListDocuments(knowledge_pb2.ListDocumentsRequest(page_token="garbage!"), metadata=caller.metadata),
        INVALID,
    )
    await expect_error(caller.stub.GetDocument(knowledge_pb2.GetDocumentRequest(name="documents/abcd")),
                       grpc.StatusCode.UNAUTHENTICATED)
    viewer = Caller(caller.mesh, caller.org, role="viewer")
    await expect_error(viewer.create(b"hello"), grpc.StatusCode.PERMISSION_DENIED)


async def test_duplicates_and_request_id_replay(caller: Caller) -> None:
    request_id = str(uuid.uuid4())
    first = await caller.create(b"alpha beta", document_id="dup-doc", request_id=request_id)
    again = await caller.create(b"alpha beta", document_id="dup-doc", request_id=request_id)
    assert again.name == first.name and again.create_time == first.create_time
    await expect_error(caller.create(b"gamma", document_id="dup-doc"), grpc.StatusCode.ALREADY_EXISTS)


async def test_poisoned_and_textless_pdfs_fail_cleanly(caller: Caller) -> None:
    cases = {"poisoned": poisoned_pdf(), "encrypted": encrypted_pdf(), "blank": blank_pdf()}
    names = {k: (await caller.create(v, "application/pdf", display_name=k)).name for k, v in cases.items()}
    reasons = {}
    for key, name in names.items():
        doc = await caller.wait_done(name)
        assert doc.state == Doc.STATE_FAILED and doc.chunk_count == 0, key
        reasons[key] = doc.failure_reason
    assert "encrypted" in reasons["encrypted"]
    assert "text" in reasons["blank"]
    assert reasons["poisoned"]
    # The service is still healthy and the failed documents are not searchable.
    assert not await caller.search("secret text inside", KW)
    listed = await caller.stub.ListDocuments(
        knowledge_pb2.ListDocumentsRequest(state=Doc.STATE_FAILED), metadata=caller.metadata
    )
    assert listed.total_size == 3


async def test_streaming_upload_and_limits(caller: Caller) -> None:
    body = ("Streaming uploads carry the Heliotropic manifest. " * 2000).encode()

    def messages(pieces: list[bytes], first: bool = True):  # type: ignore[no-untyped-def]
        if first:
            yield knowledge_pb2.UploadDocumentRequest(
                metadata=knowledge_pb2.UploadDocumentMetadata(
                    document=knowledge_pb2.Document(display_name="big.txt", mime_type="text/plain; charset=utf-8"),
                    size_bytes=sum(len(p) for p in pieces),
                )
            )
        for piece in pieces:
            yield knowledge_pb2.UploadDocumentRequest(content_chunk=piece)

    pieces = [body[i : i + 30_000] for i in range(0, len(body), 30_000)]
    doc = await caller.stub.UploadDocument(messages(pieces), metadata=caller.metadata, timeout=60)
    assert doc.size_bytes == len(body)
    done = await caller.wait_done(doc.name)
    assert done.state == Doc.STATE_READY and done.chunk_count > 10
    assert (await caller.search("Heliotropic", KW))[0].document == doc.name

    await expect_error(
        caller.stub.UploadDocument(messages([b"x" * (1024 * 1024 + 1)]), metadata=caller.metadata),
        grpc.StatusCode.OUT_OF_RANGE,
    )
    await expect_error(caller.stub.UploadDocument(messages([b"abc"], first=False), metadata=caller.metadata), INVALID)


async def test_list_pagination(caller: Caller) -> None:
    names = [(await caller.create(f"page doc {i}".encode(), document_id=f"page-{i}")).name for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await caller.stub.ListDocuments(
            knowledge_pb2.ListDocumentsRequest(page_size=2, page_token=token), metadata=caller.metadata
        )
        assert page.total_size == 5 and len(page.documents) <= 2
        seen += [d.name for d in page.documents]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(names) and len(seen) == 5
    for name in names:
        await caller.wait_done(name)


async def test_restart_during_ingestion_finishes_without_duplicates(caller: Caller) -> None:
    paragraphs = [f"Section {i}: the Marigoldquartz survey recorded {i * 7} readings at station {i}." for i in range(3000)]
    doc = await caller.create("\n\n".join(paragraphs).encode(), document_id="restart-me")
    await asyncio.sleep(1.0)  # let processing start
    assert (await caller.get(doc.name)).state == Doc.STATE_PROCESSING
    caller.mesh.restart("knowledge")
    done = await caller.wait_done(doc.name, timeout=300)
    assert done.state == Doc.STATE_READY, done.failure_reason
    results = await caller.search("Marigoldquartz", KW, top_k=100)
    indexes = [r.chunk_index for r in results]
    assert len(indexes) == len(set(indexes)) == min(done.chunk_count, 100)
    semantic = await caller.search("survey readings at a station", SEM, top_k=100)
    assert len({r.chunk_id for r in semantic}) == len(semantic) == min(done.chunk_count, 100)


async def test_chunks_embedded_and_searches_are_metered(caller: Caller) -> None:
    import psycopg
    from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

    doc = await caller.create(b"Metering check: the Cobaltlantern lights the harbour at night.")
    done = await caller.wait_done(doc.name)
    assert done.state == Doc.STATE_READY
    await caller.search("Cobaltlantern", KW)
    bare_org = caller.org.removeprefix("organizations/")
    totals: dict[int, int] = {}
    for _ in range(50):  # the outbox insert is a background task
        # A record waits in Knowledge's outbox until drained to Usage (when a Usage runs in this
        # mesh): look in both, one entry per request_id.
        found: dict[str, usage_pb2.UsageRecord] = {}
        async with await psycopg.AsyncConnection.connect(caller.mesh.settings.database_url) as conn:
            cur = await conn.execute("SELECT record FROM knowledge.usage_outbox")
            for (raw,) in await cur.fetchall():
                record = usage_pb2.UsageRecord.FromString(raw)
                if record.organization.endswith(bare_org):
                    found[record.request_id] = record
        usage = caller.mesh.stack.processes.get("usage")
        if usage is not None and usage.alive():
            listed = await usage_pb2_grpc.UsageServiceStub(caller.mesh.channel("usage")).ListUsageRecords(
                usage_pb2.ListUsageRecordsRequest(page_size=1000), metadata=caller.metadata, timeout=10
            )
            found.update({r.request_id: r for r in listed.usage_records})
        totals = {}
        for record in found.values():
            totals[record.resource_type] = totals.get(record.resource_type, 0) + record.quantity_micros
        if len(totals) == 2:
            break
        await asyncio.sleep(0.2)
    assert totals == {
        usage_pb2.RESOURCE_TYPE_CHUNKS_EMBEDDED: done.chunk_count * 1_000_000,
        usage_pb2.RESOURCE_TYPE_SEARCHES: 1_000_000,
    }
