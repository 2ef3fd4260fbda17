"""Knowledge's gRPC surface: thin — decode, authorize, call the domain logic, encode.

Until the Knowledge issue lands, every RPC answers UNIMPLEMENTED (the generated base class's behaviour,
turned into a clean status by the server runtime).
"""

from __future__ import annotations

from pathlib import Path

from aimesh.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from services.common.server import Binding, Runtime, ServiceSpec, spec_for


class KnowledgeServicer(knowledge_pb2_grpc.KnowledgeServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def build_spec() -> ServiceSpec:
    return spec_for(
        "knowledge",
        Path(__file__).parent,
        [
            Binding(
                knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server,
                KnowledgeServicer,
                knowledge_pb2.DESCRIPTOR.services_by_name["KnowledgeService"],
            )
        ],
    )
