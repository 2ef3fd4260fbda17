"""Usage's gRPC surface: thin — decode, authorize, call the domain logic, encode.

Until the Usage/Billing issue (rate limiting: the gateway issue) lands, every RPC answers UNIMPLEMENTED (the generated base class's behaviour,
turned into a clean status by the server runtime).
"""

from __future__ import annotations

from pathlib import Path

from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from services.common.server import Binding, Runtime, ServiceSpec, spec_for


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def build_spec() -> ServiceSpec:
    return spec_for(
        "usage",
        Path(__file__).parent,
        [
            Binding(
                usage_pb2_grpc.add_UsageServiceServicer_to_server,
                UsageServicer,
                usage_pb2.DESCRIPTOR.services_by_name["UsageService"],
            )
        ],
    )
