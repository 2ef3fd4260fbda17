"""In-process copies of the Redis entries Check reads on every gateway request (API-key entries,
revocation markers), so an admitted request usually costs Auth no Redis round trip.

Correctness rests on invalidation, not on expiry: every write of such an entry publishes its
key on Auth's `changed` channel in the same surely-applied Redis write (RedisGuard.write_surely),
and every Auth process drops its copy when the message arrives (milliseconds, far inside the 1 s
the gateway has to enforce a revocation). Copies are used only while this process is subscribed
and Redis answers: on any subscription error the mirror empties itself, and reads go to Redis
(or PostgreSQL) until it has subscribed again. A value read from Redis while an invalidation
arrived is not kept (generation check), and copies also expire after MIRROR_SECONDS.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from services.auth.redis_guard import RedisGuard
from services.common.cache import HeldCopies, follow_channel
from services.common.gateway_jwt import CHANGED_CHANNEL, announced_here

MIRROR_SECONDS = 10.0
MAX_ENTRIES = 100_000
POLL_SECONDS = 5.0  # how long one wait for a message lasts (a ping follows an idle wait)
RESUBSCRIBE_AFTER = 1.0


class _Missing:
    pass


MISSING: Any = _Missing()  # get(): this process holds no copy (the value itself may be None)


class Mirror(HeldCopies[Any]):
    def __init__(self, redis: RedisGuard) -> None:
        super().__init__(MIRROR_SECONDS, MAX_ENTRIES)
        self.redis = redis

    @property
    def channel(self) -> str:
        return self.redis.key(CHANGED_CHANNEL)

    @property
    def usable(self) -> bool:
        return self.live and self.redis.usable

    def get(self, key: str, default: Any = MISSING) -> Any:
        """The copy of `key`'s value (None: the entry is absent), or MISSING."""
        return super().get(key, default)

    async def announce(self, r: Redis, *keys: str) -> None:
        """Tell every Auth process (and every service holding API-key verdicts) that `keys`
        changed (call inside the write's operation). This process applies it at once: its next
        request must not read a copy the message has not reached yet."""
        await r.publish(self.channel, "\n".join(keys))
        self.forget(keys)
        announced_here(keys)

    async def listen(self) -> None:
        """Background task for the life of the server: apply invalidations as they arrive."""
        cache = self.redis.cache
        if cache is None:
            return

        async def subscribed() -> None:
            self.subscribed()

        await follow_channel(cache.redis, self.channel, subscribed, self.forget, self.lost,
                             POLL_SECONDS, RESUBSCRIBE_AFTER)
