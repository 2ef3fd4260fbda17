"""Generate, end to end: validate, guard the input, retrieve, check the budget, serve from cache
or route to a provider, guard the output, cite, meter.

Yields GenerateResponse events in contract order (metadata, deltas, completion). Errors before
the first delta are raised as ServiceError; later failures end in-band (finish_reason ERROR).
If the caller goes away, the provider stream is closed (upstream generation cancelled) and the
tokens produced so far are still metered.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from aimesh.orchestrator.v1 import orchestrator_pb2 as pb
from google.protobuf import duration_pb2, json_format
from google.rpc import status_pb2

from services.common.background import BackgroundTasks
from services.common.channels import Channels
from services.common.errors import FieldViolations, ServiceError, invalid_argument, unavailable
from services.common.identity import Identity
from services.common.usage_client import UsageClient
from services.orchestrator import metering, retrieval
from services.orchestrator.cache import GenerationStore, response_key
from services.orchestrator.catalog import Catalog, ModelEntry
from services.orchestrator.guardrails import BLOCK, Action, Guardrails, OutputFilter
from services.orchestrator.providers import (
    Finish,
    Passage,
    ProviderError,
    ProviderRequest,
    ToolCallPiece,
)
from services.orchestrator.routing import (
    CLIENT_ERRORS,
    AllProvidersFailed,
    Router,
    Served,
    Started,
)
from services.orchestrator.tokens import (
    MESSAGE_OVERHEAD,
    ROLE_NAMES,
    count_messages,
    count_text,
)

_FINISH = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
}
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_TOOLS = 128
_CHOICE = {pb.ToolChoice.MODE_AUTO: "auto", pb.ToolChoice.MODE_NONE: "none",
           pb.ToolChoice.MODE_REQUIRED: "required"}
_KIND = {"redaction": pb.GuardrailAction.KIND_REDACTION, "block": pb.GuardrailAction.KIND_BLOCK}
_STAGE = {"input": pb.GuardrailAction.STAGE_INPUT, "output": pb.GuardrailAction.STAGE_OUTPUT}
MAX_CONTENT_CHARS = 200_000


def validate(request: pb.GenerateRequest, model: ModelEntry) -> None:
    """Every problem with the request at once (INVALID_ARGUMENT with field violations)."""
    v = FieldViolations()
    if v.check(1 <= len(request.messages) <= 1000, "messages", "1-1000 messages required"):
        for i, m in enumerate(request.messages):
            v.check(m.role in ROLE_NAMES, f"messages[{i}].role",
                    "must be ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL")
            v.check(bool(m.content) or (m.role == pb.ROLE_ASSISTANT and bool(m.tool_calls)),
                    f"messages[{i}].content", "must not be empty")
            v.check(len(m.content) <= MAX_CONTENT_CHARS, f"messages[{i}].content",
                    f"{len(m.content)} characters; at most {MAX_CONTENT_CHARS}")
            if m.role == pb.ROLE_SYSTEM and i > 0:
                v.add(f"messages[{i}].role", "a ROLE_SYSTEM message may only be the first message")
            if m.tool_calls:
                v.check(m.role == pb.ROLE_ASSISTANT, f"messages[{i}].tool_calls",
                        "only ROLE_ASSISTANT messages carry tool calls")
                v.check(len(m.tool_calls) <= MAX_TOOLS, f"messages[{i}].tool_calls", "at most 128")
            v.check((m.role == pb.ROLE_TOOL) == bool(m.tool_call_id), f"messages[{i}].tool_call_id",
                    "required on ROLE_TOOL messages and only there")
        v.check(request.messages[-1].role in (pb.ROLE_USER, pb.ROLE_TOOL),
                f"messages[{len(request.messages) - 1}].role",
                "the last message must be ROLE_USER (or ROLE_TOOL answering tool calls)")
    _validate_tools(request, model, v)
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


def _validate_tools(request: pb.GenerateRequest, model: ModelEntry, v: FieldViolations) -> None:
    uses_tools = bool(request.tools) or any(
        m.tool_calls or m.tool_call_id for m in request.messages
    )
    if uses_tools:
        v.check(
            "TOOLS" in model.capabilities,
            "tools",
            f"{model.name} does not support tools (no CAPABILITY_TOOLS)",
        )
    v.check(len(request.tools) <= MAX_TOOLS, "tools", f"at most {MAX_TOOLS} tools")
    names = [t.name for t in request.tools]
    for i, name in enumerate(names):
        v.check(
            bool(_TOOL_NAME.match(name)), f"tools[{i}].name", "1-64 characters of [a-zA-Z0-9_-]"
        )
    v.check(len(set(names)) == len(names), "tools", "tool names must be unique")
    choice = request.tool_choice
    if choice.mode != pb.ToolChoice.MODE_UNSPECIFIED:
        v.check(bool(request.tools), "tool_choice", "requires tools")
    if choice.mode == pb.ToolChoice.MODE_FUNCTION:
        v.check(
            choice.function_name in names, "tool_choice.function_name", "must name one of the tools"
        )
    fmt = request.response_format.type
    if fmt in (pb.ResponseFormat.TYPE_JSON_OBJECT, pb.ResponseFormat.TYPE_JSON_SCHEMA):
        v.check(
            "JSON_MODE" in model.capabilities,
            "response_format",
            f"{model.name} does not support JSON response formats (no CAPABILITY_JSON_MODE)",
        )
    if fmt == pb.ResponseFormat.TYPE_JSON_SCHEMA:
        v.check(
            bool(_TOOL_NAME.match(request.response_format.schema_name)),
            "response_format.schema_name",
            "1-64 characters of [a-zA-Z0-9_-]",
        )


def tool_fields(request: pb.GenerateRequest) -> dict[str, Any]:
    """The request's function-calling and response-format parts, in chat-completions shapes."""
    out: dict[str, Any] = {}
    if request.tools:
        tools = []
        for t in request.tools:
            function: dict[str, Any] = {"name": t.name}
            if t.description:
                function["description"] = t.description
            if t.HasField("parameters"):
                function["parameters"] = json_format.MessageToDict(t.parameters)
            if t.strict:
                function["strict"] = True
            tools.append({"type": "function", "function": function})
        out["tools"] = tools
        choice = request.tool_choice
        if choice.mode == pb.ToolChoice.MODE_FUNCTION:
            out["tool_choice"] = {"type": "function", "function": {"name": choice.function_name}}
        elif choice.mode in _CHOICE:
            out["tool_choice"] = _CHOICE[choice.mode]
    out["tool_calls"] = {
        i: [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
        for i, m in enumerate(request.messages)
        if m.tool_calls
    }
    out["tool_call_ids"] = {
        i: m.tool_call_id for i, m in enumerate(request.messages) if m.tool_call_id
    }
    fmt = request.response_format
    if fmt.type == pb.ResponseFormat.TYPE_JSON_OBJECT:
        out["response_format"] = {"type": "json_object"}
    elif fmt.type == pb.ResponseFormat.TYPE_JSON_SCHEMA:
        schema: dict[str, Any] = {"name": fmt.schema_name}
        if fmt.HasField("json_schema"):
            schema["schema"] = json_format.MessageToDict(fmt.json_schema)
        if fmt.strict:
            schema["strict"] = True
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    return out


def _action(a: Action) -> pb.GuardrailAction:
    return pb.GuardrailAction(
        kind=_KIND[a.kind],
        stage=_STAGE[a.stage],
        category=a.category,
        reason=a.reason,
        count=a.count,
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _finish_reason(run: _Stream) -> pb.FinishReason:
    if run.failure is not None:
        return pb.FINISH_REASON_ERROR
    if run.out_filter.blocked is not None:
        return pb.FINISH_REASON_CONTENT_FILTER
    if run.out_filter.stopped:
        return pb.FINISH_REASON_STOP
    return _FINISH.get(run.finish.reason if run.finish else "stop", pb.FINISH_REASON_STOP)


def _citations(
    finish: Finish | None, retrieved: list[retrieval.Retrieved], text: str
) -> list[pb.Citation]:
    """The passages the provider says it cited, else the [n] markers found in the text."""
    if finish is not None and finish.cited_passage_ids:
        by_id = {h.passage.id: h for h in retrieved}
        return [
            _citation(n, by_id[pid])
            for n, pid in enumerate(finish.cited_passage_ids, start=1)
            if pid in by_id
        ]
    return (
        [_citation(n, retrieved[n - 1]) for n in retrieval.cited_indices(text, len(retrieved))]
        if retrieved
        else []
    )


def _citation(index: int, hit: retrieval.Retrieved) -> pb.Citation:
    r = hit.result
    quote = r.text[: retrieval.QUOTE_CHARS]
    return pb.Citation(
        index=index,
        document=r.document,
        document_display_name=r.document_display_name,
        chunk_id=r.chunk_id,
        chunk_index=r.chunk_index,
        start_offset=r.start_offset,
        end_offset=r.start_offset + len(quote),
        quote=quote,
        score=r.score,
    )


@dataclass
class _Prompt:
    """The prompt after the input guardrails and retrieval, and its token budget."""

    messages: list[tuple[str, str]]
    actions: list[Action]
    retrieved: list[retrieval.Retrieved] = field(default_factory=list)
    tokens: int = 0
    max_output_tokens: int = 0

    @property
    def blocked(self) -> bool:
        return any(a.kind == BLOCK for a in self.actions)

    @property
    def passages(self) -> list[Passage]:
        return [h.passage for h in self.retrieved]


@dataclass
class _Call:
    """One Generate call: what was asked, by whom, and where its answer may be cached."""

    request: pb.GenerateRequest
    identity: Identity
    model: ModelEntry
    generation_id: str
    prompt: _Prompt
    cache_key: str | None = None
    # Metadata before the first output when the deployment is certain (Orchestrator.generate).
    announce_early: bool = True

    def provider_request(self, entry: ModelEntry) -> ProviderRequest:
        """The request for one deployment; a fallback model may allow less output."""
        request = self.request
        return ProviderRequest(
            messages=self.prompt.messages,
            max_output_tokens=max(1, min(self.prompt.max_output_tokens, entry.max_output_tokens)),
            temperature=request.temperature if request.HasField("temperature") else None,
            top_p=request.top_p if request.HasField("top_p") else None,
            stop=list(request.stop),
            seed=request.seed if request.HasField("seed") else None,
            passages=self.prompt.passages,
            **tool_fields(request),
        )

    def chain(self, catalog: Catalog) -> list[ModelEntry]:
        """The model and its fallbacks; with tools or a JSON format only those that honour them
        (falling back to a model that ignores them would answer wrongly)."""
        needed = {"TOOLS"} if self.request.tools else set()
        if self.request.response_format.type in (
            pb.ResponseFormat.TYPE_JSON_OBJECT,
            pb.ResponseFormat.TYPE_JSON_SCHEMA,
        ):
            needed.add("JSON_MODE")
        return [m for m in catalog.chain(self.model) if needed <= set(m.capabilities)]


@dataclass
class _Stream:
    """What the provider stream produced so far; metered even when the caller goes away."""

    out_filter: OutputFilter
    served: list[Served] = field(default_factory=list)
    events: list[pb.GenerateResponse] = field(default_factory=list)
    sent_text: list[str] = field(default_factory=list)
    finish: Finish | None = None
    failure: ProviderError | None = None
    completion_tokens: int = 0
    finished: bool = False

    def emit(self, event: pb.GenerateResponse) -> pb.GenerateResponse:
        self.events.append(event)
        return event

    def emit_text(self, text: str) -> pb.GenerateResponse:
        self.sent_text.append(text)
        return self.emit(pb.GenerateResponse(delta=pb.TextDelta(text=text)))

    def usage(self, prompt_tokens: int) -> pb.TokenUsage:
        if self.finished:
            return self.events[-1].completion.usage
        return pb.TokenUsage(prompt_tokens=prompt_tokens, completion_tokens=self.completion_tokens)

    @property
    def completed_answer(self) -> bool:
        """Finished with a whole answer (worth caching and replaying)."""
        return self.finished and self.events[-1].completion.finish_reason in (
            pb.FINISH_REASON_STOP,
            pb.FINISH_REASON_LENGTH,
        )


def _blocked_events(
    model: ModelEntry, generation_id: str, actions: list[Action]
) -> list[pb.GenerateResponse]:
    """The whole answer to a prompt the input guardrails block: no model is called."""
    return [
        pb.GenerateResponse(
            metadata=pb.GenerationMetadata(
                model=model.name,
                provider="guardrails",
                deployment="input",
                generation_id=generation_id,
            )
        ),
        pb.GenerateResponse(
            completion=pb.Completion(
                finish_reason=pb.FINISH_REASON_CONTENT_FILTER,
                usage=pb.TokenUsage(),
                guardrail_actions=[_action(a) for a in actions],
            )
        ),
    ]


def _metadata(started: Started, generation_id: str) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        metadata=pb.GenerationMetadata(
            model=started.model.name,
            provider=started.deployment.provider,
            deployment=started.deployment.deployment,
            generation_id=generation_id,
        )
    )


def _all_failed(model: ModelEntry, exc: AllProvidersFailed) -> Exception:
    tried = ", ".join(f"{a.provider}/{a.deployment}" for a in exc.attempts)
    if exc.attempts and all(a.code in CLIENT_ERRORS for a in exc.attempts):
        # Every deployment refused the request itself: the caller's error, not an outage.
        last = exc.attempts[-1]
        return ServiceError(
            last.code,
            f"{model.name} refused the request: {last.message}",
            reason="REQUEST_REFUSED_BY_PROVIDER",
            metadata={"providers_tried": tried, "model": model.name},
        )
    return unavailable(
        f"every provider of {model.name} failed: "
        + "; ".join(
            f"{a.provider}/{a.deployment}: {a.code.name} {a.message}" for a in exc.attempts
        ),
        reason="ALL_PROVIDERS_FAILED",
        metadata={"providers_tried": tried, "model": model.name},
    )


def _fit_context_window(request: pb.GenerateRequest, model: ModelEntry, prompt: _Prompt) -> None:
    """Set the output budget, or refuse a prompt that leaves no room in the context window."""
    window = model.context_window_tokens
    if request.HasField("max_output_tokens"):
        max_out = request.max_output_tokens
        fits = prompt.tokens + max_out <= window
    else:
        max_out = min(model.max_output_tokens, window - prompt.tokens)
        fits = max_out >= 1
    if not fits:
        sizes = (
            f"prompt_tokens={prompt.tokens}, max_output_tokens={max_out}, "
            f"context_window_tokens={window}"
        )
        raise invalid_argument(
            f"the prompt does not fit {model.name}'s context window ({sizes})",
            [("messages", f"prompt does not fit the context window: {sizes}")],
            reason="CONTEXT_WINDOW_EXCEEDED",
            metadata={
                "prompt_tokens": str(prompt.tokens),
                "max_output_tokens": str(max_out),
                "context_window_tokens": str(window),
            },
        )
    prompt.max_output_tokens = max_out


class Orchestrator:
    def __init__(
        self,
        catalog: Catalog,
        router: Router,
        rails: Guardrails,
        store: GenerationStore,
        channels: Channels,
        usage: UsageClient | None = None,
    ) -> None:
        self.catalog = catalog
        self.router = router
        self.rails = rails
        self.store = store
        self.channels = channels
        self.usage = usage
        self.documents = retrieval.ReadyDocuments(channels, store.cache)
        # Cache writes run off the response path; shutdown waits for them (drain).
        self.background = BackgroundTasks("orchestrator")

    def count(self, request_messages: list[tuple[str, str]], passages: list[Passage]) -> int:
        return count_messages(request_messages) + sum(
            count_text(p.text) + MESSAGE_OVERHEAD for p in passages
        )

    async def generate(
        self, request: pb.GenerateRequest, identity: Identity, announce_early: bool = True
    ) -> AsyncIterator[pb.GenerateResponse]:
        """The events of one generation. With `announce_early`, the metadata goes out as soon
        as the deployment that serves is certain, possibly before an error status (gRPC
        callers); without, only with the first output (callers for whom the first event
        commits a success, e.g. the gateway's JSON/HTTP transcoding)."""
        model = self.catalog.get(request.model)
        validate(request, model)
        replay = await self._replay(request, identity)
        if replay is not None:
            for event in replay:
                yield event
            return
        generation_id = str(uuid.uuid4())
        prompt = self._guard_input(request)
        if prompt.blocked:
            for event in _blocked_events(model, generation_id, prompt.actions):
                yield event
            return
        await self._retrieve(request, identity, model, prompt)
        prompt.tokens = self.count(prompt.messages, prompt.passages)
        _fit_context_window(request, model, prompt)
        call = _Call(
            request, identity, model, generation_id, prompt, announce_early=announce_early
        )
        if (
            request.HasField("temperature")
            and request.temperature == 0
            and not request.disable_cache
        ):
            call.cache_key = response_key(identity.org, request)
            hit = await self.store.cached_response(call.cache_key)
            if hit is not None:
                async for event in self._from_cache(hit, generation_id, identity, model):
                    yield event
                return
        async with aclosing(self._serve(call)) as events:
            async for event in events:
                yield event

    async def _replay(
        self, request: pb.GenerateRequest, identity: Identity
    ) -> list[pb.GenerateResponse] | None:
        """A repeated request_id gets the stored answer again, marked cached (AIP-155)."""
        if not request.request_id:
            return None
        replay = await self.store.replay(identity.org, request.request_id)
        for event in replay or []:
            if event.HasField("completion"):
                event.completion.cached = True
        return replay

    def _guard_input(self, request: pb.GenerateRequest) -> _Prompt:
        """Redact (or block on) the caller's messages before any model or cache sees them."""
        messages = [(ROLE_NAMES[m.role], m.content) for m in request.messages]
        contents, actions = self.rails.check_input(c for _, c in messages)
        prompt = _Prompt(messages, actions)
        if not prompt.blocked:
            prompt.messages = [(role, content) for (role, _), content in zip(messages, contents)]
        return prompt

    async def _retrieve(
        self, request: pb.GenerateRequest, identity: Identity, model: ModelEntry, prompt: _Prompt
    ) -> None:
        """Add the organization's passages for the last message, redacted like the messages.
        Without retrieval options, models that can ground answers do so when the organization
        has READY documents (a newcomer's first chat needs no settings)."""
        options = request.retrieval
        if not request.HasField("retrieval"):
            if (
                "RETRIEVAL" not in model.capabilities
                or prompt.messages[-1][0] != "user"
                or not await self.documents.ready(identity)
            ):
                return
            options = pb.RetrievalOptions(enabled=True)
        if not options.enabled:
            return
        retrieved = await retrieval.search(
            self.channels,
            identity,
            prompt.messages[-1][1],
            options.top_k or 5,
            list(options.documents),
            dict(options.metadata_filters),
        )
        # Retrieved text is prompt input too: redact it before any model sees it.
        texts, more = self.rails.check_input(h.passage.text for h in retrieved)
        if texts:
            retrieved = [
                retrieval.Retrieved(Passage(h.passage.id, t), h.result)
                for h, t in zip(retrieved, texts)
            ]
            prompt.actions += more
        prompt.retrieved = retrieved

    async def _serve(self, call: _Call) -> AsyncGenerator[pb.GenerateResponse, None]:
        """Stream from a provider under a budget hold; meter and cache whatever happens."""
        prompt = call.prompt
        # Priced models hold budget for the worst case first (RESOURCE_EXHAUSTED when used up).
        async with metering.budget_hold(
            self.usage,
            call.identity,
            call.model,
            prompt.tokens,
            prompt.max_output_tokens,
            call.generation_id,
        ) as spend:
            run = _Stream(self.rails.output_filter(call.request.stop))
            try:
                async with aclosing(self._provider_output(call, run)) as output:
                    async for event in output:
                        yield event
                tail = run.out_filter.flush() if run.failure is None else ""
                if tail:
                    yield run.emit_text(tail)
                completion = self._complete(call, run)
                # Metered durably BEFORE the completion is sent: a caller that saw it is billed
                # even if this process is killed right after.
                await self._meter(call, run, spend)
                yield completion
            finally:
                # Runs on cancellation too: what was produced is metered and completed answers
                # cached.
                if run.served and not spend.metered:
                    await self._meter(call, run, spend)
                self._keep(call, run)

    async def _provider_output(
        self, call: _Call, run: _Stream
    ) -> AsyncGenerator[pb.GenerateResponse, None]:
        """Metadata (as soon as the router knows the deployment that serves), then filtered
        deltas, until the provider finishes, fails or a filter ends it."""
        stream = self.router.generate(
            call.chain(self.catalog), call.provider_request, run.served, call.announce_early
        )
        try:
            async for item in stream:
                if isinstance(item, Started):
                    yield run.emit(_metadata(item, call.generation_id))
                    continue
                if isinstance(item, Finish):
                    run.finish = item
                    break
                run.completion_tokens += 1
                if isinstance(item, ToolCallPiece):
                    yield run.emit(
                        pb.GenerateResponse(
                            tool_call=pb.ToolCallDelta(
                                index=item.index,
                                id=item.id,
                                name=item.name,
                                arguments=item.arguments,
                            )
                        )
                    )
                    continue
                text = run.out_filter.feed(item.text)
                if text:
                    yield run.emit_text(text)
                if run.out_filter.done:
                    break
        except AllProvidersFailed as exc:
            raise _all_failed(call.model, exc) from None
        except ProviderError as exc:
            run.failure = exc
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    def _complete(self, call: _Call, run: _Stream) -> pb.GenerateResponse:
        event = run.emit(pb.GenerateResponse(completion=self._completion(call, run)))
        run.finished = True
        return event

    async def _meter(self, call: _Call, run: _Stream, spend: metering.Spend) -> None:
        """Queue the tokens produced so far in the durable outbox; the hold settles them."""
        usage = run.usage(call.prompt.tokens)
        spend.prompt_tokens, spend.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        spend.metered = True
        await metering.report_tokens(
            self.usage,
            call.identity,
            run.served[0].model.name,
            call.generation_id,
            usage.prompt_tokens,
            usage.completion_tokens,
        )

    def _keep(self, call: _Call, run: _Stream) -> None:
        """Keep a whole answer for the response cache and for replays (off the response path)."""
        if run.completed_answer:
            if call.cache_key is not None:
                self.background.start(
                    self.store.store_response(call.cache_key, run.events), "cache-response"
                )
            if call.request.request_id:
                self.background.start(
                    self.store.store_replay(call.identity.org, call.request.request_id, run.events),
                    "cache-replay",
                )

    async def drain(self) -> None:
        """Let pending cache writes finish (at shutdown)."""
        await self.background.wait(timeout=5)

    def _completion(self, call: _Call, run: _Stream) -> pb.Completion:
        finish, failure, out_filter = run.finish, run.failure, run.out_filter
        prompt_tokens, completion_tokens = call.prompt.tokens, run.completion_tokens
        if finish is not None and finish.prompt_tokens is not None:
            prompt_tokens = finish.prompt_tokens
        if finish is not None and finish.completion_tokens is not None:
            completion_tokens = finish.completion_tokens
        completion = pb.Completion(
            finish_reason=_finish_reason(run),
            usage=pb.TokenUsage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
            citations=_citations(finish, call.prompt.retrieved, "".join(run.sent_text)),
            guardrail_actions=[_action(a) for a in [*call.prompt.actions, *out_filter.actions()]],
            provider_attempts=[
                pb.ProviderAttempt(
                    provider=a.provider,
                    deployment=a.deployment,
                    status=status_pb2.Status(code=a.code.value[0], message=a.message),
                    duration=_duration(a.seconds),
                )
                for a in run.served[0].attempts
            ],
        )
        if failure is not None:
            completion.error.CopyFrom(
                status_pb2.Status(code=failure.code.value[0], message=failure.message)
            )
            if completion.provider_attempts:
                completion.provider_attempts[-1].status.CopyFrom(completion.error)
        return completion

    async def _from_cache(
        self,
        hit: list[pb.GenerateResponse],
        generation_id: str,
        identity: Identity,
        model: ModelEntry,
    ) -> AsyncIterator[pb.GenerateResponse]:
        for event in hit:
            if event.HasField("metadata"):
                event.metadata.generation_id = generation_id
            if event.HasField("completion"):
                event.completion.cached = True
                del event.completion.provider_attempts[:]
                await metering.report_tokens(
                    self.usage,
                    identity,
                    model.name,
                    generation_id,
                    event.completion.usage.prompt_tokens,
                    event.completion.usage.completion_tokens,
                )
            yield event
