"""Auth's domain object opened on the test mesh's migrated PostgreSQL, with a chosen Redis (a
dead address to test the PostgreSQL fallbacks), for tests that drive Auth below gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.auth.domain import AuthDomain
from services.common.cache import ServiceCache
from services.common.db import Database
from tests.support.mesh import TestMesh


@asynccontextmanager
async def open_domain(mesh: TestMesh, redis_url: str) -> AsyncIterator[AuthDomain]:
    mesh.ensure("auth")  # applies Auth's migrations
    db = Database(mesh.settings.database_url, "auth", 4)
    await db.open()
    cache = ServiceCache(redis_url, "auth")
    spawned = []
    auth = AuthDomain(db, cache, mesh.settings.auth_secret, 900, frozenset(),
                      lambda coro, name: spawned.append(coro))
    try:
        yield auth
    finally:
        for coro in spawned:
            coro.close()  # background work (e.g. Redis retries) is not awaited in these tests
        await cache.close()
        await db.close()
