"""PostgreSQL for one service: an async pool bound to the service's own schema, and its migrations.

Each service owns one schema (named after it) in the shared database; its connections set
`search_path` to it, so its SQL names bare tables. Migrations are plain SQL files under
services/<svc>/migrations, applied with yoyo at start-up (tracked per schema).
"""

from __future__ import annotations

import asyncio
import logging
import select
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from services.common.config import ConfigError
from services.common.errors import ServiceError, invalid_argument, unavailable

log = logging.getLogger(__name__)

# One row as every store returns it (psycopg's dict_row): column name -> value.
Row = dict[str, Any]


class StartupError(Exception):
    """A dependency needed at start-up cannot be reached; the message names it and its variable."""


def _describe(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}/{parts.path.lstrip('/')}"


POOL_WAIT_SECONDS = 3.0


def is_transient(exc: BaseException) -> bool:
    """A broken or unreachable database (restart, failover, network): worth retrying later."""
    return isinstance(exc, psycopg.OperationalError)


def is_broken_connection(exc: BaseException) -> bool:
    """A connection that broke during the call (worth one immediate retry on a fresh one), as
    opposed to no connection at all within POOL_WAIT_SECONDS (retrying would only wait again)."""
    return isinstance(exc, psycopg.OperationalError) and not isinstance(exc, PoolTimeout)


def database_error(exc: BaseException) -> ServiceError | None:
    """The client-facing error for a database failure, or None if `exc` is not one:
    unreachable → UNAVAILABLE (retryable); a value PostgreSQL cannot store → INVALID_ARGUMENT.
    Messages never carry driver class names or SQL."""
    if is_transient(exc):
        log.warning("database unavailable: %s", exc)
        return unavailable("the database is temporarily unavailable; retry shortly",
                           reason="DATABASE_UNAVAILABLE", retry_after_seconds=1.0)
    if isinstance(exc, psycopg.DataError):
        log.warning("database refused a value: %s", exc)
        return invalid_argument(
            "a value in the request cannot be stored (out of range or malformed)",
            [("", "out of range or malformed value")],
            reason="VALUE_NOT_STORABLE",
        )
    return None


async def check_pooled_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """Raise if a connection leaving the pool is dead, paying a round trip only when in doubt.

    An idle connection's socket has nothing to read unless the server spoke: a backend that
    ended (database restart, terminated or crashed backend) leaves its FATAL message or the
    end of the stream there. So a socket with nothing to read is alive as far as a round trip
    could tell as well (a silent network loss would stall that round trip too), and only a
    readable one gets psycopg_pool's full check (an empty query)."""
    try:
        idle = select.poll()  # poll, not select: no limit on descriptor numbers
        idle.register(conn.pgconn.socket, select.POLLIN)
        readable = bool(idle.poll(0))
    except (OSError, ValueError, psycopg.Error):
        readable = True  # closed or unusable: the full check says so
    if readable:
        await AsyncConnectionPool.check_connection(conn)


class Database:
    """The service's pool. Rows come back as dicts; `search_path` is the service schema."""

    def __init__(self, url: str, schema: str, max_size: int = 10) -> None:
        if not schema.isidentifier():
            raise ConfigError(f"schema name {schema!r} is not an identifier")
        self.url = url
        self.schema = schema
        self.pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            kwargs={"options": f"-c search_path={schema}", "row_factory": dict_row},
            name=f"aimesh-{schema}",
            # A connection is checked as it leaves the pool: after a database restart a stale
            # one is replaced instead of failing the request that drew it.
            check=check_pooled_connection,
            # While the database is away a request waits this long for a connection, then
            # fails UNAVAILABLE (database_error) rather than hanging past the caller's deadline.
            timeout=POOL_WAIT_SECONDS,
        )

    async def open(self, timeout: float = 10.0) -> None:
        try:
            await self.pool.open(wait=True, timeout=timeout)
        except Exception as exc:  # psycopg_pool.PoolTimeout hides the cause; name the address
            raise StartupError(
                f"cannot reach PostgreSQL at {_describe(self.url)} (AIMESH_DATABASE_URL): {exc}"
            ) from None

    async def close(self) -> None:
        await self.pool.close()

    async def ping(self) -> bool:
        try:
            async with self.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
            return True
        except Exception:
            return False

    def connection(self, timeout: float | None = None):  # type: ignore[no-untyped-def]
        """`async with db.connection() as conn:` — a pooled connection, committed on success."""
        return self.pool.connection(timeout=timeout)

    def autocommit(self, timeout: float | None = None) -> AbstractAsyncContextManager[Any]:
        """A pooled connection in autocommit mode, for self-contained statements on a hot path:
        one round trip each instead of three (BEGIN, the statement, COMMIT)."""
        return _Autocommit(self.pool, timeout)

    async def migrate(self, migrations_dir: Path) -> list[str]:
        """Create the schema if needed and apply pending migrations; returns the ids applied."""
        return await asyncio.to_thread(apply_migrations, self.url, self.schema, migrations_dir)


class _Autocommit:
    """`Database.autocommit()`: the pool's getconn/putconn around the autocommit switch, as a
    plain class (it runs once per hot read: pool.connection() under asynccontextmanager costs
    two generator context managers, and its commit on exit has no transaction to end here)."""

    __slots__ = ("conn", "pool", "timeout")

    def __init__(self, pool: AsyncConnectionPool, timeout: float | None) -> None:
        self.pool = pool
        self.timeout = timeout
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        conn = await self.pool.getconn(self.timeout)
        try:
            await conn.set_autocommit(True)
        except BaseException:
            await self.pool.putconn(conn)
            raise
        self.conn = conn
        return conn

    async def __aexit__(self, *exc_info: object) -> None:
        conn = self.conn
        assert conn is not None
        self.conn = None
        try:
            if not conn.closed:
                await conn.set_autocommit(False)
        finally:
            # The pool checks what comes back: a broken connection is replaced, one left in a
            # transaction (an explicit BEGIN) is rolled back.
            await self.pool.putconn(conn)


def apply_migrations(url: str, schema: str, migrations_dir: Path) -> list[str]:
    from yoyo import get_backend, read_migrations

    try:
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StartupError(
            f"cannot reach PostgreSQL at {_describe(url)} (AIMESH_DATABASE_URL): {first_line}"
        ) from None
    if not migrations_dir.is_dir():
        return []
    parts = urlsplit(url)
    query = f"{parts.query}&schema={schema}" if parts.query else f"schema={schema}"
    yoyo_url = urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, query, ""))
    backend = get_backend(yoyo_url, migration_table="_yoyo_migration")
    migrations = read_migrations(str(migrations_dir))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    applied = [m.id for m in pending]
    if applied:
        log.info("applied migrations", extra={"schema": schema, "migrations": applied})
    return applied
