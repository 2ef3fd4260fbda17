"""Auth's gRPC surface: thin — decode, authorize, call the domain logic, encode.

Until the Auth issue lands, every RPC answers UNIMPLEMENTED (the generated base class's behaviour,
turned into a clean status by the server runtime).
"""

from __future__ import annotations

from pathlib import Path

from aimesh.auth.v1 import auth_pb2, auth_pb2_grpc
from services.common.server import Binding, Runtime, ServiceSpec, spec_for


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def build_spec() -> ServiceSpec:
    return spec_for(
        "auth",
        Path(__file__).parent,
        [
            Binding(
                auth_pb2_grpc.add_AuthServiceServicer_to_server,
                AuthServicer,
                auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
            )
        ],
    )
