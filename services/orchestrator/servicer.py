"""Orchestrator's gRPC surface: thin — decode, authorize, call the domain logic, encode."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from aimesh.orchestrator.v1 import orchestrator_pb2 as pb
from aimesh.orchestrator.v1 import orchestrator_pb2_grpc

from services.common.channels import Channels
from services.common.errors import ServiceError
from services.common.identity import HEADER_TRANSCODED, require_identity
from services.common.pagination import Paginator
from services.common.server import Binding, Runtime, ServiceSpec, spec_for
from services.common.streams import coalesced, is_text_delta, merge_text_deltas
from services.common.triton import RESPONDER_MODEL, TritonClient
from services.common.usage_client import UsageClient
from services.orchestrator import metrics
from services.orchestrator.cache import GenerationStore
from services.orchestrator.catalog import Catalog, ModelEntry
from services.orchestrator.generation import Orchestrator
from services.orchestrator.guardrails import Guardrails
from services.orchestrator.metering import cost_micros
from services.orchestrator.providers import Provider
from services.orchestrator.providers.anthropic import AnthropicProvider
from services.orchestrator.providers.http import make_client
from services.orchestrator.providers.openai import OpenAIProvider
from services.orchestrator.providers.triton import TritonProvider
from services.orchestrator.routing import Router
from services.orchestrator.tokens import count_prompt

_CAPS = {"CHAT": pb.Model.CAPABILITY_CHAT, "STREAMING": pb.Model.CAPABILITY_STREAMING,
         "RETRIEVAL": pb.Model.CAPABILITY_RETRIEVAL, "SEED": pb.Model.CAPABILITY_SEED,
         "TOOLS": pb.Model.CAPABILITY_TOOLS, "JSON_MODE": pb.Model.CAPABILITY_JSON_MODE}


def model_message(m: ModelEntry) -> pb.Model:
    return pb.Model(
        name=m.name, display_name=m.display_name, description=m.description, provider=m.provider,
        context_window_tokens=m.context_window_tokens, max_output_tokens=m.max_output_tokens,
        prompt_price_micros_per_million_tokens=m.prompt_price_micros_per_million_tokens,
        completion_price_micros_per_million_tokens=m.completion_price_micros_per_million_tokens,
        currency_code=m.currency_code, capabilities=[_CAPS[c] for c in m.capabilities],
    )


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, runtime: Runtime, catalog: Catalog | None = None,
                 providers: dict[str, Provider] | None = None) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.catalog = catalog or Catalog.load(settings)
        if providers is None:
            http = make_client()
            triton = TritonClient.from_settings(settings)
            providers = {
                "triton": TritonProvider(triton),
                "openai": OpenAIProvider(settings, http),
                "anthropic": AnthropicProvider(settings, http),
            }
            runtime.on_shutdown(http.aclose)
            runtime.on_shutdown(triton.close)
            if any(d.provider == "triton" for m in self.catalog.models() for d in m.deployments):
                runtime.add_health_check("triton", lambda: triton.is_model_ready(RESPONDER_MODEL))
        self.channels = Channels(settings)
        self.pages = Paginator(settings)
        self.router = Router(
            providers,
            settings.circuit_failure_threshold,
            settings.circuit_open_seconds,
            settings.provider_first_token_seconds,
        )
        metrics.watch_circuits(self.router)
        # Token usage goes through the shared client's durable outbox (in this service's schema).
        self.usage = (
            UsageClient(runtime, channels=self.channels) if runtime.db is not None else None
        )
        self.orchestrator = Orchestrator(
            self.catalog,
            self.router,
            Guardrails.from_setting(settings.guardrail_blocklist),
            GenerationStore(runtime.cache),
            self.channels,
            self.usage,
        )
        runtime.on_shutdown(self.channels.close)
        runtime.on_shutdown(self.orchestrator.drain)
        runtime.spawn(self.orchestrator.documents.listen(), "corpus-announcements")

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        identity = require_identity(context.invocation_metadata())
        models = self.catalog.models()
        page, token = self.pages.start(request, identity.org).slice(models)
        return pb.ListModelsResponse(
            models=[model_message(m) for m in page], next_page_token=token, total_size=len(models)
        )

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.Model:
        require_identity(context.invocation_metadata())
        return model_message(self.catalog.get(request.name, "name"))

    async def CountTokens(
        self, request: pb.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountTokensResponse:
        require_identity(context.invocation_metadata())
        count = count_prompt(self.catalog.get(request.model), request.messages)
        return pb.CountTokensResponse(
            prompt_tokens=count.prompt_tokens,
            context_window_tokens=count.context_window_tokens,
            available_output_tokens=count.available_output_tokens,
        )

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        metadata = context.invocation_metadata()
        identity = require_identity(metadata)
        # Transcoded JSON/HTTP (Envoy marks it): the gateway commits HTTP 200 at the first
        # event, so the metadata waits for the first output (an error before stays an HTTP
        # error). gRPC callers get it as soon as the deployment is certain.
        early = not any(key == HEADER_TRANSCODED for key, _ in metadata or ())
        events = metrics.observe(
            self.orchestrator.generate(request, identity, early),
            identity,
            request.model,
            self._price,
        )
        linger = self.runtime.settings.stream_linger_ms / 1000
        async for event in coalesced(events, merge_text_deltas, linger, is_text_delta):
            yield event

    def _price(self, model: str, prompt_tokens: int, completion_tokens: int) -> tuple[int, str]:
        try:
            entry = self.catalog.get(model)
        except ServiceError:
            return 0, ""
        return cost_micros(entry, prompt_tokens, completion_tokens), entry.currency_code


def build_spec() -> ServiceSpec:
    return spec_for(
        "orchestrator",
        Path(__file__).parent,
        [
            Binding(
                orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server,
                OrchestratorServicer,
                pb.DESCRIPTOR.services_by_name["OrchestratorService"],
            )
        ],
    )
