"""Speech's gRPC surface: thin — decode, authorize, call the domain logic, encode.

Until the Speech issue lands, every RPC answers UNIMPLEMENTED (the generated base class's behaviour,
turned into a clean status by the server runtime).
"""

from __future__ import annotations

from pathlib import Path

from aimesh.speech.v1 import speech_pb2, speech_pb2_grpc
from services.common.server import Binding, Runtime, ServiceSpec, spec_for


class SpeechServicer(speech_pb2_grpc.SpeechServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def build_spec() -> ServiceSpec:
    return spec_for(
        "speech",
        Path(__file__).parent,
        [
            Binding(
                speech_pb2_grpc.add_SpeechServiceServicer_to_server,
                SpeechServicer,
                speech_pb2.DESCRIPTOR.services_by_name["SpeechService"],
            )
        ],
    )
