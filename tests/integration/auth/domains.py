"""Auth's domain object opened on the test mesh's migrated PostgreSQL, with a chosen Redis (a
dead address to test the PostgreSQL fallbacks), for tests that drive Auth below gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from services.auth.domain import AuthDomain
from services.common.cache import ServiceCache
from services.common.db import Database
from tests.support.mesh import TestMesh


@asynccontextmanager
async def open_domain(mesh: TestMesh, redis_url: str,
                      run_background: bool = False) -> AsyncIterator[AuthDomain]:
    """`run_background`: run the domain's background tasks (e.g. the mirror's invalidation
    listener) as a server would; otherwise they never start."""
    mesh.ensure("auth")  # applies Auth's migrations
    db = Database(mesh.settings.database_url, "auth", 4)
    await db.open()
    cache = ServiceCache(redis_url, "auth")
    spawned: list[Coroutine[Any, Any, Any]] = []
    tasks: list[asyncio.Future[Any]] = []

    def spawn(coro: Coroutine[Any, Any, Any], name: str) -> None:
        if run_background:
            tasks.append(asyncio.ensure_future(coro))
        else:
            spawned.append(coro)

    auth = AuthDomain(db, cache, mesh.settings.auth_secret, 900, frozenset(), spawn)
    try:
        yield auth
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for coro in spawned:
            coro.close()  # never started
        await cache.close()
        await db.close()
