"""What the SDK knows about the contract, read from the generated modules it ships with.

The retry policy follows the contract's own declaration: methods marked
`idempotency_level = NO_SIDE_EFFECTS` or `IDEMPOTENT` are retried on UNAVAILABLE (3 tries in
all, 0.1 s backoff doubling to 1 s), exactly the numbers the services use between themselves;
every other method is sent once (its request_id makes a deliberate retry safe).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2

SERVICES = ("auth", "billing", "conversation", "knowledge", "orchestrator", "speech", "usage")

RETRY_ATTEMPTS = 3
RETRY_INITIAL_BACKOFF_S = 0.1
RETRY_MAX_BACKOFF_S = 1.0

_SAFE = (descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT)


@dataclass(frozen=True)
class Method:
    service: str  # SDK name of the service, e.g. "knowledge"
    full_service: str  # e.g. "aimesh.knowledge.v1.KnowledgeService"
    name: str  # e.g. "GetDocument"
    client_streaming: bool
    server_streaming: bool
    idempotent: bool

    @property
    def path(self) -> str:
        return f"/{self.full_service}/{self.name}"

    @property
    def unary(self) -> bool:
        return not (self.client_streaming or self.server_streaming)


def pb2(service: str) -> Any:
    return importlib.import_module(f"aimesh.{service}.v1.{service}_pb2")


def pb2_grpc(service: str) -> Any:
    return importlib.import_module(f"aimesh.{service}.v1.{service}_pb2_grpc")


def methods() -> dict[str, Method]:
    """Every public RPC of the contract, by full path."""
    out: dict[str, Method] = {}
    for service in SERVICES:
        for svc in pb2(service).DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                proto = descriptor_pb2.MethodDescriptorProto()
                m.CopyToProto(proto)
                method = Method(service, svc.full_name, m.name, proto.client_streaming,
                                proto.server_streaming, proto.options.idempotency_level in _SAFE)
                out[method.path] = method
    return out


def service_config() -> str:
    """The gRPC service config (JSON) carrying the contract's retry policy."""
    retry = {
        "maxAttempts": RETRY_ATTEMPTS,
        "initialBackoff": f"{RETRY_INITIAL_BACKOFF_S}s",
        "maxBackoff": f"{RETRY_MAX_BACKOFF_S}s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    configs = [
        {"name": [{"service": m.full_service, "method": m.name}], "retryPolicy": retry}
        for m in sorted(methods().values(), key=lambda m: m.path)
        if m.idempotent and not m.client_streaming
    ]
    return json.dumps({
        "methodConfig": configs,
        # A dead gateway cannot multiply load: retries stop when most calls fail.
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    })
