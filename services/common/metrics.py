"""Prometheus metrics every service shares: per-RPC server and client metrics named after the
OpenTelemetry `rpc.*` semantic conventions (in Prometheus form: dots → underscores, unit suffix),
the Triton call metrics, and the loopback HTTP endpoint Prometheus scrapes.

Domain metrics (tokens, time to first token, ingestion, ASR, ...) live beside the code that
records them, in each service's own `metrics.py`; all of them register in prometheus_client's
default registry, which this module serves together with the process collector (CPU, memory,
open files). The endpoint listens on the service's AIMESH_<SVC>_METRICS_ADDR (loopback by
default) and is never routed by the public gateway.

Label cardinality is bounded by construction: methods and status codes are finite; an
organization appears only on the per-tenant series (tokens, spend, budgets); API keys never
appear (a per-key view uses the key's hashed id from Usage).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("aimesh.metrics")

# Seconds; from sub-millisecond cache hits to minute-long streams.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
_RPC_LABELS = ("rpc_service", "rpc_method", "rpc_grpc_status_code")

RPC_SERVER_DURATION = Histogram(
    "rpc_server_call_duration_seconds",
    "Duration of gRPC calls served, by method and status (OTel rpc.server.call.duration).",
    _RPC_LABELS,
    buckets=LATENCY_BUCKETS,
)
RPC_SERVER_STREAM_DURATION = Histogram(
    "rpc_server_stream_duration_seconds",
    "Duration of server- and bidi-streaming calls served (kept apart: they last as long as the "
    "conversation, not as long as the work).",
    _RPC_LABELS,
    buckets=LATENCY_BUCKETS,
)
HTTP_SERVER_DURATION = Histogram(
    "http_server_request_duration_seconds",
    "Duration of HTTP requests served by the HTTP services (OTel http.server.request.duration); "
    "the route is the matched template, never the raw path.",
    ("http_request_method", "http_route", "http_response_status_code"),
    buckets=LATENCY_BUCKETS,
)
RPC_SERVER_ACTIVE = Gauge(
    "rpc_server_active_requests",
    "gRPC calls (unary and streams) being served right now.",
    ("rpc_service", "rpc_method"),
)
RPC_CLIENT_DURATION = Histogram(
    "rpc_client_call_duration_seconds",
    "Duration of gRPC calls this service made to its peers (OTel rpc.client.call.duration).",
    _RPC_LABELS,
    buckets=LATENCY_BUCKETS,
)
TRITON_MODEL_READY = Gauge(
    "aimesh_triton_model_ready",
    "1 when the Triton model answered ready to this service's last readiness probe, else 0.",
    ("model",),
)
TRITON_DURATION = Histogram(
    "aimesh_triton_request_duration_seconds",
    "Duration of inference calls to Triton by model and outcome "
    "(streams: until the last response).",
    ("model", "outcome"),
    buckets=LATENCY_BUCKETS,
)
CACHE_REQUESTS = Counter(
    "aimesh_cache_requests_total",
    "Cache look-ups by cache and result (hit/miss).",
    ("cache", "result"),
)

OUTBOX_DEPTH = Gauge(
    "aimesh_usage_outbox_depth",
    "Usage records waiting in a service's durable outbox for delivery to Usage.",
    ("outbox",),
)
OUTBOX_AGE = Gauge(
    "aimesh_usage_outbox_oldest_age_seconds",
    "Age of the oldest undelivered record in a service's usage outbox (0 when empty).",
    ("outbox",),
)
CERTIFICATE_EXPIRY = Gauge(
    "aimesh_tls_certificate_expiry_timestamp_seconds",
    "Unix time at which the certificate this process presents to its mesh peers expires.",
    ("identity",),
)

_enabled = True


def enabled() -> bool:
    return _enabled


def serve(service: str, address: str, on: bool = True) -> int | None:
    """Start the scrape endpoint on `address` (host:port) in a daemon thread; returns its port.
    With `on` false nothing is recorded or served (the benchmarks' instrumentation-off path).
    A busy port (a second copy of the service on one machine) costs the metrics, not the service."""
    global _enabled
    _enabled = on
    if not on:
        return None
    host, _, port = address.rpartition(":")
    try:
        server, _thread = start_http_server(int(port), addr=host)
    except OSError as exc:
        log.warning(
            "metrics endpoint not served: %s (AIMESH_%s_METRICS_ADDR=%s)",
            exc,
            service.upper(),
            address,
        )
        return None
    return int(server.server_port)


def split_method(full_method: str) -> tuple[str, str]:
    """'/aimesh.auth.v1.AuthService/GetUser' -> ('aimesh.auth.v1.AuthService', 'GetUser')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def code_of(context: grpc.aio.ServicerContext, failed: bool | None) -> str:
    """The status code a served call ended with: OK unless the behavior aborted or raised;
    `failed` None means the client cancelled."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if failed is None or (failed and context.cancelled()):
        return "CANCELLED"
    return "UNKNOWN" if failed else "OK"


class ServedMethod:
    """The rpc.server.* series of one served method, looked up once per method: prometheus'
    labels() on every call costs more than the observations themselves."""

    __slots__ = ("_durations", "_series", "active", "method", "service")

    def __init__(self, full_method: str, streaming: bool) -> None:
        self.service, self.method = split_method(full_method)
        self.active = RPC_SERVER_ACTIVE.labels(self.service, self.method)
        self._series = RPC_SERVER_STREAM_DURATION if streaming else RPC_SERVER_DURATION
        self._durations: dict[str, Any] = {}  # status code -> its histogram series

    def durations(self, code: str) -> Any:
        series = self._durations.get(code)
        if series is None:
            series = self._durations[code] = self._series.labels(self.service, self.method, code)
        return series


class RpcTimer:
    """Times one served call and keeps the in-flight gauge; `finish(code)` records it once."""

    __slots__ = ("served", "started")

    def __init__(self, served: ServedMethod) -> None:
        self.served = served
        self.started = time.perf_counter()
        if _enabled:
            served.active.inc()

    def finish(self, code: str) -> None:
        if _enabled:
            self.served.active.dec()
            self.served.durations(code).observe(time.perf_counter() - self.started)


def record_cache(cache: str, hit: bool) -> None:
    if _enabled:
        CACHE_REQUESTS.labels(cache, "hit" if hit else "miss").inc()


def observe_outbox(outbox: str, depth: int, oldest_age_seconds: float) -> None:
    if _enabled:
        OUTBOX_DEPTH.labels(outbox).set(depth)
        OUTBOX_AGE.labels(outbox).set(oldest_age_seconds)


def record_certificate(identity: str, pem_path: str) -> None:
    """Export when `identity`'s certificate expires (for the expiry alert); absent file: nothing."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(Path(pem_path).read_bytes())
    except (OSError, ValueError):
        return
    CERTIFICATE_EXPIRY.labels(identity).set(cert.not_valid_after_utc.timestamp())


def record_model_ready(model: str, ready: bool) -> None:
    if _enabled:
        TRITON_MODEL_READY.labels(model).set(1.0 if ready else 0.0)


def observe_triton(model: str, outcome: str, seconds: float) -> None:
    if _enabled:
        TRITON_DURATION.labels(model, outcome).observe(seconds)


class ClientMetricsInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """rpc.client.call.duration for unary calls (streams are timed by the callee: their client
    side would measure the consumer's pace, not the peer's; a client stream may be fed by
    call.write(), so waiting for its end would deadlock). Only a unary-unary interceptor, so
    the other kinds' calls do not pass through a layer that does nothing."""

    async def _timed(self, details: Any, start: Any) -> Any:
        service, method = split_method(_method_name(details))
        started = time.perf_counter()
        code = "CANCELLED"
        try:
            call = await start
            status = await call.code()
            code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
            return call
        finally:
            if _enabled:
                RPC_CLIENT_DURATION.labels(service, method, code).observe(
                    time.perf_counter() - started
                )

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await self._timed(details, continuation(details, request))


def _method_name(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)
