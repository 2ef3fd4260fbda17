"""The one way a service calls another: pooled grpc.aio channels with mTLS, retries,
keepalive, tracing and deadline propagation.

Transport and retry policy come from services.common.tls / mesh_policy: in `mtls` mode the
channel presents this process's certificate from the local CA and checks the callee's name;
methods the contract marks `idempotency_level = NO_SIDE_EFFECTS` or `IDEMPOTENT` are retried
on UNAVAILABLE (gRPC's own retry policy, the same set Istio's VirtualServices retry);
everything else is sent once and relies on its `request_id` for safe manual retries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.protobuf import descriptor as descriptor_mod

from services.common import deadlines, telemetry, tls
from services.common.config import Settings

# gRPC's own switches for every aimesh Python process (not tritonserver, Envoy or Prometheus),
# set in its environment before gRPC starts: by scripts/stack.py where it starts a Python process
# (`grpc_process_env`), by the aimesh-config ConfigMap in Kubernetes; a value already in the
# environment wins. gRPC's EventEngine client hands each read between its
# own threads and the event loop; its older client (the default before grpcio 1.66, still built
# in the pinned grpcio <1.85) does not: bench.chat, alternate runs, 100 concurrent chat streams:
# mesh CPU per stream without Triton 9.5/10.1 ms with it against 11.3/10.6 ms without, the bare
# relay floor 6.8/7.3 against 8.9/8.7. A grpcio that no longer knows the experiment logs it and
# ignores it: measure again when the pin moves.
GRPC_ENVIRONMENT: dict[str, str] = {"GRPC_EXPERIMENTS": "-event_engine_client"}


def grpc_process_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` for a Python process that uses grpcio: GRPC_ENVIRONMENT unless `env` sets its own."""
    return {**GRPC_ENVIRONMENT, **env}

# The mesh identity this process presents when it calls others; serve() sets it to the
# service's name. Tools and tests that are not a service call as the operator.
_process_identity = "operator"


def set_process_identity(identity: str) -> None:
    global _process_identity
    _process_identity = identity


def service_descriptors(service: str) -> list[descriptor_mod.ServiceDescriptor]:
    """The proto services of aimesh service `service` (module aimesh.<svc>.v1.<svc>_pb2)."""
    module = importlib.import_module(f"aimesh.{service}.v1.{service}_pb2")
    return list(module.DESCRIPTOR.services_by_name.values())


def _capped(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    """`details` with its timeout capped by what is left of the RPC being served (if any)."""
    remaining = deadlines.time_left()
    if remaining is None:
        return details
    timeout = remaining if details.timeout is None else min(details.timeout, remaining)
    return grpc.aio.ClientCallDetails(
        details.method, timeout, details.metadata, details.credentials, details.wait_for_ready
    )


# A downstream call never outlives the RPC that made it. One class per call kind: grpc.aio files
# an interceptor under the first kind it implements only, so one class implementing all four
# capped unary-unary calls alone and streams (Generate, Converse) ran without the deadline.
class _DeadlineUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(_capped(details), request)


class _DeadlineUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(_capped(details), request)


class _DeadlineStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_capped(details), request_iterator)


class _DeadlineStreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_capped(details), request_iterator)


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """What every mesh channel runs on its calls: tracing, metrics, the deadline cap."""
    return [
        *telemetry.client_interceptors(),
        _DeadlineUnaryUnary(),
        _DeadlineUnaryStream(),
        _DeadlineStreamUnary(),
        _DeadlineStreamStream(),
    ]


def open_channel(settings: Settings, callee: str, caller: str | None = None) -> grpc.aio.Channel:
    """A new channel to `callee` (a service name) as `caller` (default: this process)."""
    return tls.open_channel(
        settings.address_of(callee),
        caller=caller or _process_identity,
        callee=callee,
        mode=settings.tls_mode,
        certs_dir=settings.certs_path,
        interceptors=client_interceptors(),
    )


class Channels:
    """One channel per target service, created on first use and closed together."""

    def __init__(self, settings: Settings, caller: str | None = None) -> None:
        self.settings = settings
        self.caller = caller
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, service: str) -> grpc.aio.Channel:
        channel = self._channels.get(service)
        if channel is None:
            channel = open_channel(self.settings, service, self.caller)
            self._channels[service] = channel
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
