"""Knowledge benchmark on real text with real embeddings, as users reach it.

    .venv/bin/python -m bench.knowledge [--ingest-chunks 1500] [--search-chunks 10000]
                                        [--queries 40] [--pdf-docs 6] [--quality-chunks 600]

Starts its own mesh (Auth, Usage, Knowledge, the Envoy gateway) on free ports, signs up an
organization with an API key, and measures:

1. Ingestion end to end: plain-text documents (docstrings of installed packages, a real corpus
   available offline) uploaded through the gateway (gRPC, API key) until Knowledge reports every
   one READY — extraction subprocess, chunking, Triton embeddings, PostgreSQL + Milvus Lite
   writes. Triton's statistics API gives the batches its model executed (batch sizes seen) and
   the same chunks embedded directly give the model's own rate in the same run.
2. PDF parsing alone (the isolated extraction Knowledge runs), on PDFs of the same real text.
3. Search at 10k chunks of that real text: the same hybrid queries in-process (Knowledge's own
   Searcher, no network), through gRPC to Knowledge, and through the gateway as gRPC and JSON;
   the overheads printed as ratios. Embedding 10k chunks takes minutes on 2 cores, so the 10k
   chunk vectors are computed once (through Triton) and cached under var/bench/knowledge/, keyed
   by the chunk texts and the model (weights, derivation recipe, Triton config); each run loads
   them into a fresh index. The output says when the cache was used.
4. The int8 embedding model against its fp32 source: cosine on real chunks, neighbour agreement
   on real queries, and recall on a labeled set.

Every search query is distinct, so Knowledge's search cache never answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from aimesh.knowledge.v1 import knowledge_pb2 as kpb
from aimesh.knowledge.v1 import knowledge_pb2_grpc

from bench.accounts import bench_account
from bench.knowledge.corpus import (
    ITEMS,
    Document,
    corpus_queries,
    item_text,
    queries,
    real_documents,
)
from bench.report import print_load, verdict
from bench.scratch import scratch_dir
from scripts import triton_server as launcher
from scripts.stack import Stack
from services.common.channels import open_channel
from services.common.config import REPO_ROOT, Settings
from services.common.db import Database
from services.common.triton import EMBEDDING_MODEL, TritonClient
from services.knowledge.chunking import Chunk, chunk_document
from services.knowledge.extract import extract_file, extract_text, run_isolated
from services.knowledge.keyword_index import PostgresKeywordIndex
from services.knowledge.search import HYBRID, KEYWORD, SEMANTIC, Searcher
from services.knowledge.store import Store, bulk_load, chunk_id, purge_org
from services.knowledge.vector_index import VectorIndex
from tests.integration.knowledge.pdfs import make_pdf
from tests.support.mesh import free_port, private_addresses

MIGRATIONS = REPO_ROOT / "services" / "knowledge" / "migrations"
MODEL_DIR = REPO_ROOT / "triton" / "models" / EMBEDDING_MODEL
CACHE_DIR = REPO_ROOT / "var" / "bench" / "knowledge"
TARGET_CHUNKS_PER_SECOND = 100
TARGET_HYBRID_P95_MS = 60.0


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --- the embedding model: Triton, its statistics, the in-process copies ----------------------


@dataclass
class TritonEndpoint:
    grpc_url: str
    http_url: str

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.http_url}/v2/models/{EMBEDDING_MODEL}/stats", timeout=5) as r:
            return dict(json.load(r)["model_stats"][0])

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/models/{EMBEDDING_MODEL}/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False


def batch_summary(before: dict[str, Any], after: dict[str, Any]) -> tuple[int, int, dict[int, int]]:
    """(texts, executions, {batch size: executions}) between two statistics snapshots."""
    def sizes(stats: dict[str, Any]) -> dict[int, int]:
        return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}

    old, new = sizes(before), sizes(after)
    seen = {size: count - old.get(size, 0) for size, count in sorted(new.items()) if count > old.get(size, 0)}
    return (int(after["inference_count"]) - int(before["inference_count"]),
            int(after["execution_count"]) - int(before["execution_count"]), seen)


@contextlib.contextmanager
def embedding_triton(settings: Settings, workdir: Path, shared: bool) -> Iterator[TritonEndpoint]:
    """A private Triton on free ports serving only text_embedding from this tree (a shared one
    may be restarted by others mid-run), or with `shared` the configured one when it is ready."""
    host, _, port = settings.triton_url.rpartition(":")
    configured = TritonEndpoint(settings.triton_url, f"http://{host}:{int(port) - 1}")
    if shared and configured.ready():
        yield configured
        return
    repository = workdir / "models"
    repository.mkdir()
    (repository / EMBEDDING_MODEL).symlink_to(MODEL_DIR)
    ports = launcher.TritonPorts(grpc=free_port(), http=free_port(), metrics=free_port())
    print(f"(starting a private Triton with only {EMBEDDING_MODEL} on :{ports.grpc})")
    process = launcher.start(repository, ports, work_dir=workdir / "triton")
    try:
        yield TritonEndpoint(f"127.0.0.1:{ports.grpc}", f"http://127.0.0.1:{ports.http}")
    finally:
        launcher.stop(process)


def load_derive() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("text_embedding_derive", MODEL_DIR / "1" / "derive.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def local_encoder(precision: str) -> Any:
    """The model's Encoder class on a derived copy, in this process (2 threads)."""
    import importlib.util
    import types

    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("text_embedding_model", MODEL_DIR / "1" / "model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Encoder(str(load_derive().model_path(precision)), threads=2)


def model_fingerprint() -> str:
    """The served model: weights + derivation recipe (derive.py's key) + Triton config + code."""
    digest = hashlib.sha256(load_derive().derivation_key().encode())
    for name in ("config.pbtxt", "1/model.py"):
        digest.update((MODEL_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


# --- corpus ------------------------------------------------------------------------------------


def chunked(limit: int) -> list[tuple[Document, list[Chunk]]]:
    """Real documents, chunked as Knowledge chunks them, until `limit` chunks (whole documents)."""
    out: list[tuple[Document, list[Chunk]]] = []
    total = 0
    for doc in real_documents():
        chunks = chunk_document(extract_text(doc.text.encode()))
        out.append((doc, chunks))
        total += len(chunks)
        if total >= limit:
            break
    return out


async def embed_all(triton: TritonClient, texts: Sequence[str]) -> np.ndarray:
    parts = []
    for i in range(0, len(texts), 256):  # 8 requests of 32 in flight
        parts.append(await triton.embed(list(texts[i : i + 256]), timeout=600))
    return np.concatenate(parts)


async def cached_vectors(name: str, texts: Sequence[str], compute: Callable[[], Awaitable[np.ndarray]]) -> tuple[np.ndarray, str]:
    key = hashlib.sha256("\x00".join(texts).encode())
    key.update(model_fingerprint().encode())
    path = CACHE_DIR / f"{name}-{len(texts)}-{key.hexdigest()[:16]}.npy"
    if path.exists():
        return np.load(path), f"loaded from the cache {path.relative_to(REPO_ROOT)}"
    start = time.perf_counter()
    vectors = await compute()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp.npy")
    np.save(scratch, vectors)
    scratch.replace(path)
    return vectors, (f"computed in {time.perf_counter() - start:.0f}s "
                     f"({len(texts) / (time.perf_counter() - start):.0f}/s) and cached in {path.relative_to(REPO_ROOT)}")


# --- the benchmark -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack, triton: TritonEndpoint) -> None:
        self.args = args
        self.stack = stack
        self.settings = stack.settings
        self.endpoint = triton
        self.triton = TritonClient(triton.grpc_url)
        self.db = Database(self.settings.database_url, "knowledge", 4)
        self.store = Store(self.db, "bench")
        self.gateway = self.settings.gateway_addr

    async def open(self) -> None:
        await self.db.migrate(MIGRATIONS)
        await self.db.open()
        async with httpx.AsyncClient(base_url=f"http://{self.gateway}", timeout=60) as http:
            self.account = await bench_account(http, self.settings)
        self.org = self.account.organization.split("/", 1)[1]  # Knowledge keys rows by the bare id
        self.direct = open_channel(self.settings, "knowledge", caller="gateway")
        self.edge = grpc.aio.insecure_channel(self.gateway)
        self.http = httpx.AsyncClient(base_url=f"http://{self.gateway}", timeout=60,
                                      headers={"x-api-key": self.account.secret})

    async def close(self) -> None:
        await purge_org(self.store, self.org)
        await self.http.aclose()
        await self.direct.close()
        await self.edge.close()
        await self.triton.close()
        await self.db.close()

    # --- 1. ingestion ----------------------------------------------------------------------

    async def ingestion(self) -> None:
        docs = chunked(self.args.ingest_chunks)
        expected = sum(len(c) for _, c in docs)
        stub = knowledge_pb2_grpc.KnowledgeServiceStub(self.edge)
        direct = knowledge_pb2_grpc.KnowledgeServiceStub(self.direct)
        key = self.account.key_metadata
        uploads = asyncio.Semaphore(4)

        async def upload(doc: Document) -> str:
            async with uploads:
                created = await stub.CreateDocument(kpb.CreateDocumentRequest(
                    document=kpb.Document(display_name=doc.name[-256:], mime_type="text/plain"),
                    content=doc.text.encode()), metadata=key, timeout=60)
                return str(created.name)

        before = self.endpoint.stats()
        start = time.perf_counter()
        names = set(await asyncio.gather(*(upload(doc) for doc, _ in docs)))
        uploaded = time.perf_counter() - start
        chunks = failed = 0
        while True:
            listed = await direct.ListDocuments(kpb.ListDocumentsRequest(page_size=1000),
                                                metadata=self.account.identity, timeout=30)
            mine = [d for d in listed.documents if d.name in names]
            pending = [d for d in mine if d.state == kpb.Document.STATE_PROCESSING]
            if not pending:
                elapsed = time.perf_counter() - start
                chunks = sum(d.chunk_count for d in mine)
                failed = sum(d.state == kpb.Document.STATE_FAILED for d in mine)
                break
            await asyncio.sleep(0.1)
        after = self.endpoint.stats()
        texts, executions, seen = batch_summary(before, after)
        # The model alone on the same chunks, in the same run: what the pipeline could reach.
        sample = [c.embedding_input() for _, cs in docs for c in cs][: max(64, min(expected, 320))]
        alone_start = time.perf_counter()
        await embed_all(self.triton, sample)
        alone = len(sample) / (time.perf_counter() - alone_start)
        rate = chunks / elapsed
        print(f"\n== Ingestion end to end: {len(docs)} plain-text documents (docstrings of installed packages) "
              "uploaded through the gateway (gRPC, API key) until READY ==")
        print(f"  {chunks} chunks (expected {expected}, {failed} documents failed) in {elapsed:.1f}s "
              f"(uploads took {uploaded:.1f}s): {rate:.1f} chunks/s")
        print(f"  Triton {EMBEDDING_MODEL} meanwhile: {texts} texts in {executions} executions "
              f"(mean batch {texts / max(executions, 1):.1f}); batch sizes seen {{size: executions}} {seen}")
        print(f"  the model alone on {len(sample)} of these chunks (32 per request, 8 in flight): {alone:.1f} chunks/s; "
              f"end to end / model alone: {rate / alone:.2f}x")
        print("  " + verdict(f"ingestion >= {TARGET_CHUNKS_PER_SECOND} chunks/s end to end (plain text, through the gateway)",
                             rate >= TARGET_CHUNKS_PER_SECOND and failed == 0, f"{rate:.1f} chunks/s"))
        # No pipeline outruns its model: below the target, the model alone says whether the miss
        # is this machine's or the pipeline's.
        print(f"  bound: the model alone does {alone:.1f} chunks/s on this machine, so "
              f"{TARGET_CHUNKS_PER_SECOND} chunks/s end to end "
              + ("IS reachable here" if alone >= TARGET_CHUNKS_PER_SECOND else
                 "is NOT reachable here by any pipeline around this model"))

    # --- 2. PDF parsing ----------------------------------------------------------------------

    async def pdf_parsing(self, workdir: Path) -> None:
        # The longest documents of a sample: multi-page PDFs.
        sample = chunked(self.args.pdf_docs * 100)
        docs = sorted(sample, key=lambda d: -len(d[0].text))[: self.args.pdf_docs]
        pages = chars = 0
        pdf_seconds = text_seconds = 0.0
        chunk_count = 0
        for i, (doc, _) in enumerate(docs):
            lines = [line[j : j + 95] for line in doc.text.encode("latin-1", "replace").decode("latin-1").splitlines()
                     for j in range(0, max(len(line), 1), 95)]
            page_lines = [lines[k : k + 50] for k in range(0, len(lines), 50)]
            pdf = workdir / f"doc-{i}.pdf"
            pdf.write_bytes(make_pdf(page_lines))
            plain = workdir / f"doc-{i}.txt"
            plain.write_text("\n".join(lines))
            start = time.perf_counter()
            extracted = await run_isolated("application/pdf", str(pdf))
            pdf_seconds += time.perf_counter() - start
            start = time.perf_counter()
            await extract_file("text/plain", str(plain))
            text_seconds += time.perf_counter() - start
            pages += len(page_lines)
            chars += len(extracted.text)
            chunk_count += len(chunk_document(extracted))
        print(f"\n== PDF parsing alone (Knowledge's isolated extraction, {len(docs)} PDFs of the same real text) ==")
        print(f"  {pages} pages, {chars / 1000:.0f}k characters, {chunk_count} chunks: {pdf_seconds:.2f}s = "
              f"{pages / pdf_seconds:.1f} pages/s, {chunk_count / pdf_seconds:.0f} chunks/s of parsing")
        print(f"  (PDFs are parsed in an isolated child process, its start included; the same text as text/plain "
              f"is extracted in-process in {text_seconds * 1000:.0f} ms)")

    # --- 3. search at 10k chunks -------------------------------------------------------------

    async def search(self) -> None:
        docs, chunk_count, vectors_index = await self._load_search_index()
        n = self.args.queries
        # Enough warm-up for Milvus Lite to finish indexing the freshly loaded vectors (its first
        # searches after a bulk load scan unindexed segments) and for every path's connections.
        warm = 10
        pool = list(dict.fromkeys(corpus_queries([d for d, _ in docs], 8 * (n + warm), seed=7)))
        sets = [pool[i * (n + warm) : (i + 1) * (n + warm)] for i in range(4)]
        if min(len(s) for s in sets) < n + warm:
            raise SystemExit("not enough distinct queries in the corpus sample")

        searcher = Searcher(self.store, vectors_index, PostgresKeywordIndex(self.store), self.triton, cache=None)
        results: dict[str, list[float]] = {}

        async def in_process(q: str) -> int:
            return len(await searcher.search(self.org, q, HYBRID, 10, {}, None))

        # Milvus Lite indexes the freshly loaded vectors in the background (searches meanwhile
        # take up to ~1 s under load): wait until five warm-up searches in a row are quick.
        settle = time.perf_counter()
        quick = 0
        while quick < 5 and time.perf_counter() - settle < 120:
            began = time.perf_counter()
            await in_process(pool[(int(began * 1000)) % len(pool)])
            quick = quick + 1 if time.perf_counter() - began < 0.1 else 0
        print(f"  (waited {time.perf_counter() - settle:.0f}s for Milvus Lite to index the loaded vectors)")
        results["in-process (Searcher)"] = await self.measure(in_process, sets[0], warm)
        modes = {}
        for mode in (KEYWORD, SEMANTIC):
            async def one_mode(q: str, mode: str = mode) -> int:
                return len(await searcher.search(self.org, q, mode, 10, {}, None))
            modes[mode] = await self.measure(one_mode, sets[0], 0)
        await vectors_index.close()
        self.stack.start_service("knowledge")
        self.stack.wait_ready(["knowledge"], timeout=120)

        direct = knowledge_pb2_grpc.KnowledgeServiceStub(self.direct)
        edge = knowledge_pb2_grpc.KnowledgeServiceStub(self.edge)

        async def grpc_direct(q: str) -> int:
            reply = await direct.SearchDocuments(kpb.SearchDocumentsRequest(query=q, top_k=10),
                                                 metadata=self.account.identity, timeout=30)
            return len(reply.results)

        async def gateway_grpc(q: str) -> int:
            reply = await edge.SearchDocuments(kpb.SearchDocumentsRequest(query=q, top_k=10),
                                               metadata=self.account.key_metadata, timeout=30)
            return len(reply.results)

        async def gateway_json(q: str) -> int:
            reply = await self.http.post("/v1/documents:search", json={"query": q, "topK": 10})
            reply.raise_for_status()
            return len(reply.json().get("results", []))

        results["gRPC to Knowledge (mTLS)"] = await self.measure(grpc_direct, sets[1], warm)
        results["gateway gRPC (API key)"] = await self.measure(gateway_grpc, sets[2], warm)
        results["gateway JSON (API key)"] = await self.measure(gateway_json, sets[3], warm)
        self._print_search(results, modes, chunk_count)

    async def _load_search_index(
        self,
    ) -> tuple[list[tuple[Document, list[Chunk]]], int, VectorIndex]:
        """Embeds the search corpus (cached) and loads it straight into PostgreSQL and
        Knowledge's Milvus Lite file (Knowledge stopped meanwhile); returns the documents, the
        chunk count and the open vector index."""
        docs = chunked(self.args.search_chunks)
        rows: list[tuple[str, uuid.UUID, int, str]] = []
        inputs: list[str] = []
        owners: list[uuid.UUID] = []
        uids = []
        for doc, chunks in docs:
            uid = uuid.uuid4()
            uids.append((uid, f"s{len(uids)}-{hashlib.sha1(doc.name.encode()).hexdigest()[:12]}"))
            for c in chunks:
                rows.append((chunk_id(uid, c.index), uid, c.index, c.text))
                inputs.append(c.embedding_input())
                owners.append(uid)
        vectors, how = await cached_vectors("search", inputs, lambda: embed_all(self.triton, inputs))
        self.search_vectors, self.search_inputs = vectors, inputs
        print(f"\n== Search at {len(rows)} chunks of real text (hybrid = PG full-text + Milvus vectors, RRF; top_k 10) ==")
        print(f"  chunk embeddings (Triton, {EMBEDDING_MODEL}): {how}")
        # Knowledge's Milvus Lite file belongs to the running service: stop it, load, restart.
        self.stack.stop("knowledge")
        start = time.perf_counter()
        await bulk_load(self.store, self.org, uids, rows)
        async with self.db.connection() as conn:  # fresh statistics, as autovacuum would leave them
            await conn.execute("ANALYZE documents")
            await conn.execute("ANALYZE chunks")
        vectors_index = VectorIndex("", lite_path=Path(self.settings.var_dir) / "knowledge" / "milvus.db")
        await vectors_index.open()
        for uid, _ in uids:
            members = [i for i, owner in enumerate(owners) if owner == uid]
            await vectors_index.upsert(self.org, uid, [rows[i][0] for i in members], vectors[members])
        await asyncio.to_thread(vectors_index._client.flush, "knowledge_chunks")
        print(f"  index loaded in {time.perf_counter() - start:.0f}s (PostgreSQL COPY + Milvus Lite upserts)")
        return docs, len(rows), vectors_index

    @staticmethod
    def _print_search(
        results: dict[str, list[float]], modes: dict[str, list[float]], chunk_count: int
    ) -> None:
        base50, base95 = pct(results["in-process (Searcher)"], 0.5), pct(results["in-process (Searcher)"], 0.95)
        print(f"  {'hybrid, path':<28} {'p50 ms':>8} {'p95 ms':>8} {'p50 ratio':>10} {'p95 ratio':>10}")
        for path, times in results.items():
            print(f"  {path:<28} {pct(times, 0.5):>8.1f} {pct(times, 0.95):>8.1f} "
                  f"{pct(times, 0.5) / base50:>9.2f}x {pct(times, 0.95) / base95:>9.2f}x")
        for mode, times in modes.items():
            print(f"  {'in-process, ' + mode + ' only':<28} {pct(times, 0.5):>8.1f} {pct(times, 0.95):>8.1f}")
        for path in ("gateway JSON (API key)", "gateway gRPC (API key)"):
            p95 = pct(results[path], 0.95)
            print(f"  {path.split(' (')[0]} / in-process p95 ratio {p95 / base95:.2f}x")
            print("  " + verdict(f"hybrid search p95 <= {TARGET_HYBRID_P95_MS:.0f} ms at {chunk_count} chunks of real text, "
                                 f"{path.split(' (')[0]}", p95 <= TARGET_HYBRID_P95_MS, f"{p95:.1f} ms"))

    async def measure(self, call: Callable[[str], Awaitable[int]], qs: Sequence[str], warm: int) -> list[float]:
        for q in qs[:warm]:
            await call(q)
        times = []
        for q in qs[warm:]:
            start = time.perf_counter()
            if await call(q) == 0:
                raise RuntimeError(f"no results for {q!r}")
            times.append((time.perf_counter() - start) * 1000)
        return times

    # --- 4. int8 against fp32 ----------------------------------------------------------------

    async def quality(self) -> None:
        """The served (int8) vectors against the fp32 model they were derived from."""
        count = min(self.args.quality_chunks, len(self.search_inputs))
        texts = self.search_inputs[:count]
        served = self.search_vectors[:count]
        fp32 = local_encoder("fp32")
        int8 = local_encoder("int8")

        async def exact_vectors() -> np.ndarray:
            return await asyncio.to_thread(lambda: fp32.encode(fp32.token_ids(list(texts))))

        exact, how = await cached_vectors("fp32", texts, exact_vectors)
        cosines = np.einsum("ij,ij->i", served, exact)
        print(f"\n== int8 model (served) against its fp32 source on real text (fp32 vectors {how}) ==")
        print(f"  cosine(int8, fp32) over {count} chunks: mean {cosines.mean():.4f}, 1st percentile "
              f"{np.percentile(cosines, 1):.4f}, min {cosines.min():.4f}")
        qs = corpus_queries([Document("", t) for t in texts if "\n" in t], 50, seed=3)
        q_exact = fp32.encode(fp32.token_ids(qs))
        q_served = await self.triton.embed(qs, timeout=60)
        overlap = []
        for i in range(len(qs)):
            top_exact = set(np.argsort(-(exact @ q_exact[i]))[:10])
            top_served = set(np.argsort(-(served @ q_served[i]))[:10])
            overlap.append(len(top_exact & top_served) / 10)
        print(f"  {len(qs)} real queries, top-10 neighbours among the {count} chunks: int8 finds "
              f"{np.mean(overlap):.1%} of fp32's (worst query {min(overlap):.0%})")
        # Labeled: each query has one relevant passage among the real chunks.
        passages = [item_text(i) for i in ITEMS]
        keys = [i.key for i in ITEMS]
        recall = {}
        for name, encoder, docs in (("fp32", fp32, exact), ("int8", int8, served)):
            relevant = encoder.encode(encoder.token_ids(passages))
            index = np.concatenate([relevant, docs])
            hits = []
            for query, key in queries():
                ranked = np.argsort(-(index @ encoder.encode(encoder.token_ids([query]))[0]))[:10]
                hits.append(keys.index(key) in ranked)
            recall[name] = float(np.mean(hits))
        print(f"  labeled set ({len(queries())} queries, one relevant passage each among {count} real chunks): "
              f"recall@10 fp32 {recall['fp32']:.2f}, int8 {recall['int8']:.2f}")
        kept = np.mean(overlap) >= 0.9 and recall["int8"] >= recall["fp32"] and cosines.min() >= 0.97
        print("  " + verdict("int8 embeddings keep retrieval quality (top-10 agreement >= 90 %, labeled recall "
                             "not lower, cosine >= 0.97)", bool(kept),
                             f"agreement {np.mean(overlap):.1%}, recall {recall['int8']:.2f} vs {recall['fp32']:.2f}, "
                             f"min cosine {cosines.min():.3f}"))


def start_stack(var_dir: Path, triton_url: str) -> Stack:
    overrides = {**private_addresses(var_dir), "AIMESH_TRITON_URL": triton_url}
    stack = Stack.create(overrides, log_dir=var_dir / "log")
    services = ["auth", "usage", "knowledge"]
    for service in services:
        stack.start_service(service)
    stack.wait_ready(services, timeout=120)
    stack.start_gateway()
    stack.wait_ready(["gateway"], timeout=60)
    return stack


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.knowledge")
    parser.add_argument("--ingest-chunks", type=int, default=1500, help="chunks (whole documents) to ingest")
    parser.add_argument("--pdf-docs", type=int, default=6, help="PDFs to parse")
    parser.add_argument("--search-chunks", type=int, default=10_000, help="chunks in the search index")
    parser.add_argument("--queries", type=int, default=40, help="timed queries per search path")
    parser.add_argument("--quality-chunks", type=int, default=600, help="chunks for the int8/fp32 check")
    parser.add_argument("--shared-triton", action="store_true", help="use AIMESH_TRITON_URL's Triton if ready")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    print_load("before the run")
    with scratch_dir("aimesh-bench-knowledge-") as tmp, \
            embedding_triton(settings, tmp, args.shared_triton) as triton:
        print(f"Knowledge benchmark — Triton {triton.grpc_url}, a fresh mesh (Auth, Usage, Knowledge, Envoy) in {tmp}")
        stack = start_stack(tmp / "var", triton.grpc_url)
        bench = Bench(args, stack, triton)
        try:
            await bench.open()
            await bench.ingestion()
            print_load("after ingestion")
            await bench.pdf_parsing(tmp)
            await bench.search()
            await bench.quality()
        finally:
            with contextlib.suppress(Exception):
                await bench.close()
            stack.stop_all()
    print_load("after the run")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
