"""The edge's HTTP surface: routes decode the OpenAI request, call the domain (which calls the
gRPC services as the `edge` mesh identity, forwarding the caller's identity headers), and
encode OpenAI's response. Every error leaves in OpenAI's error shape (services/edge/errors.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from aimesh.knowledge.v1 import knowledge_pb2_grpc
from aimesh.orchestrator.v1 import orchestrator_pb2 as opb
from aimesh.orchestrator.v1 import orchestrator_pb2_grpc
from aimesh.speech.v1 import speech_pb2_grpc
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Lifespan

from services.common.channels import Channels
from services.common.config import Settings
from services.common.identity import Identity, identity_from_metadata
from services.edge import realtime, schemas
from services.edge.audio import (
    MAX_UPLOAD_BYTES,
    SPEECH_MODEL,
    TRANSCRIPTION_MODEL,
    Audio,
    TranscriptionForm,
)
from services.edge.chat import MODEL, ChatCompletions, model_name
from services.edge.embeddings import EMBEDDING_MODEL, Embeddings
from services.edge.errors import OpenAIError, from_rpc_error

log = logging.getLogger("aimesh.edge")

PREFIX = "/openai/v1"
# The edge is ready when the service every endpoint needs answers its health check.
READINESS_DEPENDENCY = "orchestrator"


class Backends:
    """gRPC stubs of the services the edge calls, over one pooled channel per service."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.channels = Channels(settings)
        self.orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(
            self.channels.get("orchestrator")
        )
        self.chat = ChatCompletions(self.orchestrator)
        self.audio = Audio(speech_pb2_grpc.SpeechServiceStub(self.channels.get("speech")))
        self.embeddings = Embeddings(
            knowledge_pb2_grpc.KnowledgeServiceStub(self.channels.get("knowledge"))
        )

    async def ready(self) -> bool:
        stub = health_pb2_grpc.HealthStub(self.channels.get(READINESS_DEPENDENCY))
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self.channels.close()


def caller(request: Request) -> Identity:
    """The authenticated caller the gateway established (x-aimesh-* headers)."""
    identity = identity_from_metadata(request.headers.items())
    if identity is None:
        raise OpenAIError(
            401,
            "no caller identity: call through the gateway with 'Authorization: Bearer <API key>'",
            kind="authentication_error",
            code="invalid_api_key",
        )
    return identity


def forwarded(request: Request, identity: Identity) -> list[tuple[str, str]]:
    """gRPC metadata for a downstream call: the caller's identity and Envoy's request id (which
    services use to meter a retried request once)."""
    headers = identity.to_headers()
    request_id = request.headers.get("x-request-id")
    if request_id:
        headers.append(("x-request-id", request_id))
    return headers


# Knowledge's embedding model and Speech's recognizer and synthesizer are listed beside the
# Orchestrator's chat models.
SERVICE_MODELS = {
    m: schemas.ModelObject(id=m, created=0, owned_by="triton")
    for m in (EMBEDDING_MODEL, TRANSCRIPTION_MODEL, SPEECH_MODEL)
}
# Multipart fields besides the file are short; the whole upload is bounded by the file limit.
MAX_FORM_FIELD_BYTES = 64 * 1024


def model_object(model: opb.Model) -> schemas.ModelObject:
    # The catalog keeps no creation time; 0 says "unknown" in the field OpenAI requires.
    return schemas.ModelObject(
        id=MODEL.id(model.name, "model"), created=0, owned_by=model.provider or "aimesh"
    )


