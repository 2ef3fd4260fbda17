"""Session-wide fixtures. Integration tests start real components through tests/support/mesh.py
(PostgreSQL and Redis come from scripts/setup, which scripts/test runs first).

A failed test that used the mesh reports what each component logged meanwhile (the tail of
every log under the mesh's log folder), so a CI failure carries its services' tracebacks."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from tests.support.mesh import TestMesh, log_offsets, log_report

_session_mesh: list[TestMesh] = []  # the session's mesh once the fixture made it
_LOG_OFFSETS = pytest.StashKey[dict[Path, int]]()


@pytest.fixture(scope="session")
def mesh_process(request: pytest.FixtureRequest) -> Iterator[TestMesh]:
    mesh = TestMesh()
    _session_mesh.append(mesh)
    try:
        yield mesh
    finally:
        _session_mesh.clear()
        mesh.close(keep_logs=request.session.testsfailed > 0)


@pytest.fixture(scope="session")
async def mesh(mesh_process: TestMesh) -> AsyncIterator[TestMesh]:
    """The session's mesh; its aio channels live in the session event loop."""
    yield mesh_process
    await mesh_process.aclose()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    if _session_mesh:  # where the logs stood when this test began (before its fixtures)
        item.stash[_LOG_OFFSETS] = log_offsets(_session_mesh[0].stack.log_dir)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and _session_mesh and "mesh_process" in getattr(item, "fixturenames", ()):
        logs = log_report(_session_mesh[0].stack.log_dir, item.stash.get(_LOG_OFFSETS, None))
        report.sections.append(("test mesh logs written during this test (tails)", logs))
