"""Password-guessing throttle: after FAILURES_ALLOWED failed logins for one e-mail within the
window, further attempts are refused until it passes. Counted in Redis (shared by replicas);
without Redis the throttle is skipped rather than blocking every login."""

from __future__ import annotations

from redis.asyncio import Redis

from services.auth.errors import Exhausted
from services.auth.redis_guard import RedisGuard, RedisUnavailable

FAILURES_ALLOWED = 10
WINDOW_SECONDS = 900


class LoginThrottle:
    def __init__(self, redis: RedisGuard) -> None:
        self.redis = redis

    async def check(self, email: str) -> None:
        """Raise Exhausted while `email` is throttled."""
        key = self.redis.key("login-fail", email) if self.redis.cache else ""

        async def read(r: Redis) -> tuple[bytes | None, int]:
            async with r.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.ttl(key)
                failures, ttl = await pipe.execute()
            return failures, int(ttl)

        try:
            failures, ttl = await self.redis.run(read)
        except RedisUnavailable:
            return
        if failures is not None and int(failures) >= FAILURES_ALLOWED:
            raise Exhausted("too many failed logins for this e-mail; try again later",
                            "LOGIN_THROTTLED", retry_after_seconds=float(max(ttl, 1)))

    async def failed(self, email: str) -> None:
        if not self.redis.usable:
            return
        key = self.redis.key("login-fail", email)

        async def count(r: Redis) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, WINDOW_SECONDS, nx=True)
                await pipe.execute()

        try:
            await self.redis.run(count)
        except RedisUnavailable:
            return
