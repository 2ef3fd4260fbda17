"""A one-service mTLS server for subprocess tests: prints its port, serves until killed.

    python -m tests.mesh.mtls_server <certs_dir> <callee> [<effects_log> [<delay_seconds>]]

With an effects log, it also serves two Usage methods under their real names, answering
with health messages after `delay_seconds` (default 0.02; a large value makes a replica
that hangs until it is killed): GetUsageSummary (a read, logged as "<pid> read <id>") and
ReserveBudget (a write whose effect is "<pid> write <id>", appended to the log before the
delay, so a test can count effects even of a process it killed). The id rides in the
health request's `service` field.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from services.common import tls

USAGE = "aimesh.usage.v1.UsageService"


def _record(log_path: Path, kind: str, request_id: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{os.getpid()} {kind} {request_id}\n".encode())
    finally:
        os.close(fd)


def _usage_handlers(log_path: Path, delay: float) -> grpc.GenericRpcHandler:
    async def get_summary(
        request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        _record(log_path, "read", request.service)
        await asyncio.sleep(delay)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def reserve(
        request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        _record(log_path, "write", request.service)  # the effect, before any answer
        await asyncio.sleep(delay)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    def unary(fn: object) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        )

    return grpc.method_handlers_generic_handler(
        USAGE, {"GetUsageSummary": unary(get_summary), "ReserveBudget": unary(reserve)}
    )


async def main(certs_dir: Path, callee: str, log_path: Path | None, delay: float) -> None:
    server = grpc.aio.server(interceptors=[tls.PeerAuthorizationInterceptor(callee)])
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    if log_path is not None:
        server.add_generic_rpc_handlers((_usage_handlers(log_path, delay),))
    port = server.add_secure_port(
        "127.0.0.1:0", tls.server_credentials(tls.load_identity(callee, certs_dir))
    )
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    log = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.02
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], log, delay))
