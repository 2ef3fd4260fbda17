"""Auth's Redis access on the request path: a short timeout per call and, after a failure, a
brief window in which Redis is skipped, so a slow or absent Redis never slows every request
(callers fall back to PostgreSQL). Writes that must not be lost (revocations) are retried in
the background until they land."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.cache import ServiceCache

log = logging.getLogger("aimesh.auth")

REDIS_TIMEOUT = 0.25  # seconds per call on the request path
REDIS_RETRY_AFTER = 1.0  # seconds Redis is skipped after a failure
WRITE_TIMEOUT = 2.0

T = TypeVar("T")
Spawn = Callable[[Awaitable[Any], str], Any]


class RedisUnavailable(Exception):
    """Redis did not answer (or is being skipped): use the PostgreSQL path."""


class RedisGuard:
    def __init__(self, cache: ServiceCache | None, spawn: Spawn) -> None:
        self.cache = cache
        self._spawn = spawn
        self._down_until = 0.0

    @property
    def usable(self) -> bool:
        return self.cache is not None and time.monotonic() >= self._down_until

    def key(self, *parts: str) -> str:
        assert self.cache is not None
        return self.cache.key(*parts)

    async def run(self, op: Callable[[Redis], Awaitable[T]], timeout: float = REDIS_TIMEOUT) -> T:
        """`op(redis)` within `timeout`, or RedisUnavailable."""
        if not self.usable:
            raise RedisUnavailable
        assert self.cache is not None
        try:
            return await asyncio.wait_for(op(self.cache.redis), timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            raise RedisUnavailable from None

    async def write_surely(self, op: Callable[[Redis], Awaitable[Any]], what: str,
                           keep_trying_seconds: float) -> None:
        """Apply a write that must not be lost; if Redis fails, keep retrying it in the
        background for as long as the state it replaces could still be read."""
        if self.cache is None:
            return
        try:
            await asyncio.wait_for(op(self.cache.redis), WRITE_TIMEOUT)
            return
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
        log.error("could not write %s to Redis; retrying", what)
        self._spawn(self._retry(op, keep_trying_seconds), f"redis-retry-{what}")

    async def _retry(self, op: Callable[[Redis], Awaitable[Any]], seconds: float) -> None:
        assert self.cache is not None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(REDIS_RETRY_AFTER)
            try:
                await asyncio.wait_for(op(self.cache.redis), WRITE_TIMEOUT)
                return
            except (RedisError, OSError, TimeoutError):
                continue

    def _failed(self, exc: BaseException) -> None:
        if time.monotonic() >= self._down_until:
            log.warning("Redis unavailable, using PostgreSQL: %r", exc)
        self._down_until = time.monotonic() + REDIS_RETRY_AFTER
