"""Chat completions on the Orchestrator's Generate: translate OpenAI's request into a
GenerateRequest, and Generate's events (metadata, deltas, tool calls, completion) back into one
chat.completion or a stream of chat.completion.chunk events.

Everything a native Generate gets applies unchanged — budgets, guardrails, caching, fallback,
metering — because this is a Generate call made for the same caller identity. Usage in the
final chunk is the Orchestrator's metered count, so streamed spend is never recorded as zero.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from aimesh.orchestrator.v1 import orchestrator_pb2 as opb
from aimesh.orchestrator.v1 import orchestrator_pb2_grpc
from google.protobuf import json_format, struct_pb2

from services.common.identity import Identity
from services.common.names import resource
from services.edge import schemas
from services.edge.errors import OpenAIError, bad_request, from_rpc_error, unsupported

GENERATE_TIMEOUT_SECONDS = 600.0
_ROLES = {"system": opb.ROLE_SYSTEM, "developer": opb.ROLE_SYSTEM, "user": opb.ROLE_USER,
          "assistant": opb.ROLE_ASSISTANT, "tool": opb.ROLE_TOOL}
_FINISH = {opb.FINISH_REASON_STOP: "stop", opb.FINISH_REASON_LENGTH: "length",
           opb.FINISH_REASON_CONTENT_FILTER: "content_filter",
           opb.FINISH_REASON_TOOL_CALLS: "tool_calls", opb.FINISH_REASON_CANCELLED: "stop"}
_CHOICE = {"auto": opb.ToolChoice.MODE_AUTO, "none": opb.ToolChoice.MODE_NONE,
           "required": opb.ToolChoice.MODE_REQUIRED}
_FORMATS = {
    "text": opb.ResponseFormat.TYPE_TEXT,
    "json_object": opb.ResponseFormat.TYPE_JSON_OBJECT,
    "json_schema": opb.ResponseFormat.TYPE_JSON_SCHEMA,
}
# Orchestrator field paths -> the OpenAI parameter the caller sent (for error `param`).
FIELD_NAMES = {
    "max_output_tokens": "max_tokens",
    "response_format": "response_format",
    "tool_choice": "tool_choice",
    "tools": "tools",
    "messages": "messages",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop": "stop",
    "seed": "seed",
    "model": "model",
}


MODEL = resource("orchestrator.aimesh.dev/Model")


def model_name(model_id: str) -> str:
    """OpenAI model ids are aimesh model names without the `models/` prefix (both accepted)."""
    return model_id if MODEL.matches(model_id) else MODEL.format(model_id)


def _struct(value: dict[str, object], param: str) -> struct_pb2.Struct:
    try:
        return json_format.ParseDict(value, struct_pb2.Struct())
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise bad_request(f"{param} must be a JSON object: {exc}", param) from None


def _text(content: str | list[schemas.ContentPart] | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if part.type not in ("text", "refusal") or part.text is None:
            raise unsupported(
                f"{where}.content[{j}].type", f"content part type {part.type!r} (only text parts)"
            )
        texts.append(part.text)
    return "\n".join(texts)


def _refuse_unsupported(req: schemas.ChatCompletionRequest) -> None:
    """OpenAI parameters this server does not implement: a clear 400 unless neutral."""
    if req.n is not None and req.n != 1:
        raise unsupported("n", "n > 1 (several choices per request); send one request per choice")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name) not in (None, 0, 0.0):
            raise unsupported(name, f"a non-zero {name}")
    if req.logprobs or req.top_logprobs:
        raise unsupported("logprobs", "logprobs")
    if req.logit_bias:
        raise unsupported("logit_bias", "logit_bias")
    if req.modalities is not None and req.modalities != ["text"]:
        raise unsupported("modalities", "output modalities other than text")
    if req.audio is not None:
        raise unsupported("audio", "audio output (use /openai/v1/audio/speech)")
    for name in ("prediction", "reasoning_effort", "web_search_options"):
        if getattr(req, name) is not None:
            raise unsupported(name, name)
    if req.store:
        raise unsupported("store", "store=true (completions are not stored)")
    if req.service_tier not in (None, "auto", "default"):
        raise unsupported("service_tier", f"service_tier {req.service_tier!r}")
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")


def to_generate(req: schemas.ChatCompletionRequest) -> opb.GenerateRequest:
    """The GenerateRequest for an OpenAI chat-completions request (400 for what we refuse)."""
    _refuse_unsupported(req)
    out = opb.GenerateRequest(model=model_name(req.model))
    system: list[str] = []
    for i, m in enumerate(req.messages):
        where = f"messages[{i}]"
        text = _text(m.content, where)
        if m.role in ("system", "developer") and not out.messages:
            system.append(text)  # leading system/developer messages form one system prompt
            continue
        if system and not out.messages:
            out.messages.append(opb.ChatMessage(role=opb.ROLE_SYSTEM, content="\n\n".join(system)))
        message = opb.ChatMessage(role=_ROLES[m.role], content=text)
        for call in m.tool_calls or ():
            message.tool_calls.append(
                opb.ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
            )
        if m.role == "tool":
            if not m.tool_call_id:
                raise bad_request(
                    f"{where}.tool_call_id is required for role 'tool'", f"{where}.tool_call_id"
                )
            message.tool_call_id = m.tool_call_id
        out.messages.append(message)
    if system and not out.messages:
        out.messages.append(opb.ChatMessage(role=opb.ROLE_SYSTEM, content="\n\n".join(system)))
    if req.temperature is not None:
        out.temperature = req.temperature
    if req.top_p is not None:
        out.top_p = req.top_p
    max_tokens = (
        req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    )
    if max_tokens is not None:
        out.max_output_tokens = min(max_tokens, 2**31 - 1)
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > schemas.MAX_STOP:
        raise bad_request(f"stop: at most {schemas.MAX_STOP} sequences", "stop")
    out.stop.extend(stops)
    if req.seed is not None:
        out.seed = req.seed
    for tool in req.tools or ():
        spec = opb.Tool(
            name=tool.function.name,
            description=tool.function.description or "",
            strict=bool(tool.function.strict),
        )
        if tool.function.parameters is not None:
            spec.parameters.CopyFrom(_struct(tool.function.parameters, "tools.function.parameters"))
        out.tools.append(spec)
    choice = req.tool_choice
    if isinstance(choice, str):
        out.tool_choice.mode = _CHOICE[choice]
    elif choice is not None:
        out.tool_choice.mode = opb.ToolChoice.MODE_FUNCTION
        out.tool_choice.function_name = choice.function.name
    fmt = req.response_format
    if fmt is not None:
        out.response_format.type = _FORMATS[fmt.type]
        if fmt.type == "json_schema":
            if fmt.json_schema is None:
                raise bad_request(
                    "response_format.json_schema is required for type json_schema",
                    "response_format.json_schema",
                )
            out.response_format.schema_name = fmt.json_schema.name
            out.response_format.strict = bool(fmt.json_schema.strict)
            if fmt.json_schema.schema_ is not None:
                out.response_format.json_schema.CopyFrom(
                    _struct(fmt.json_schema.schema_, "response_format.json_schema.schema")
                )
    return out


@dataclass
class _Answer:
    """Generate's events folded into what a chat.completion needs."""

    completion_id: str = ""
    model: str = ""
    text: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, str]] = field(default_factory=dict)
    completion: opb.Completion | None = None

    def feed(self, event: opb.GenerateResponse) -> None:
        kind = event.WhichOneof("event")
        if kind == "metadata":
            self.completion_id = f"chatcmpl-{event.metadata.generation_id}"
            self.model = MODEL.id(event.metadata.model, "model")
        elif kind == "delta":
            self.text.append(event.delta.text)
        elif kind == "tool_call":
            call = self.calls.setdefault(
                event.tool_call.index, {"id": "", "name": "", "arguments": ""}
            )
            call["id"] = call["id"] or event.tool_call.id
            call["name"] = call["name"] or event.tool_call.name
            call["arguments"] += event.tool_call.arguments
        elif kind == "completion":
            self.completion = event.completion


