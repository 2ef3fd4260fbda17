"""Knowledge's parts without the gRPC service: chunking and extraction rules, fusion math, the
OpenSearch adapter's wire shapes, and one keyword-index contract run against PostgreSQL and (when
one is reachable) OpenSearch."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.config import Settings
from services.common.db import Database
from services.knowledge import keyword_index as kw
from services.knowledge.chunking import (
    MAX_CHUNK_CHARS,
    MODEL_MAX_TOKENS,
    chunk_document,
    count_tokens,
)
from services.knowledge.extract import Extracted, ExtractionError, Section, extract, sniff
from services.knowledge.search import rrf
from services.knowledge.store import DocumentRow, Store
from tests.integration.knowledge.pdfs import make_pdf

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "knowledge" / "migrations"


def test_rrf_sums_reciprocal_ranks() -> None:
    fused = rrf({"semantic": ["a", "b", "c"], "keyword": ["c", "d"]})
    scores = {item: score for item, score, _ in fused}
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["a"] == pytest.approx(1 / 61)
    assert [item for item, *_ in fused][:2] == ["c", "a"]
    assert dict(fused[0][2]) == {"semantic": 3, "keyword": 1}


def test_chunks_fit_the_model_overlap_and_keep_offsets() -> None:
    words = " ".join(f"word{i} alpha beta gamma." for i in range(600))
    text = "Intro\n\n" + words
    extracted = Extracted(text, [Section(0, len(text), ["Guide", "Setup"])])
    chunks = chunk_document(extracted, max_tokens=120, overlap_tokens=30)
    assert len(chunks) > 5
    counts = count_tokens([c.embedding_input() for c in chunks])
    assert max(counts) <= MODEL_MAX_TOKENS
    for previous, chunk in zip(chunks, chunks[1:]):
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.start < previous.end, "consecutive chunks overlap"
        assert chunk.start > previous.start, "and always move forward"
        assert chunk.heading_path == ("Guide", "Setup")
    assert chunks[-1].end == len(text)


def test_unbroken_input_is_capped_in_characters_and_tokens() -> None:
    blob = "Zq" * 20_000  # one enormous "word"
    chunks = chunk_document(Extracted(blob, [Section(0, len(blob))]))
    assert all(len(c.text) <= MAX_CHUNK_CHARS for c in chunks)
    assert max(count_tokens([c.embedding_input() for c in chunks])) <= MODEL_MAX_TOKENS
    assert chunks[-1].end == len(blob)


def test_extraction_keeps_headings_and_drops_markup() -> None:
    md = extract("text/markdown", b"# A\n\ntext **bold** [link](http://x)\n\n## B\n\n```\ncode()\n```\n")
    assert md.text == "A\n\ntext bold link\n\nB\n\ncode()"
    assert [s.heading_path for s in md.sections] == [["A"], ["A", "B"]]
    html = extract("text/html", b"<h1>T</h1><script>x=1</script><p>one <i>two</i></p><h3>S</h3><p>three</p>")
    assert "x=1" not in html.text and "one two" in html.text
    assert html.sections[-1].heading_path == ["T", "S"]
    pdf = extract("application/pdf", make_pdf([["first page"], ["second page"]], outline=[("One", 0), ("Two", 1)]))
    assert [s.heading_path for s in pdf.sections] == [["One"], ["Two"]]


def test_sniff_names_the_problem() -> None:
    assert sniff("text/plain", b"ok") is None
    assert "UTF-8" in (sniff("text/plain", b"\xff\xfe") or "")
    assert "charset" in (sniff("text/plain; charset=latin-1", b"ok") or "")
    assert "PDF" in (sniff("application/pdf", b"hello") or "")
    with pytest.raises(ExtractionError):
        extract("text/plain", b"   \n ")


# --- OpenSearch wire format (Bulk API, Query DSL, search response) --------------------------------


def test_opensearch_bulk_body_alternates_action_and_source() -> None:
    uid = uuid.uuid4()
    chunks = chunk_document(Extracted("alpha beta", [Section(0, 10, ["H"])]))
    body = kw.bulk_index_body("organizations/o", uid, chunks)
    assert body[0] == {"index": {"_index": kw.OPENSEARCH_INDEX, "_id": f"{uid}-0"}}
    assert body[1] == {"org": "organizations/o", "doc": str(uid), "chunk_index": 0, "text": "alpha beta", "headings": "H"}


def test_opensearch_query_filters_by_org_and_documents() -> None:
    body = kw.search_body("organizations/o", "pump QX-1", 7, ["u1", "u2"], require_all=True)
    assert body["size"] == 7
    query = body["query"]["bool"]
    assert query["must"][0]["multi_match"]["operator"] == "and"
    assert {"term": {"org": "organizations/o"}} in query["filter"]
    assert {"terms": {"doc": ["u1", "u2"]}} in query["filter"]
    assert kw.search_body("o", "q", 1, None)["query"]["bool"]["must"][0]["multi_match"]["operator"] == "or"
    assert kw.delete_query("o", uuid.UUID(int=1))["query"]["bool"]["filter"][1] == {"term": {"doc": str(uuid.UUID(int=1))}}


def test_opensearch_hits_are_parsed_from_the_documented_response() -> None:
    response = {
        "took": 3, "timed_out": False,
        "hits": {"total": {"value": 2, "relation": "eq"}, "max_score": 2.5,
                 "hits": [{"_index": kw.OPENSEARCH_INDEX, "_id": "u-0", "_score": 2.5},
                          {"_index": kw.OPENSEARCH_INDEX, "_id": "u-3", "_score": 1.25}]},
    }
    assert kw.parse_hits(response) == [("u-0", 2.5), ("u-3", 1.25)]
    assert kw.parse_hits({"hits": {"hits": []}}) == []


# --- one contract, every keyword backend ----------------------------------------------------------


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    settings = Settings.from_env()
    db = Database(settings.database_url, "knowledge", 2)
    await db.migrate(MIGRATIONS)
    await db.open()
    try:
        yield Store(db)
    finally:
        await db.close()


async def _opensearch_or_skip() -> kw.OpenSearchKeywordIndex:
    url = Settings.from_env().opensearch_url
    if not url:
        pytest.skip("OpenSearch keyword index not tested: AIMESH_OPENSEARCH_URL is not set (none runs here)")
    index = kw.OpenSearchKeywordIndex(url)
    if not await index.ping():
        await index.close()
        pytest.skip(f"OpenSearch keyword index not tested: {url} is not reachable")
    return index


@pytest.mark.parametrize("backend", ["postgres", "opensearch"])
async def test_keyword_index_contract(backend: str, store: Store) -> None:
    index: kw.KeywordIndex = kw.PostgresKeywordIndex(store) if backend == "postgres" else await _opensearch_or_skip()
    orgs = [f"organizations/kc-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    uids = []
    try:
        for org, text in zip(orgs, ["The Frobnicator manual covers valves.", "The Frobnicator is secret here."]):
            row = await store.insert_document(DocumentRow(
                org=org, document_id="manual", uid=uuid.uuid4(), display_name="m", mime_type="text/plain",
                size_bytes=1, content_sha256="", metadata={}, state="PROCESSING", failure_reason="",
                chunk_count=0, attempts=0, create_time=None, update_time=None,  # type: ignore[arg-type]
            ))
            chunks = chunk_document(Extracted(text, [Section(0, len(text))]))
            await store.upsert_chunks(org, row.uid, chunks)
            await index.index(org, row.uid, chunks)
            await store.mark_ready(row.uid, len(chunks))
            uids.append(row.uid)
        hits = await index.search(orgs[0], "frobnicator", 10, None)
        assert [h[0] for h in hits] == [f"{uids[0]}-0"] and hits[0][1] > 0
        assert await index.search(orgs[0], "frobnicator secret", 10, None, require_all=True) == []
        assert [h[0] for h in await index.search(orgs[0], "frobnicator secret", 10, None)] == [f"{uids[0]}-0"]
        assert await index.search(orgs[0], "frobnicator", 10, [str(uids[1])]) == []
        await index.delete_document(orgs[0], uids[0])
        await store.delete_document(orgs[0], uids[0])
        assert await index.search(orgs[0], "frobnicator", 10, None) == []
        assert [h[0] for h in await index.search(orgs[1], "frobnicator", 10, None)] == [f"{uids[1]}-0"]
    finally:
        for org, uid in zip(orgs, uids):
            await index.delete_document(org, uid)
            await store.delete_document(org, uid)
        await index.close()
