"""services.common.db.check_pooled_connection: a live pooled connection passes without a round
trip, and one whose backend ended (as after a database restart) is caught before a request uses
it. tests/mesh/test_database_restart.py covers the whole restart."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from services.common.db import check_pooled_connection
from tests.support.mesh import TestMesh


async def test_an_ended_backend_is_caught_a_live_one_passes(mesh: TestMesh) -> None:
    url = mesh.settings.database_url
    async with await psycopg.AsyncConnection.connect(url) as conn, \
            await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await check_pooled_connection(conn)
        await conn.execute("SELECT 1")  # still usable: the check sent nothing that needs an answer
        await conn.rollback()
        await admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        for _ in range(50):  # the server's goodbye reaches the socket shortly after
            try:
                await check_pooled_connection(conn)
            except psycopg.OperationalError:
                return
            await asyncio.sleep(0.05)
        pytest.fail("a connection whose backend was terminated passed the check")
