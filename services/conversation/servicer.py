"""Conversation's gRPC surface: thin — decode, authorize, call the domain logic, encode.

Until the Conversation/Orchestrator issue lands, every RPC answers UNIMPLEMENTED (the generated base class's behaviour,
turned into a clean status by the server runtime).
"""

from __future__ import annotations

from pathlib import Path

from aimesh.conversation.v1 import conversation_pb2, conversation_pb2_grpc
from services.common.server import Binding, Runtime, ServiceSpec, spec_for


class ConversationServicer(conversation_pb2_grpc.ConversationServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def build_spec() -> ServiceSpec:
    return spec_for(
        "conversation",
        Path(__file__).parent,
        [
            Binding(
                conversation_pb2_grpc.add_ConversationServiceServicer_to_server,
                ConversationServicer,
                conversation_pb2.DESCRIPTOR.services_by_name["ConversationService"],
            )
        ],
    )
