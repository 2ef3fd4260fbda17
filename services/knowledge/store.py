"""Knowledge's SQL (psycopg 3, async): documents, chunk rows and the PostgreSQL keyword index.
The only module that touches the `knowledge` schema."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from services.common.db import Database
from services.knowledge.chunking import Chunk

PROCESSING, READY, FAILED = "PROCESSING", "READY", "FAILED"
# Matching chunks ranked per keyword query stage at most.
KEYWORD_CANDIDATES = 2000


@dataclass
class DocumentRow:
    org: str
    document_id: str
    uid: UUID
    display_name: str
    mime_type: str
    size_bytes: int
    content_sha256: str
    metadata: dict[str, str]
    state: str
    failure_reason: str
    chunk_count: int
    attempts: int
    create_time: datetime
    update_time: datetime
    request_id: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> DocumentRow:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


@dataclass
class ChunkHit:
    chunk_id: str
    document_id: str
    display_name: str
    chunk_index: int
    text: str
    start_offset: int
    end_offset: int
    heading_path: list[str] = field(default_factory=list)


_DOC_COLUMNS = (
    "org, document_id, uid, display_name, mime_type, size_bytes, content_sha256, metadata, state, "
    "failure_reason, chunk_count, attempts, create_time, update_time, request_id"
)


class DuplicateDocument(Exception):
    """(org, document_id) is taken."""


class DuplicateRequest(Exception):
    """(org, request_id) was already used."""


class Store:
    def __init__(self, db: Database, blob_store: str = "") -> None:
        self.db = db
        # Identity of the blob store this process reads: it only processes documents stored there.
        self.blob_store = blob_store

    # --- documents -----------------------------------------------------------------------

    async def insert_document(self, doc: DocumentRow) -> DocumentRow:
        try:
            async with self.db.connection() as conn:
                cur = await conn.execute(
                    f"""INSERT INTO documents (org, document_id, uid, display_name, mime_type,
                           size_bytes, content_sha256, metadata, state, request_id, blob_store)
                        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'PROCESSING', %s, %s)
                        RETURNING {_DOC_COLUMNS}""",
                    (
                        doc.org,
                        doc.document_id,
                        doc.uid,
                        doc.display_name,
                        doc.mime_type,
                        doc.size_bytes,
                        doc.content_sha256,
                        Jsonb(doc.metadata),
                        doc.request_id,
                        self.blob_store,
                    ),
                )
                row = await cur.fetchone()
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "documents_request_id":
                raise DuplicateRequest() from None
            raise DuplicateDocument() from None
        assert row is not None
        return DocumentRow.from_row(row)

    async def get_document(self, org: str, document_id: str) -> DocumentRow | None:
        return await self._one_document("document_id", org, document_id)

    async def get_by_request_id(self, org: str, request_id: str) -> DocumentRow | None:
        return await self._one_document("request_id", org, request_id)

    async def _one_document(self, column: str, org: str, value: str) -> DocumentRow | None:
        assert column in ("document_id", "request_id")
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_DOC_COLUMNS} FROM documents WHERE org = %s AND {column} = %s",
                (org, value),
            )
            row = await cur.fetchone()
        return DocumentRow.from_row(row) if row else None

    async def stored_bytes(self, org: str) -> int:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT coalesce(sum(size_bytes), 0) AS total FROM documents WHERE org = %s", (org,)
            )
            row = await cur.fetchone()
        return int(row["total"]) if row else 0

    async def list_documents(
        self, org: str, limit: int, state: str | None, after: tuple[datetime, str] | None
    ) -> tuple[list[DocumentRow], int]:
        conditions = ["org = %(org)s"]
        params: dict[str, Any] = {"org": org, "limit": limit}
        if state:
            conditions.append("state = %(state)s")
            params["state"] = state
        where = " AND ".join(conditions)
        page_where = where
        if after:
            page_where += " AND (create_time, document_id) < (%(t)s, %(id)s)"
            params.update(t=after[0], id=after[1])
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"""SELECT {_DOC_COLUMNS} FROM documents WHERE {page_where}
                    ORDER BY create_time DESC, document_id DESC LIMIT %(limit)s""",
                params,
            )
            rows = await cur.fetchall()
            cur = await conn.execute(f"SELECT count(*) AS n FROM documents WHERE {where}", params)
            total = await cur.fetchone()
        return [DocumentRow.from_row(r) for r in rows], int(total["n"]) if total else 0

    async def delete_document(self, org: str, uid: UUID) -> bool:
        """Deletes the row (its chunk rows cascade, which also empties the PG keyword index)."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM documents WHERE org = %s AND uid = %s", (org, uid)
            )
            return cur.rowcount > 0

    async def resolve_documents(
        self, org: str, document_ids: Sequence[str] | None, metadata: dict[str, str] | None
    ) -> list[str]:
        """Uids of the org's READY documents matching the id list and/or metadata filters."""
        conditions = ["org = %(org)s", "state = 'READY'"]
        params: dict[str, Any] = {"org": org}
        if document_ids is not None:
            conditions.append("document_id = ANY(%(ids)s)")
            params["ids"] = list(document_ids)
        if metadata:
            conditions.append("metadata @> %(meta)s")
            params["meta"] = Jsonb(metadata)
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"SELECT uid FROM documents WHERE {' AND '.join(conditions)}", params
            )
            return [str(r["uid"]) for r in await cur.fetchall()]

    # --- processing leases ---------------------------------------------------------------

    async def claim(self, org: str, uid: UUID, lease_seconds: float) -> DocumentRow | None:
        """Take the document for processing if it is PROCESSING and nobody holds a live lease."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"""UPDATE documents SET lease_until = now() + make_interval(secs => %s),
                           attempts = attempts + 1, update_time = now()
                    WHERE org = %s AND uid = %s AND state = 'PROCESSING' AND blob_store = %s
                      AND (lease_until IS NULL OR lease_until < now())
                    RETURNING {_DOC_COLUMNS}""",
                (lease_seconds, org, uid, self.blob_store),
            )
            row = await cur.fetchone()
        return DocumentRow.from_row(row) if row else None

    async def renew(self, uid: UUID, lease_seconds: float) -> bool:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                """UPDATE documents SET lease_until = now() + make_interval(secs => %s)
                   WHERE uid = %s AND state = 'PROCESSING'""",
                (lease_seconds, uid),
            )
            return cur.rowcount > 0

    async def release(self, uid: UUID) -> None:
        """Give the document back (shutdown, transient failure) so a worker retries it."""
        async with self.db.connection() as conn:
            await conn.execute(
                "UPDATE documents SET lease_until = NULL WHERE uid = %s AND state = 'PROCESSING'",
                (uid,),
            )

    async def claimable(self, limit: int = 100) -> list[tuple[str, UUID]]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                """SELECT org, uid FROM documents
                   WHERE state = 'PROCESSING' AND blob_store = %s
                     AND (lease_until IS NULL OR lease_until < now())
                   ORDER BY create_time LIMIT %s""",
                (self.blob_store, limit),
            )
            return [(r["org"], r["uid"]) for r in await cur.fetchall()]

    async def mark_ready(
        self, uid: UUID, chunk_count: int, also: Callable[[Any], Awaitable[None]] | None = None
    ) -> bool:
        """PROCESSING -> READY; `also(conn)` runs in the same transaction when the row changed
        (the usage record of the work commits with it, or neither does)."""
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                """UPDATE documents SET state = 'READY', chunk_count = %s, lease_until = NULL,
                          update_time = now()
                   WHERE uid = %s AND state = 'PROCESSING'""",
                (chunk_count, uid),
            )
            if cur.rowcount > 0 and also is not None:
                await also(conn)
            return cur.rowcount > 0

    async def mark_failed(self, uid: UUID, reason: str) -> bool:
        async with self.db.connection() as conn:
            await conn.execute("DELETE FROM chunks WHERE document_uid = %s", (uid,))
            cur = await conn.execute(
                """UPDATE documents SET state = 'FAILED', failure_reason = %s, chunk_count = 0,
                          lease_until = NULL, update_time = now()
                   WHERE uid = %s AND state = 'PROCESSING'""",
                (reason[:500], uid),
            )
            return cur.rowcount > 0

    # --- chunks --------------------------------------------------------------------------

    async def delete_chunks(self, uid: UUID) -> None:
        async with self.db.connection() as conn:
            await conn.execute("DELETE FROM chunks WHERE document_uid = %s", (uid,))

    async def upsert_chunks(self, org: str, uid: UUID, chunks: Sequence[Chunk]) -> None:
        """Idempotent: a chunk id is `<uid>-<index>`, so a retried batch overwrites itself."""
        async with self.db.connection() as conn:
            async with conn.cursor() as cur:
                await cur.executemany(
                    """INSERT INTO chunks (chunk_id, org, document_uid, chunk_index, text,
                                           start_offset, end_offset, heading_path, headings)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
                       ON CONFLICT (chunk_id) DO UPDATE SET text = EXCLUDED.text,
                           start_offset = EXCLUDED.start_offset, end_offset = EXCLUDED.end_offset,
                           heading_path = EXCLUDED.heading_path, headings = EXCLUDED.headings""",
                    [
                        (
                            chunk_id(uid, c.index),
                            org,
                            uid,
                            c.index,
                            c.text,
                            c.start,
                            c.end,
                            list(c.heading_path),
                            " ".join(c.heading_path),
                        )
                        for c in chunks
                    ],
                )

    async def hydrate(self, org: str, chunk_ids: Sequence[str]) -> dict[str, ChunkHit]:
        """Chunk rows of READY documents of `org` (anything else is silently dropped)."""
        if not chunk_ids:
            return {}
        async with self.db.connection() as conn:
            cur = await conn.execute(
                """SELECT c.chunk_id, d.document_id, d.display_name, c.chunk_index, c.text,
                          c.start_offset, c.end_offset, c.heading_path
                   FROM chunks c JOIN documents d ON d.uid = c.document_uid
                   WHERE c.chunk_id = ANY(%s) AND c.org = %s AND d.org = %s
                     AND d.state = 'READY'""",
                (list(chunk_ids), org, org),
            )
            rows = await cur.fetchall()
        return {r["chunk_id"]: ChunkHit(**r) for r in rows}

    async def keyword_search(
        self, org: str, query: str, limit: int, doc_uids: Sequence[str] | None, require_all: bool
    ) -> list[tuple[str, float]]:
        """PostgreSQL full-text search: chunks with all terms first (precise); unless
        `require_all`, chunks with any term fill up the rest."""
        scope = "c.org = %(org)s AND d.state = 'READY'"
        params: dict[str, Any] = {"org": org, "q": query, "limit": limit}
        if doc_uids is not None:
            scope += " AND c.document_uid = ANY(%(uids)s::uuid[])"
            params["uids"] = list(doc_uids)
        results: list[tuple[str, float]] = []
        async with self.db.connection() as conn:
            for tsquery in (
                "websearch_to_tsquery('english', %(q)s)",
                # Any term: the AND query's lexemes joined by OR (negations dropped).
                "coalesce(nullif(replace(replace("
                "plainto_tsquery('english', %(q)s)::text, ' & ', ' | '), '!', ''), '')::tsquery, "
                "''::tsquery)",
            ):
                seen = [r[0] for r in results]
                # Ranking reads every matching tsvector: cap the candidates so a query made of
                # very common words stays fast (its ranking is then over the first matches).
                cur = await conn.execute(
                    f"""SELECT m.chunk_id, ts_rank_cd(m.tsv, m.query, 1) AS score
                        FROM (SELECT c.chunk_id, c.tsv, q.query
                              FROM (SELECT {tsquery} AS query) q, chunks c
                              JOIN documents d ON d.uid = c.document_uid
                              WHERE {scope} AND c.tsv @@ q.query
                                AND NOT (c.chunk_id = ANY(%(seen)s))
                              LIMIT {KEYWORD_CANDIDATES}) m
                        ORDER BY score DESC, m.chunk_id LIMIT %(limit)s""",
                    {**params, "seen": seen, "limit": limit - len(results)},
                    # Never a server-side prepared statement: a generic plan cannot see how
                    # selective this query's terms are and may scan the org's whole corpus.
                    prepare=False,
                )
                results.extend((r["chunk_id"], float(r["score"])) for r in await cur.fetchall())
                if len(results) >= limit or require_all:
                    break
        return results


def chunk_id(uid: UUID | str, index: int) -> str:
    return f"{uid}-{index}"


async def purge_org(store: Store, org: str) -> int:
    """Deletes every document (and, by cascade, chunk row) of `org`; for benchmarks and tools."""
    async with store.db.connection() as conn:
        cur = await conn.execute("DELETE FROM documents WHERE org = %s", (org,))
        return cur.rowcount


async def bulk_load(
    store: Store, org: str, docs: list[tuple[UUID, str]], rows: list[tuple[str, UUID, int, str]]
) -> None:
    """Fast load of READY documents and their chunk rows with COPY (benchmarks: 100k chunks).
    docs: (uid, document_id); rows: (chunk_id, document uid, chunk index, text)."""
    async with store.db.connection() as conn:
        async with conn.cursor() as cur:
            async with cur.copy(
                "COPY documents (org, document_id, uid, display_name, mime_type, size_bytes, "
                "content_sha256, state) FROM STDIN"
            ) as copy:
                for uid, document_id in docs:
                    await copy.write_row(
                        (org, document_id, uid, document_id, "text/plain", 0, "", "READY")
                    )
            async with cur.copy(
                "COPY chunks (chunk_id, org, document_uid, chunk_index, text, start_offset, "
                "end_offset) FROM STDIN"
            ) as copy:
                for cid, uid, index, text in rows:
                    await copy.write_row((cid, org, uid, index, text, 0, len(text)))
