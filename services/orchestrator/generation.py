"""Generate, end to end: validate, guard the input, retrieve, check the budget, serve from cache
or route to a provider, guard the output, cite, meter.

Yields GenerateResponse events in contract order (metadata, deltas, completion). Errors before
the first delta are raised as ServiceError; later failures end in-band (finish_reason ERROR).
If the caller goes away, the provider stream is closed (upstream generation cancelled) and the
tokens produced so far are still metered.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from aimesh.orchestrator.v1 import orchestrator_pb2 as pb
from google.protobuf import duration_pb2
from google.rpc import status_pb2

from services.common.background import BackgroundTasks
from services.common.channels import Channels
from services.common.errors import FieldViolations, invalid_argument, unavailable
from services.common.identity import Identity
from services.common.usage_client import UsageClient
from services.orchestrator import metering, retrieval
from services.orchestrator.cache import GenerationStore, response_key
from services.orchestrator.catalog import Catalog, ModelEntry
from services.orchestrator.guardrails import BLOCK, Action, Guardrails, OutputFilter
from services.orchestrator.providers import Finish, Passage, ProviderError, ProviderRequest
from services.orchestrator.routing import AllProvidersFailed, Router, Served
from services.orchestrator.tokens import MESSAGE_OVERHEAD, count_messages, count_text

_ROLES = {pb.ROLE_SYSTEM: "system", pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant"}
_FINISH = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
}
_KIND = {"redaction": pb.GuardrailAction.KIND_REDACTION, "block": pb.GuardrailAction.KIND_BLOCK}
_STAGE = {"input": pb.GuardrailAction.STAGE_INPUT, "output": pb.GuardrailAction.STAGE_OUTPUT}
MAX_CONTENT_CHARS = 200_000


def validate(request: pb.GenerateRequest, model: ModelEntry) -> None:
    """Every problem with the request at once (INVALID_ARGUMENT with field violations)."""
    v = FieldViolations()
    if v.check(1 <= len(request.messages) <= 1000, "messages", "1-1000 messages required"):
        for i, m in enumerate(request.messages):
            v.check(m.role in _ROLES, f"messages[{i}].role", "must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT")
            v.check(bool(m.content), f"messages[{i}].content", "must not be empty")
            v.check(len(m.content) <= MAX_CONTENT_CHARS, f"messages[{i}].content",
                    f"{len(m.content)} characters; at most {MAX_CONTENT_CHARS}")
            if m.role == pb.ROLE_SYSTEM and i > 0:
                v.add(f"messages[{i}].role", "a ROLE_SYSTEM message may only be the first message")
        v.check(request.messages[-1].role == pb.ROLE_USER, f"messages[{len(request.messages) - 1}].role",
                "the last message must be ROLE_USER")
    if request.HasField("temperature"):
        v.check(0.0 <= request.temperature <= 2.0, "temperature", "must be 0.0-2.0")
    if request.HasField("top_p"):
        v.check(0.0 < request.top_p <= 1.0, "top_p", "must be greater than 0.0 and at most 1.0")
    if request.HasField("max_output_tokens"):
        v.check(1 <= request.max_output_tokens <= model.max_output_tokens, "max_output_tokens",
                f"must be 1-{model.max_output_tokens} for {model.name}")
    v.check(len(request.stop) <= 4, "stop", "at most 4 stop sequences")
    for i, s in enumerate(request.stop):
        v.check(1 <= len(s) <= 64, f"stop[{i}]", "must be 1-64 characters")
    r = request.retrieval
    if r.enabled:
        v.check("RETRIEVAL" in model.capabilities, "retrieval.enabled",
                f"{model.name} does not support retrieval (no CAPABILITY_RETRIEVAL)")
        v.check(r.top_k == 0 or 1 <= r.top_k <= 20, "retrieval.top_k", "must be 1-20 (default 5)")
        v.check(len(r.documents) <= 100, "retrieval.documents", "at most 100 documents")
        v.check(len(r.metadata_filters) <= 16, "retrieval.metadata_filters", "at most 16 entries")
    v.check(len(request.request_id) <= 64, "request_id", "at most 64 characters")
    v.raise_if_any()


def _action(a: Action) -> pb.GuardrailAction:
    return pb.GuardrailAction(kind=_KIND[a.kind], stage=_STAGE[a.stage], category=a.category,
                              reason=a.reason, count=a.count)


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _citation(index: int, hit: retrieval.Retrieved) -> pb.Citation:
    r = hit.result
    quote = r.text[: retrieval.QUOTE_CHARS]
    return pb.Citation(index=index, document=r.document, document_display_name=r.document_display_name,
                       chunk_id=r.chunk_id, chunk_index=r.chunk_index, start_offset=r.start_offset,
                       end_offset=r.start_offset + len(quote), quote=quote, score=r.score)


class Orchestrator:
    def __init__(self, catalog: Catalog, router: Router, rails: Guardrails, store: GenerationStore,
                 channels: Channels, usage: UsageClient | None = None) -> None:
        self.catalog = catalog
        self.router = router
        self.rails = rails
        self.store = store
        self.channels = channels
        self.usage = usage
        # Cache writes run off the response path; shutdown waits for them (drain).
        self.background = BackgroundTasks("orchestrator")

    def count(self, request_messages: list[tuple[str, str]], passages: list[Passage]) -> int:
        return count_messages(request_messages) + sum(count_text(p.text) + MESSAGE_OVERHEAD for p in passages)

    async def generate(self, request: pb.GenerateRequest, identity: Identity) -> AsyncIterator[pb.GenerateResponse]:
        model = self.catalog.get(request.model)
        validate(request, model)
        if request.request_id:
            replay = await self.store.replay(identity.org, request.request_id)
            if replay is not None:
                for event in replay:
                    if event.HasField("completion"):
                        event.completion.cached = True
                    yield event
                return

        generation_id = str(uuid.uuid4())
        messages = [(_ROLES[m.role], m.content) for m in request.messages]
        contents, input_actions = self.rails.check_input(c for _, c in messages)
        if any(a.kind == BLOCK for a in input_actions):
            yield pb.GenerateResponse(metadata=pb.GenerationMetadata(
                model=model.name, provider="guardrails", deployment="input", generation_id=generation_id))
            yield pb.GenerateResponse(completion=pb.Completion(
                finish_reason=pb.FINISH_REASON_CONTENT_FILTER, usage=pb.TokenUsage(),
                guardrail_actions=[_action(a) for a in input_actions]))
            return
        messages = [(role, content) for (role, _), content in zip(messages, contents)]

        retrieved: list[retrieval.Retrieved] = []
        if request.retrieval.enabled:
            retrieved = await retrieval.search(
                self.channels, identity, messages[-1][1], request.retrieval.top_k or 5,
                list(request.retrieval.documents), dict(request.retrieval.metadata_filters))
            # Retrieved text is prompt input too: redact it before any model sees it.
            texts, more = self.rails.check_input(h.passage.text for h in retrieved)
            if texts:
                retrieved = [retrieval.Retrieved(Passage(h.passage.id, t), h.result) for h, t in zip(retrieved, texts)]
                input_actions += more
        passages = [h.passage for h in retrieved]

        prompt_tokens = self.count(messages, passages)
        window = model.context_window_tokens
        if request.HasField("max_output_tokens"):
            max_out = request.max_output_tokens
            fits = prompt_tokens + max_out <= window
        else:
            max_out = min(model.max_output_tokens, window - prompt_tokens)
            fits = max_out >= 1
        if not fits:
            sizes = (f"prompt_tokens={prompt_tokens}, max_output_tokens={max_out}, "
                     f"context_window_tokens={window}")
            raise invalid_argument(
                f"the prompt does not fit {model.name}'s context window ({sizes})",
                [("messages", f"prompt does not fit the context window: {sizes}")],
                reason="CONTEXT_WINDOW_EXCEEDED",
                metadata={"prompt_tokens": str(prompt_tokens), "max_output_tokens": str(max_out),
                          "context_window_tokens": str(window)},
            )

        digest = None
        if request.HasField("temperature") and request.temperature == 0 and not request.disable_cache:
            digest = response_key(identity.org, request)
            hit = await self.store.cached_response(digest)
            if hit is not None:
                async for event in self._from_cache(hit, generation_id, identity, model):
                    yield event
                return

        def make_request(entry: ModelEntry) -> ProviderRequest:
            # A fallback model may allow less output than the requested model.
            return ProviderRequest(
                messages=messages, max_output_tokens=max(1, min(max_out, entry.max_output_tokens)),
                temperature=request.temperature if request.HasField("temperature") else None,
                top_p=request.top_p if request.HasField("top_p") else None,
                stop=list(request.stop), seed=request.seed if request.HasField("seed") else None,
                passages=passages)

        # Priced models hold budget for the worst case first (RESOURCE_EXHAUSTED when used up).
        async with metering.budget_hold(self.usage, identity, model, prompt_tokens, max_out,
                                        generation_id) as spend:
            served: list[Served] = []
            out_filter = self.rails.output_filter(request.stop)
            events: list[pb.GenerateResponse] = []
            sent_text: list[str] = []
            finish: Finish | None = None
            failure: ProviderError | None = None
            completion_tokens = 0
            finished = False
            stream = self.router.generate(self.catalog.chain(model), make_request, served)
            try:
                try:
                    async for item in stream:
                        if not events:
                            s = served[0]
                            events.append(pb.GenerateResponse(metadata=pb.GenerationMetadata(
                                model=s.model.name, provider=s.deployment.provider,
                                deployment=s.deployment.deployment, generation_id=generation_id)))
                            yield events[-1]
                        if isinstance(item, Finish):
                            finish = item
                            break
                        completion_tokens += 1
                        text = out_filter.feed(item.text)
                        if text:
                            sent_text.append(text)
                            events.append(pb.GenerateResponse(delta=pb.TextDelta(text=text)))
                            yield events[-1]
                        if out_filter.done:
                            break
                except AllProvidersFailed as exc:
                    tried = ", ".join(f"{a.provider}/{a.deployment}" for a in exc.attempts)
                    raise unavailable(
                        f"every provider of {model.name} failed: " + "; ".join(
                            f"{a.provider}/{a.deployment}: {a.code.name} {a.message}" for a in exc.attempts),
                        reason="ALL_PROVIDERS_FAILED", metadata={"providers_tried": tried, "model": model.name},
                    ) from None
                except ProviderError as exc:
                    failure = exc
                finally:
                    await stream.aclose()  # type: ignore[attr-defined]
                tail = out_filter.flush() if failure is None else ""
                if tail:
                    sent_text.append(tail)
                    events.append(pb.GenerateResponse(delta=pb.TextDelta(text=tail)))
                    yield events[-1]
                completion = self._completion(
                    served[0], finish, failure, out_filter, input_actions, retrieved, "".join(sent_text),
                    prompt_tokens, completion_tokens)
                # Metered durably BEFORE the completion is sent: a caller that saw it is billed
                # even if this process is killed right after.
                await self._meter(spend, identity, served[0], generation_id,
                                  completion.usage.prompt_tokens, completion.usage.completion_tokens)
                events.append(pb.GenerateResponse(completion=completion))
                finished = True
                yield events[-1]
            finally:
                # Runs on cancellation too: what was produced is metered and completed answers cached.
                if served and not spend.metered:
                    await self._meter(spend, identity, served[0], generation_id,
                                      prompt_tokens, completion_tokens)
                if finished and events[-1].completion.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH):
                    if digest is not None:
                        self.background.start(self.store.store_response(digest, events), "cache-response")
                    if request.request_id:
                        self.background.start(
                            self.store.store_replay(identity.org, request.request_id, events), "cache-replay")

    async def _meter(self, spend: metering.Spend, identity: Identity, served: Served, generation_id: str,
                     prompt_tokens: int, completion_tokens: int) -> None:
        spend.prompt_tokens, spend.completion_tokens = prompt_tokens, completion_tokens
        spend.metered = True
        await metering.report_tokens(self.usage, identity, served.model.name, generation_id,
                                     prompt_tokens, completion_tokens)

    async def drain(self) -> None:
        """Let pending cache writes finish (at shutdown)."""
        await self.background.wait(timeout=5)

    def _completion(self, served: Served, finish: Finish | None, failure: ProviderError | None,
                    out_filter: OutputFilter, input_actions: list[Action], retrieved: list[retrieval.Retrieved],
                    text: str, prompt_tokens: int, completion_tokens: int) -> pb.Completion:
        if failure is not None:
            reason = pb.FINISH_REASON_ERROR
        elif out_filter.blocked is not None:
            reason = pb.FINISH_REASON_CONTENT_FILTER
        elif out_filter.stopped:
            reason = pb.FINISH_REASON_STOP
        else:
            reason = _FINISH.get(finish.reason if finish else "stop", pb.FINISH_REASON_STOP)
        if finish is not None and finish.prompt_tokens is not None:
            prompt_tokens = finish.prompt_tokens
        if finish is not None and finish.completion_tokens is not None:
            completion_tokens = finish.completion_tokens
        citations: list[pb.Citation] = []
        by_id = {h.passage.id: h for h in retrieved}
        if finish is not None and finish.cited_passage_ids:
            for n, pid in enumerate(finish.cited_passage_ids, start=1):
                if pid in by_id:
                    citations.append(_citation(n, by_id[pid]))
        elif retrieved:
            citations = [_citation(n, retrieved[n - 1]) for n in retrieval.cited_indices(text, len(retrieved))]
        completion = pb.Completion(
            finish_reason=reason,
            usage=pb.TokenUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                total_tokens=prompt_tokens + completion_tokens),
            citations=citations,
            guardrail_actions=[_action(a) for a in [*input_actions, *out_filter.actions()]],
            provider_attempts=[
                pb.ProviderAttempt(provider=a.provider, deployment=a.deployment,
                                   status=status_pb2.Status(code=a.code.value[0], message=a.message),
                                   duration=_duration(a.seconds))
                for a in served.attempts],
        )
        if failure is not None:
            completion.error.CopyFrom(status_pb2.Status(code=failure.code.value[0], message=failure.message))
            if completion.provider_attempts:
                completion.provider_attempts[-1].status.CopyFrom(completion.error)
        return completion

    async def _from_cache(self, hit: list[pb.GenerateResponse], generation_id: str, identity: Identity,
                          model: ModelEntry) -> AsyncIterator[pb.GenerateResponse]:
        for event in hit:
            if event.HasField("metadata"):
                event.metadata.generation_id = generation_id
            if event.HasField("completion"):
                event.completion.cached = True
                del event.completion.provider_attempts[:]
                await metering.report_tokens(
                    self.usage, identity, model.name, generation_id,
                    event.completion.usage.prompt_tokens, event.completion.usage.completion_tokens)
            yield event

