"""services.common.db.check_pooled_connection: a live pooled connection passes without a round
trip, and one whose backend ended (as after a database restart) is caught before a request uses
it. tests/mesh/test_database_restart.py covers the whole restart."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from services.common.db import Database, check_pooled_connection
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


async def test_autocommit_connections_go_back_to_the_pool_transactional(mesh: TestMesh) -> None:
    """Database.autocommit(): one round trip per statement inside, and whatever happened there
    (a refused statement, an exception in the block) the pool's next user gets an ordinary
    transactional connection, and the pool's size is kept."""
    db = Database(mesh.settings.database_url, "auth", max_size=1)
    await db.open()
    try:
        async with db.autocommit() as conn:
            assert conn.autocommit
            await conn.execute("SELECT 1")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with pytest.raises(psycopg.errors.DivisionByZero):
            async with db.autocommit() as conn:
                await conn.execute("SELECT 1 / 0")
        with pytest.raises(LookupError):
            async with db.autocommit():
                raise LookupError("the block failed")
        async with db.connection() as conn:  # the one connection, back in the pool
            assert not conn.autocommit
            await conn.execute("SELECT 1")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert db.pool.get_stats()["pool_size"] == 1
    finally:
        await db.close()
