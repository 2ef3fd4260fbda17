"""Orchestrator's gRPC surface: thin — decode, authorize, call the domain logic, encode.

Until the Conversation/Orchestrator issue lands, every RPC answers UNIMPLEMENTED (the generated base class's behaviour,
turned into a clean status by the server runtime).
"""

from __future__ import annotations

from pathlib import Path

from aimesh.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from services.common.server import Binding, Runtime, ServiceSpec, spec_for


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def build_spec() -> ServiceSpec:
    return spec_for(
        "orchestrator",
        Path(__file__).parent,
        [
            Binding(
                orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server,
                OrchestratorServicer,
                orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"],
            )
        ],
    )
