"""A service process (the real server bootstrap, no servicers) whose readiness waits on a gate
file: its first readiness check lasts until the test creates the file, as Knowledge's vector
index opening or Speech's warm-up last seconds on a loaded machine.

    python -m tests.support.gated_service GATE_FILE    (with a mesh's AIMESH_* environment)

It listens as "knowledge" (a name the mesh has a port and a certificate for): run it on a port
of its own (AIMESH_KNOWLEDGE_ADDR)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc

from services.common.server import Runtime, ServiceSpec, serve


def gated_spec(gate: Path) -> ServiceSpec:
    async def opened() -> bool:
        while not gate.exists():
            await asyncio.sleep(0.05)
        return True

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        runtime.add_health_check("gate", opened)

    return ServiceSpec(
        "knowledge", register, service_names=[], migrations=None, uses_db=False, uses_cache=False
    )


if __name__ == "__main__":
    serve(gated_spec(Path(sys.argv[1])))
