"""The one way a service calls another: pooled grpc.aio channels with retries, keepalive,
tracing and deadline propagation.

Retries follow the contract: methods whose proto says `idempotency_level = NO_SIDE_EFFECTS`
or `IDEMPOTENT` are retried on UNAVAILABLE (gRPC's own retry policy, via service config);
everything else is sent once and relies on its `request_id` for safe manual retries.
"""

from __future__ import annotations

import importlib
import json
import time
from typing import Any, Callable, Iterable

import grpc
from google.protobuf import descriptor as descriptor_mod
from google.protobuf import descriptor_pb2

from services.common import telemetry
from services.common.config import Settings

RETRYABLE_LEVELS = (
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT,
)

KEEPALIVE_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def idempotent_methods(services: Iterable[descriptor_mod.ServiceDescriptor]) -> list[tuple[str, str]]:
    """(service full name, method name) of every method the contract marks safe to retry."""
    out = []
    for service in services:
        for method in service.methods:
            if method.GetOptions().idempotency_level in RETRYABLE_LEVELS:
                out.append((service.full_name, method.name))
    return out


def service_descriptors(service: str) -> list[descriptor_mod.ServiceDescriptor]:
    """The proto services of aimesh service `service` (module aimesh.<svc>.v1.<svc>_pb2)."""
    module = importlib.import_module(f"aimesh.{service}.v1.{service}_pb2")
    return list(module.DESCRIPTOR.services_by_name.values())


def retry_service_config(services: Iterable[descriptor_mod.ServiceDescriptor]) -> str:
    methods = idempotent_methods(services)
    config: dict[str, Any] = {"methodConfig": []}
    if methods:
        config["methodConfig"].append(
            {
                "name": [{"service": s, "method": m} for s, m in methods],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        )
    return json.dumps(config)


class _DeadlinePropagation(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """A downstream call never outlives the RPC that made it: its timeout is capped by the
    remaining time of the incoming call being served (if any)."""

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        from services.common.server import current_deadline

        deadline = current_deadline.get()
        if deadline is None:
            return details
        remaining = max(deadline - time.monotonic(), 0.001)
        timeout = remaining if details.timeout is None else min(details.timeout, remaining)
        return grpc.aio.ClientCallDetails(
            details.method, timeout, details.metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)

    async def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


class Channels:
    """One channel per target service, created on first use and closed together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, service: str) -> grpc.aio.Channel:
        channel = self._channels.get(service)
        if channel is None:
            channel = open_channel(self.settings.address_of(service), service_descriptors(service))
            self._channels[service] = channel
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def open_channel(
    address: str, services: Iterable[descriptor_mod.ServiceDescriptor] = ()
) -> grpc.aio.Channel:
    options = [
        *KEEPALIVE_OPTIONS,
        ("grpc.enable_retries", 1),
        ("grpc.service_config", retry_service_config(services)),
    ]
    return grpc.aio.insecure_channel(
        address,
        options=options,
        interceptors=[*telemetry.client_interceptors(), _DeadlinePropagation()],
    )
