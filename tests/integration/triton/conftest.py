"""Triton fixtures: reuse a tritonserver that already answers on the configured address,
otherwise start one (scripts/triton_server.py) for the session and stop it at the end.

`running_triton()` is a plain context manager so other conftests can lift it as is.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from scripts import triton_server as launcher
from services.common.config import Settings
from services.common.triton import TritonClient


@contextlib.contextmanager
def running_triton(grpc_port: int | None = None, timeout: float = 300.0) -> Iterator[str]:
    """Yield the gRPC address of a ready tritonserver serving triton/models."""
    url = Settings.from_env().triton_url
    host, _, port = url.rpartition(":")
    grpc = grpc_port or int(port)
    # Same convention as scripts/stack.py: HTTP one below the gRPC port, metrics one above.
    ports = launcher.TritonPorts(grpc=grpc, http=grpc - 1, metrics=grpc + 1)
    if launcher.port_in_use(ports.grpc, host or "127.0.0.1"):
        # Someone (scripts/up, a previous session) runs it: wait until its models are loaded.
        launcher.wait_ready(ports, host=host or "127.0.0.1", timeout=timeout)
        yield f"{host}:{ports.grpc}"
        return
    try:
        proc = launcher.start(ports=ports, timeout=timeout)
    except RuntimeError:
        # Another session started one in the meantime (both saw a free port): use theirs.
        if not launcher.port_in_use(ports.grpc):
            raise
        launcher.wait_ready(ports, timeout=timeout)
        yield f"127.0.0.1:{ports.grpc}"
        return
    try:
        yield f"127.0.0.1:{ports.grpc}"
    finally:
        launcher.stop(proc)


@pytest.fixture(scope="session")
def triton_url() -> Iterator[str]:
    with running_triton() as url:
        yield url


@pytest.fixture(scope="session")
async def triton(triton_url: str) -> AsyncIterator[TritonClient]:
    client = TritonClient(triton_url, default_timeout=60.0)
    await client.wait_until_ready(timeout=120.0)
    yield client
    await client.close()