def usage_of(completion: opb.Completion) -> schemas.Usage:
    u = completion.usage
    return schemas.Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
    )


def in_band_error(completion: opb.Completion) -> OpenAIError:
    """A provider failure after output started (finish_reason ERROR)."""
    message = completion.error.message or "generation failed after output had started"
    return OpenAIError(
        502 if completion.error.code != grpc.StatusCode.DEADLINE_EXCEEDED.value[0] else 504,
        message,
        code="generation_failed",
    )


class ChatCompletions:
    def __init__(self, orchestrator: orchestrator_pb2_grpc.OrchestratorServiceStub) -> None:
        self.orchestrator = orchestrator

    def _call(self, request: opb.GenerateRequest, identity: Identity) -> grpc.aio.UnaryStreamCall:
        return self.orchestrator.Generate(
            request, metadata=identity.to_headers(), timeout=GENERATE_TIMEOUT_SECONDS
        )

    async def complete(
        self, req: schemas.ChatCompletionRequest, identity: Identity
    ) -> dict[str, object]:
        request = to_generate(req)
        answer = _Answer()
        call = self._call(request, identity)
        try:
            async for event in call:
                answer.feed(event)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, FIELD_NAMES) from None
        finally:
            call.cancel()  # the client went away mid-answer: stop generating (what ran is metered)
        completion = answer.completion
        if completion is None:
            raise OpenAIError(
                502, "generation ended without a completion", code="generation_failed"
            )
        if completion.finish_reason == opb.FINISH_REASON_ERROR:
            raise in_band_error(completion)
        text = "".join(answer.text)
        message = schemas.AssistantMessage(
            content=text if text or not answer.calls else None, refusal=None
        )
        if answer.calls:
            message.tool_calls = [
                schemas.ToolCall(
                    id=c["id"],
                    function=schemas.FunctionCall(name=c["name"], arguments=c["arguments"]),
                )
                for _, c in sorted(answer.calls.items())
            ]
        return schemas.ChatCompletion(
            id=answer.completion_id,
            created=int(time.time()),
            model=answer.model,
            choices=[
                schemas.Choice(
                    message=message,
                    finish_reason=_FINISH.get(completion.finish_reason, "stop"),
                    logprobs=None,
                )
            ],
            usage=usage_of(completion),
        ).wire()

    async def stream(
        self, req: schemas.ChatCompletionRequest, identity: Identity
    ) -> AsyncIterator[bytes]:
        """Open the stream; errors before the first output raise here (a plain HTTP error), the
        returned iterator yields SSE `data:` lines, ending with `data: [DONE]`."""
        request = to_generate(req)
        call = self._call(request, identity)
        events = call.__aiter__()
        opening: list[opb.GenerateResponse] = []
        try:
            # The metadata may come before the deployment produced anything, and an error
            # status may still follow it: the 200 is committed only at the event after it.
            while not opening or opening[-1].HasField("metadata"):
                opening.append(await events.__anext__())
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, FIELD_NAMES) from None
        except StopAsyncIteration:
            raise OpenAIError(
                502, "generation ended before it started", code="generation_failed"
            ) from None
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _sse(call, opening, events, include_usage)


