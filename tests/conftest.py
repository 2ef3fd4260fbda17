"""Session-wide fixtures. Integration tests start real components through tests/support/mesh.py
(PostgreSQL and Redis come from scripts/setup, which scripts/test runs first)."""

from __future__ import annotations

from typing import AsyncIterator, Iterator

import pytest

from tests.support.mesh import TestMesh


@pytest.fixture(scope="session")
def mesh_process(request: pytest.FixtureRequest) -> Iterator[TestMesh]:
    mesh = TestMesh()
    try:
        yield mesh
    finally:
        mesh.close(keep_logs=request.session.testsfailed > 0)


@pytest.fixture(scope="session")
async def mesh(mesh_process: TestMesh) -> AsyncIterator[TestMesh]:
    """The session's mesh; its aio channels live in the session event loop."""
    yield mesh_process
    await mesh_process.aclose()