def error_response(error: OpenAIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


def _validation_error(exc: RequestValidationError) -> OpenAIError:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return OpenAIError(
            400,
            "We could not parse the JSON body of your request. (HINT: This "
            "likely means you aren't using your HTTP library correctly. The OpenAI "
            "API expects a JSON payload.)",
            code="invalid_json",
        )
    if first.get("type") == "extra_forbidden":
        return OpenAIError(
            400,
            f"Unrecognized request argument supplied: {param}",
            param=param,
            code="unknown_parameter",
        )
    if first.get("type") == "missing":
        return OpenAIError(
            400,
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    return OpenAIError(
        400,
        f"Invalid value for '{param}': {first.get('msg', 'invalid')}",
        param=param,
        code="invalid_value",
    )


def create_app(settings: Settings, backends: Backends | None = None) -> FastAPI:
    """The edge's app: the OpenAI routes under /openai/v1, health probes, OpenAI-shaped errors.
    A feature with routes of its own adds one `app.include_router(...)` line here."""
    app = FastAPI(
        title="aimesh OpenAI-compatible API",
        version="1",
        lifespan=_lifespan(settings, backends),
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(probes)
    app.include_router(openai_routes)
    app.include_router(realtime.router)
    return app


def _lifespan(settings: Settings, backends: Backends | None) -> Lifespan:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.backends = backends or Backends(settings)
        try:
            yield
        finally:
            await app.state.backends.close()

    return lifespan


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape: ours, validation, routing (404/405), crashes."""

    async def openai_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, OpenAIError)
        return error_response(exc)

    async def invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(_validation_error(exc))

    async def http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(_routing_error(request, exc))

    async def crash(_: Request, exc: Exception) -> Response:
        log.exception("edge request failed", exc_info=exc)
        return error_response(
            OpenAIError(500, "internal error in the aimesh edge", code="internal_error")
        )

    app.add_exception_handler(OpenAIError, openai_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http)
    app.add_exception_handler(Exception, crash)


def _routing_error(request: Request, exc: HTTPException) -> OpenAIError:
    if exc.status_code == 404:
        return OpenAIError(
            404, f"Invalid URL ({request.method} {request.url.path})", code="unknown_url"
        )
    if exc.status_code == 405:
        return OpenAIError(
            405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed"
        )
    return OpenAIError(exc.status_code, str(exc.detail))


def backends_of(request: Request) -> Backends:
    backends: Backends = request.app.state.backends
    return backends


# --- health probes (Envoy's health checks; not under /openai/v1) ---------------------------

probes = APIRouter(include_in_schema=False)


@probes.get("/healthz")
async def healthz() -> PlainTextResponse:
    return PlainTextResponse("ok")


@probes.get("/readyz")
async def readyz(request: Request) -> PlainTextResponse:
    if await backends_of(request).ready():
        return PlainTextResponse("ready")
    return PlainTextResponse(f"waiting for {READINESS_DEPENDENCY}", status_code=503)


# --- the OpenAI routes ---------------------------------------------------------------------

openai_routes = APIRouter(prefix=PREFIX)


@openai_routes.get("/models", response_model=schemas.ModelList)
async def list_models(request: Request) -> dict[str, Any]:
    identity = caller(request)
    stub = backends_of(request).orchestrator
    models: list[schemas.ModelObject] = []
    token = ""
    try:
        while True:
            page = await stub.ListModels(
                opb.ListModelsRequest(page_size=1000, page_token=token),
                metadata=identity.to_headers(),
            )
            models += [model_object(m) for m in page.models]
            token = page.next_page_token
            if not token:
                break
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None
    return schemas.ModelList(data=[*models, *SERVICE_MODELS.values()]).wire()


@openai_routes.get("/models/{model_id:path}", response_model=schemas.ModelObject)
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    identity = caller(request)
    if model_id in SERVICE_MODELS:
        return SERVICE_MODELS[model_id].wire()
    try:
        model = await backends_of(request).orchestrator.GetModel(
            opb.GetModelRequest(name=model_name(model_id)), metadata=identity.to_headers()
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            raise OpenAIError(
                404, f"The model '{model_id}' does not exist", param="model", code="model_not_found"
            ) from None
        raise from_rpc_error(exc) from None
    return model_object(model).wire()


@openai_routes.post("/chat/completions", response_model=schemas.ChatCompletion)
async def chat_completions(body: schemas.ChatCompletionRequest, request: Request) -> Any:
    identity = caller(request)
    chat = backends_of(request).chat
    if body.stream:
        return StreamingResponse(
            await chat.stream(body, identity),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )
    return JSONResponse(await chat.complete(body, identity))


@openai_routes.post("/embeddings", response_model=schemas.EmbeddingList)
async def embeddings(body: schemas.EmbeddingRequest, request: Request) -> Any:
    identity = caller(request)
    service = backends_of(request).embeddings
    return JSONResponse(await service.create(body, identity, forwarded(request, identity)))


@openai_routes.post("/audio/transcriptions")
async def transcriptions(request: Request) -> Response:
    identity = caller(request)
    length = int(request.headers.get("content-length") or 0)
    if length > MAX_UPLOAD_BYTES + MAX_FORM_FIELD_BYTES:
        raise OpenAIError(
            413,
            f"upload of {length:,} bytes; the file may be at most {MAX_UPLOAD_BYTES:,}",
            param="file",
            code="file_too_large",
        )
    form = await _transcription_form(request)
    body, media_type = await backends_of(request).audio.transcribe(
        form, forwarded(request, identity)
    )
    return Response(body, media_type=media_type)


@openai_routes.post("/audio/speech")
async def speech(body: schemas.SpeechRequest, request: Request) -> Response:
    identity = caller(request)
    audio, media_type = await backends_of(request).audio.speak(body, forwarded(request, identity))
    if isinstance(audio, bytes):
        return Response(audio, media_type=media_type)
    return StreamingResponse(audio, media_type=media_type)


async def _transcription_form(request: Request) -> TranscriptionForm:
    """The multipart fields OpenAI's clients send (400 for a missing file or model)."""
    form = await request.form(max_files=1, max_fields=32, max_part_size=MAX_FORM_FIELD_BYTES)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise OpenAIError(
            400,
            "Missing required parameter: 'file' (a multipart/form-data upload)",
            param="file",
            code="missing_required_parameter",
        )
    model = form.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(
            400,
            "Missing required parameter: 'model'.",
            param="model",
            code="missing_required_parameter",
        )
    if str(form.get("stream", "false")).lower() == "true":
        raise OpenAIError(
            400,
            "streamed transcription is not supported by this server",
            param="stream",
            code="unsupported_parameter",
        )
    audio = await upload.read(MAX_UPLOAD_BYTES + 1)
    granularities = [
        str(g)
        for key in ("timestamp_granularities[]", "timestamp_granularities")
        for g in form.getlist(key)
    ]
    language = form.get("language")
    return TranscriptionForm(
        audio=audio,
        model=model,
        language=language if isinstance(language, str) else "en-US",
        response_format=str(form.get("response_format") or "json"),
        granularities=tuple(granularities),
    )
