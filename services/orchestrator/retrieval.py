"""Knowledge grounding: search the caller's documents, hand the chunks to the model as passages,
and turn the model's citations back into Citation records."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

import grpc
from aimesh.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc

from services.common.cache import CORPUS_CHANGED_CHANNEL, ServiceCache, follow_channel
from services.common.channels import Channels
from services.common.errors import (
    ServiceError,
    field_violations,
    status_from_rpc_error,
    unavailable,
)
from services.common.identity import Identity
from services.orchestrator.providers import Passage

log = logging.getLogger("aimesh.orchestrator.retrieval")

QUOTE_CHARS = 1000
KEEP_SECONDS = 60.0  # an answer is asked again after this, announced change or not
MAX_ORGS = 10_000
PING_SECONDS = 5.0  # an idle subscription is pinged this often (a dead one raises)
RESUBSCRIBE_SECONDS = 1.0
_MARKER = re.compile(r"\[(\d{1,3})\]")


@dataclass(frozen=True)
class Retrieved:
    passage: Passage
    result: knowledge_pb2.SearchResult


async def search(
    channels: Channels, identity: Identity, query: str, top_k: int,
    documents: list[str], metadata_filters: dict[str, str],
) -> list[Retrieved]:
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channels.get("knowledge"))
    request = knowledge_pb2.SearchDocumentsRequest(
        query=query[:2048], top_k=top_k, documents=documents, metadata_filters=metadata_filters
    )
    try:
        response = await stub.SearchDocuments(request, metadata=identity.to_headers())
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            status = status_from_rpc_error(exc)
            raise ServiceError(
                exc.code(),
                f"retrieval: {exc.details()}",
                "RETRIEVAL_INVALID",
                [(f"retrieval.{f}", d) for f, d in (field_violations(status) if status else [])],
            ) from None
        raise unavailable(
            f"retrieval from Knowledge failed: {exc.code().name}: {exc.details()}",
            reason="RETRIEVAL_UNAVAILABLE",
            metadata={"providers_tried": "knowledge"},
        ) from None
    return [Retrieved(Passage(r.chunk_id, r.text), r) for r in response.results]


def cited_indices(text: str, count: int) -> list[int]:
    """1-based source numbers an answer cites as [n], in order of first use (hosted models)."""
    seen: list[int] = []
    for m in _MARKER.finditer(text):
        n = int(m.group(1))
        if 1 <= n <= count and n not in seen:
            seen.append(n)
    return seen


class ReadyDocuments:
    """Whether an organization has READY documents (for automatic retrieval), remembered per
    organization so that a chat does not ask Knowledge every time.

    Correctness rests on invalidation: Knowledge announces an organization on
    CORPUS_CHANGED_CHANNEL after every change of its searchable corpus (a document became READY
    or was deleted), and `listen` drops what was concluded about it; an answer read from
    Knowledge while an announcement arrived is not kept (generation check). A "no" is kept only
    while this process is subscribed (else asked every time, so the first question after the
    first upload is grounded); any answer is asked again after KEEP_SECONDS at the latest, in
    case an announcement was lost. Knowledge unreachable: no, with a warning — the chat answers
    without grounding rather than failing."""

    def __init__(self, channels: Channels, cache: ServiceCache | None = None) -> None:
        self.channels = channels
        self.cache = cache
        self._known: dict[str, tuple[float, bool]] = {}
        self._generation = 0
        self._subscribed = False

    async def ready(self, identity: Identity) -> bool:
        hit = self._known.get(identity.org)
        if hit is not None and time.monotonic() < hit[0]:
            return hit[1]
        generation = self._generation
        stub = knowledge_pb2_grpc.KnowledgeServiceStub(self.channels.get("knowledge"))
        try:
            page = await stub.ListDocuments(
                knowledge_pb2.ListDocumentsRequest(
                    page_size=1, state=knowledge_pb2.Document.STATE_READY
                ),
                # A Knowledge that is down must not hold up the chat: fail fast, answer without.
                metadata=identity.to_headers(),
                timeout=2.0,
                wait_for_ready=False,
            )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "cannot tell whether the organization has documents; answering without retrieval",
                extra={"code": exc.code().name},
            )
            return False
        answer = bool(page.documents)
        if generation == self._generation and (answer or self._subscribed):
            if len(self._known) > MAX_ORGS:
                self._known.clear()
            self._known[identity.org] = (time.monotonic() + KEEP_SECONDS, answer)
        return answer

    def forget(self, orgs: list[str] | None = None) -> None:
        """Drop what is known about `orgs` (all when None); answers in flight are not kept."""
        self._generation += 1
        if orgs is None:
            self._known.clear()
        for org in orgs or []:
            self._known.pop(org, None)

    async def listen(self) -> None:
        """Background task for the life of the server: apply Knowledge's announcements."""
        if self.cache is not None:
            await follow_channel(self.cache.redis, CORPUS_CHANGED_CHANNEL, self._subscribed_now,
                                 self.forget, self._lost, PING_SECONDS, RESUBSCRIBE_SECONDS)

    async def _subscribed_now(self) -> None:
        self.forget()  # announcements may have been missed while unsubscribed
        self._subscribed = True

    def _lost(self) -> None:
        self._subscribed = False
        self.forget()
