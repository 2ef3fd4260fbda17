"""A one-service mTLS server for subprocess tests: prints its port, serves until killed.

python -m tests.mesh.mtls_server <certs_dir> <callee>
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from services.common import tls


async def main(certs_dir: Path, callee: str) -> None:
    server = grpc.aio.server(interceptors=[tls.PeerAuthorizationInterceptor(callee)])
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    port = server.add_secure_port(
        "127.0.0.1:0", tls.server_credentials(tls.load_identity(callee, certs_dir))
    )
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