def _data(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _after(
    opening: list[opb.GenerateResponse], events: AsyncIterator[opb.GenerateResponse]
) -> AsyncIterator[opb.GenerateResponse]:
    for event in opening:
        yield event
    async for event in events:
        yield event


async def _sse(
    call: grpc.aio.UnaryStreamCall,
    opening: list[opb.GenerateResponse],
    events: AsyncIterator[opb.GenerateResponse],
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """`opening`: the events read before the HTTP status was committed (metadata first)."""
    answer = _Answer()
    answer.feed(opening[0])
    created = int(time.time())

    def chunk(delta: schemas.Delta, finish: str | None = None) -> bytes:
        out = schemas.ChatCompletionChunk(
            id=answer.completion_id,
            created=created,
            model=answer.model,
            choices=[schemas.ChunkChoice(delta=delta, finish_reason=finish)],
        )
        if include_usage:
            out.usage = None  # set, so it is sent as null: OpenAI's shape with include_usage
        return _data(out.wire())

    # Text deltas are most of the stream: serialize the chunk model once around a marker and
    # splice each piece's JSON string in (the same bytes `chunk` would give, without the cost).
    marker = "\u0000delta\u0000"
    head, _, tail = chunk(schemas.Delta(content=marker)).partition(json.dumps(marker).encode())

    try:
        yield chunk(schemas.Delta(role="assistant", content=""))
        try:
            async for event in _after(opening[1:], events):
                kind = event.WhichOneof("event")
                if kind == "delta":
                    yield head + json.dumps(event.delta.text).encode() + tail
                elif kind == "tool_call":
                    piece = event.tool_call
                    delta = schemas.ToolCallDelta(
                        index=piece.index,
                        function=schemas.ToolCallFunctionDelta(arguments=piece.arguments),
                    )
                    if piece.id or piece.name:
                        delta.id, delta.type = piece.id, "function"
                        delta.function.name = piece.name
                    yield chunk(schemas.Delta(tool_calls=[delta]))
                elif kind == "completion":
                    completion = event.completion
                    if completion.finish_reason == opb.FINISH_REASON_ERROR:
                        yield _data(in_band_error(completion).body())
                        break
                    yield chunk(schemas.Delta(), _FINISH.get(completion.finish_reason, "stop"))
                    if include_usage:
                        yield _data(
                            schemas.ChatCompletionChunk(
                                id=answer.completion_id,
                                created=created,
                                model=answer.model,
                                choices=[],
                                usage=usage_of(completion),
                            ).wire()
                        )
        except grpc.aio.AioRpcError as exc:
            yield _data(from_rpc_error(exc, FIELD_NAMES).body())
        yield b"data: [DONE]\n\n"
    finally:
        # The client went away (or we are done): cancel Generate, which stops the provider and
        # meters what was produced.
        call.cancel()
