"""Redis for one service: every key it writes is prefixed with the service name."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis

log = logging.getLogger("aimesh.cache")
T = TypeVar("T")

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


async def follow_channel(
    redis: Redis,
    channel: str,
    subscribed: Callable[[], Awaitable[None]],
    received: Callable[[list[str]], Awaitable[None] | None],
    lost: Callable[[], None],
    poll_seconds: float = 5.0,
    resubscribe_after: float = 1.0,
) -> None:
    """Forever (a background task): subscribe to `channel`, await `subscribed()` (load what the
    messages will keep current: subscribing first means no change is missed), then hand every
    message's lines to `received`. When the subscription fails, `lost()` (whatever was held may
    miss messages from now on), then subscribe again after `resubscribe_after` seconds."""
    while True:
        pubsub = redis.pubsub()
        listening = False
        try:
            await pubsub.subscribe(channel)
            await subscribed()
            listening = True
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=poll_seconds)
                if message is None:
                    await pubsub.ping()  # a dead connection raises here
                elif message.get("type") == "message":
                    done = received(message["data"].decode().split("\n"))
                    if done is not None:
                        await done
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # once per loss, not once per retry while Redis is away
            log.log(logging.WARNING if listening else logging.DEBUG,
                    "channel %s lost, resubscribing: %r", channel, exc)
        finally:
            lost()
            try:
                await pubsub.aclose()
            except Exception:
                pass
        await asyncio.sleep(resubscribe_after)


class HeldCopies(Generic[T]):
    """Values copied into process memory that stay correct by invalidation, not by expiry: used
    only while `usable` (subscribed to the channel that announces their changes), dropped when
    a change is announced (`forget`), kept at most `seconds` besides, and a value read while an
    invalidation arrived is not kept (take `generation()` before reading, pass it to `put`)."""

    def __init__(self, seconds: float, max_entries: int) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self.live = False  # subscribed: set by the channel's listener (subscribed(), lost())
        self._entries: dict[str, tuple[float, T]] = {}
        self._generation = 0

    @property
    def usable(self) -> bool:
        return self.live

    def get(self, key: str, default: Any = None) -> T | Any:
        """The copy held for `key`, or `default`."""
        if not self.usable:
            return default
        held = self._entries.get(key)
        if held is None or held[0] < time.monotonic():
            return default
        return held[1]

    def generation(self) -> int:
        """Take before reading the source; pass to put() so a raced invalidation wins."""
        return self._generation

    def put(self, key: str, value: T, generation: int) -> None:
        if not self.usable or generation != self._generation:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.seconds, value)

    def forget(self, keys: Iterable[str] | None = None) -> None:
        """Drop the copies of `keys` (None: all of them)."""
        self._generation += 1
        if keys is None:
            self._entries.clear()
        else:
            for key in keys:
                self._entries.pop(key, None)

    def subscribed(self) -> None:
        self.forget()  # whatever was held before may have missed messages
        self.live = True

    def lost(self) -> None:
        self.live = False
        self.forget()
