"""Billing's gRPC surface: thin — decode, authorize, call the domain logic, encode.

Until the Usage/Billing issue lands, every RPC answers UNIMPLEMENTED (the generated base class's behaviour,
turned into a clean status by the server runtime).
"""

from __future__ import annotations

from pathlib import Path

from aimesh.billing.v1 import billing_pb2, billing_pb2_grpc
from services.common.server import Binding, Runtime, ServiceSpec, spec_for


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def build_spec() -> ServiceSpec:
    return spec_for(
        "billing",
        Path(__file__).parent,
        [
            Binding(
                billing_pb2_grpc.add_BillingServiceServicer_to_server,
                BillingServicer,
                billing_pb2.DESCRIPTOR.services_by_name["BillingService"],
            )
        ],
    )
