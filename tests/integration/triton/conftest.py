"""Triton fixtures: the session mesh's Triton (tests/support/mesh.py: reuses a tritonserver
already ready on the configured address, otherwise starts one for the session)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.common.triton import TritonClient
from tests.support.mesh import TestMesh


@pytest.fixture(scope="session")
def triton_url(mesh_process: TestMesh) -> str:
    return mesh_process.ensure_triton()


@pytest.fixture(scope="session")
async def triton(triton_url: str) -> AsyncIterator[TritonClient]:
    client = TritonClient(triton_url, default_timeout=60.0)
    await client.wait_until_ready(timeout=120.0)
    yield client
    await client.close()
