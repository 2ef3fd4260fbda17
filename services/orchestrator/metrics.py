"""Generation metrics, named after the OpenTelemetry GenAI semantic conventions (gen_ai.*):
token usage by model and organization, time to first token, time per output token, request
duration; plus provider attempts and fallbacks, guardrail actions, response-cache hits and
each deployment's circuit state.

`observe` wraps the event stream of one Generate call, so the generation code itself carries
no metric calls; circuit state is read from the router at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator

from aimesh.orchestrator.v1 import orchestrator_pb2 as pb
from prometheus_client import Counter, Histogram
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common import metrics
from services.common.identity import Identity
from services.orchestrator.routing import CircuitBreaker, Router

_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
_PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)

TOKENS = Counter(
    "aimesh_gen_ai_tokens",
    "Tokens metered for generations, by model, token type (input/output) and organization.",
    ("gen_ai_request_model", "gen_ai_token_type", "org"),
)
COST = Counter(
    "aimesh_gen_ai_cost_micros",
    "Spend on generations in micros of the currency, by organization and model (catalog prices).",
    ("org", "gen_ai_request_model", "currency"),
)
TOKENS_PER_REQUEST = Histogram(
    "gen_ai_client_token_usage",
    "Tokens per generation by model and token type (OTel gen_ai.client.token.usage).",
    ("gen_ai_request_model", "gen_ai_token_type"),
    buckets=_TOKEN_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "Seconds from the request to the first text of the answer "
    "(OTel gen_ai.server.time_to_first_token).",
    ("gen_ai_request_model",),
    buckets=metrics.LATENCY_BUCKETS,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "gen_ai_server_time_per_output_token_seconds",
    "Seconds per output token after the first (OTel gen_ai.server.time_per_output_token).",
    ("gen_ai_request_model",),
    buckets=_PER_TOKEN_BUCKETS,
)
REQUEST_DURATION = Histogram(
    "gen_ai_server_request_duration_seconds",
    "Seconds a generation took, by model and finish reason (OTel gen_ai.server.request.duration).",
    ("gen_ai_request_model", "finish_reason"),
    buckets=metrics.LATENCY_BUCKETS,
)
PROVIDER_ATTEMPTS = Counter(
    "aimesh_provider_attempts_total",
    "Provider deployment attempts by provider, deployment and outcome (OK or the status code).",
    ("provider", "deployment", "outcome"),
)
FALLBACKS = Counter(
    "aimesh_provider_fallbacks_total",
    "Generations served by a later deployment than the first one tried.",
    ("gen_ai_request_model",),
)
GUARDRAIL_ACTIONS = Counter(
    "aimesh_guardrail_actions_total",
    "Guardrail redactions and blocks by stage (input/output).",
    ("kind", "stage"),
)


def _model_of(event: pb.GenerateResponse, fallback: str) -> str:
    return event.metadata.model or fallback


# (model name, prompt tokens, completion tokens) -> (cost in micros, currency code)
Pricing = Callable[[str, int, int], tuple[int, str]]


async def observe(
    events: AsyncIterator[pb.GenerateResponse],
    identity: Identity,
    requested_model: str,
    pricing: Pricing,
) -> AsyncIterator[pb.GenerateResponse]:
    """Pass `events` through, recording the generation's metrics as they go by."""
    if not metrics.enabled():
        async for event in events:
            yield event
        return
    started = time.perf_counter()
    model = requested_model or "default"
    first_text_at: float | None = None
    async for event in events:
        if event.HasField("metadata"):
            model = _model_of(event, model)
        elif event.HasField("delta") and first_text_at is None:
            first_text_at = time.perf_counter()
            TIME_TO_FIRST_TOKEN.labels(model).observe(first_text_at - started)
        elif event.HasField("completion"):
            _completed(event.completion, identity, model, started, first_text_at, pricing)
        yield event


def _completed(
    completion: pb.Completion,
    identity: Identity,
    model: str,
    started: float,
    first_text_at: float | None,
    pricing: Pricing,
) -> None:
    now = time.perf_counter()
    usage = completion.usage
    for kind, count in (("input", usage.prompt_tokens), ("output", usage.completion_tokens)):
        TOKENS.labels(model, kind, identity.org).inc(count)
        TOKENS_PER_REQUEST.labels(model, kind).observe(count)
    cost, currency = pricing(model, usage.prompt_tokens, usage.completion_tokens)
    COST.labels(identity.org, model, currency or "USD").inc(cost)
    if first_text_at is not None and usage.completion_tokens > 1:
        TIME_PER_OUTPUT_TOKEN.labels(model).observe(
            (now - first_text_at) / (usage.completion_tokens - 1)
        )
    REQUEST_DURATION.labels(model, pb.FinishReason.Name(completion.finish_reason)).observe(
        now - started
    )
    metrics.record_cache("orchestrator_response", completion.cached)
    for attempt in completion.provider_attempts:
        outcome = "OK" if attempt.status.code == 0 else _code_name(attempt.status.code)
        PROVIDER_ATTEMPTS.labels(attempt.provider, attempt.deployment, outcome).inc()
    if len(completion.provider_attempts) > 1:
        FALLBACKS.labels(model).inc()
    for action in completion.guardrail_actions:
        GUARDRAIL_ACTIONS.labels(
            pb.GuardrailAction.Kind.Name(action.kind), pb.GuardrailAction.Stage.Name(action.stage)
        ).inc()


def _code_name(code: int) -> str:
    import grpc

    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return str(code)


class CircuitCollector(Collector):
    """aimesh_provider_circuit_open{deployment}: 1 while a deployment's breaker is open (or
    half-open, probing), read from the router at scrape time."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "aimesh_provider_circuit_open",
            "1 while the deployment's circuit breaker is open or half-open, else 0.",
            labels=["deployment"],
        )
        for key, breaker in list(self.router.breakers.items()):
            family.add_metric([key], 0.0 if breaker.state == CircuitBreaker.CLOSED else 1.0)
        yield family


_circuits: CircuitCollector | None = None


def watch_circuits(router: Router) -> None:
    """Expose `router`'s breakers (the newest router, when a process builds more than one)."""
    global _circuits
    if _circuits is None:
        _circuits = CircuitCollector(router)
        REGISTRY.register(_circuits)
    _circuits.router = router
