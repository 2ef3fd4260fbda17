"""Redis for one service: every key it writes is prefixed with the service name."""

from __future__ import annotations

from redis.asyncio import Redis

# Knowledge publishes an organization id here after each change of that organization's
# searchable corpus (a document became READY, or a READY one was deleted); services that
# remember conclusions about an organization's documents (the Orchestrator: "has documents to
# ground on") drop them when it arrives. An event, not shared state: no other key is read.
CORPUS_CHANGED_CHANNEL = "knowledge:corpus-changed"


class ServiceCache:
    """A redis-py asyncio client plus the service's key prefix (`<svc>:`)."""

    def __init__(self, url: str, service: str, socket_timeout: float = 5) -> None:
        self.service = service
        self.prefix = f"{service}:"
        self.redis: Redis = Redis.from_url(
            url, socket_connect_timeout=min(2, socket_timeout), socket_timeout=socket_timeout,
            health_check_interval=30,
        )

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def close(self) -> None:
        await self.redis.aclose()
