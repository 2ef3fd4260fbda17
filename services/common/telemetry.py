"""JSON logs that carry trace ids, OpenTelemetry tracing and Prometheus RPC metrics for gRPC
servers and clients.

One server interceptor (`RpcTelemetryInterceptor`) does both per-call jobs: it continues the
caller's trace (W3C `traceparent` in the call metadata, as Envoy and our clients send it) with a
SERVER span, and records the rpc.* metrics. Spans are exported over OTLP/gRPC when
AIMESH_OTLP_ENDPOINT is set (and to the console with AIMESH_TRACE_CONSOLE).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from pythonjsonlogger.json import JsonFormatter

from services.common import metrics
from services.common.handlers import (
    MethodInterceptor,
    call_metadata,
    call_unary,
    iterate_stream,
    rewrap,
)

_configured_service: str | None = None
_tracer = trace.get_tracer("aimesh")

# Server-side codes that mean the service failed (OTel rpc semantic conventions); the others are
# the caller's problem and leave the span unset.
_SERVER_ERROR_CODES = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)


class _TraceContextFilter(logging.Filter):
    """Stamps every record with the current span's trace and span ids (hex, as OTLP shows them)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        record.service = self.service
        record.trace_id = format(context.trace_id, "032x") if context.is_valid else None
        record.span_id = format(context.span_id, "016x") if context.is_valid else None
        return True


def configure(
    service: str,
    level: str = "INFO",
    console_spans: bool = False,
    otlp_endpoint: str = "",
    sample_percent: float = 100.0,
) -> None:
    """Configure JSON logging to stderr and a tracer provider for `service`. Idempotent."""
    global _configured_service, _tracer
    if _configured_service == service:
        return
    _configured_service = service
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}{service}{trace_id}{span_id}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(_TraceContextFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("grpc._cython", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    # Follow the caller's (Envoy's) sampling decision; sample root spans at the same ratio.
    sampler = ParentBased(TraceIdRatioBased(sample_percent / 100.0))
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"aimesh-{service}"}), sampler=sampler
    )
    if console_spans:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True),
                               schedule_delay_millis=500)
        )
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("aimesh")


def tracer() -> trace.Tracer:
    return _tracer


def current_trace_id() -> str | None:
    """The hex trace id of the span in progress, for error details and user reports."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class RpcTelemetryInterceptor(MethodInterceptor):
    """A SERVER span continuing the caller's trace, plus rpc.server.* metrics, for every call."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return rewrap(handler, lambda b: _unary(b, _Served(method, streaming=False)),
                      lambda b: _stream(b, _Served(method, streaming=True)))


class _Served:
    """What one method's spans and metrics are named, worked out once per method."""

    __slots__ = ("attributes", "metrics", "span_name")

    def __init__(self, method: str, streaming: bool) -> None:
        self.metrics = metrics.ServedMethod(method, streaming)
        self.span_name = method.lstrip("/")
        self.attributes = {"rpc.system": "grpc", "rpc.service": self.metrics.service,
                           "rpc.method": self.metrics.method}


def _start(served: _Served) -> tuple[trace.Span, object, metrics.RpcTimer]:
    carrier = {key: value for key, value in call_metadata() if isinstance(value, str)}
    span = _tracer.start_span(
        served.span_name,
        context=propagate.extract(carrier),
        kind=SpanKind.SERVER,
        attributes=served.attributes,
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    return span, token, metrics.RpcTimer(served.metrics)


def _finish(
    span: trace.Span,
    timer: metrics.RpcTimer,
    context: grpc.aio.ServicerContext,
    failed: bool | None,
) -> None:
    code = metrics.code_of(context, failed)
    timer.finish(code)
    span.set_attribute("rpc.grpc.status_code", getattr(grpc.StatusCode, code).value[0])
    if code in _SERVER_ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, code))
    span.end()


def _detach(token: object, task: asyncio.Task[Any] | None) -> None:
    # A stream the client abandoned is closed from another task, whose context never saw the
    # token (detaching there is the "Failed to detach context" error); the RPC's own task and
    # its context end with the call, so there is nothing to restore.
    if asyncio.current_task() is task:
        otel_context.detach(token)  # type: ignore[arg-type]


def _unary(behavior: Callable[..., Any], served: _Served) -> Callable[..., Any]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        span, token, timer = _start(served)
        failed = True
        try:
            result = await call_unary(behavior, request, context)
            failed = False
            return result
        finally:
            _finish(span, timer, context, failed)
            # A single response ends in the call's own task (no stream for another to close).
            otel_context.detach(token)  # type: ignore[arg-type]

    return wrapped


def _stream(behavior: Callable[..., Any], served: _Served) -> Callable[..., Any]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        span, token, timer = _start(served)
        task = asyncio.current_task()
        failed: bool | None = True
        try:
            async for item in iterate_stream(behavior, request, context):
                yield item
            failed = False
        except (GeneratorExit, asyncio.CancelledError):
            failed = None  # the client went away
            raise
        finally:
            _finish(span, timer, context, failed)
            _detach(token, task)

    return wrapped


class AsgiTelemetry:
    """The HTTP services' counterpart of RpcTelemetryInterceptor, as ASGI middleware: a SERVER
    span continuing the gateway's `traceparent` (current while the request runs, so the gRPC
    calls it makes carry it on) and http.server.request.duration by route template."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        method = scope.get("method", "GET")
        span = _tracer.start_span(
            f"{method} {scope.get('path', '')}",
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope.get("path", "")},
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        task = asyncio.current_task()
        started = time.perf_counter()
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, str(status)))
            span.end()
            if metrics.enabled():
                metrics.HTTP_SERVER_DURATION.labels(method, route, str(status)).observe(
                    time.perf_counter() - started
                )
            _detach(token, task)


def client_interceptors() -> list[object]:
    return [*aio_client_interceptors(), metrics.ClientMetricsInterceptor()]
