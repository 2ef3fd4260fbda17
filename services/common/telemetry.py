"""JSON logs that carry trace ids, and OpenTelemetry tracing for gRPC servers and clients."""

from __future__ import annotations

import logging
import sys

from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from pythonjsonlogger.json import JsonFormatter

_configured_service: str | None = None


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


def configure(service: str, level: str = "INFO", console_spans: bool = False) -> None:
    """Configure JSON logging to stderr and a tracer provider for `service`. Idempotent."""
    global _configured_service
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

    provider = TracerProvider(resource=Resource.create({"service.name": f"aimesh-{service}"}))
    if console_spans:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    trace.set_tracer_provider(provider)


def server_interceptors() -> list[object]:
    return [aio_server_interceptor()]


def client_interceptors() -> list[object]:
    return list(aio_client_interceptors())
