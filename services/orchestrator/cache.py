"""Redis-backed stores of finished generations (keys under `orchestrator:`):

* the exact-match response cache for deterministic requests (temperature 0), keyed by a hash of
  the organization and the whole request except request_id;
* request_id replay (AIP-155): a retried Generate returns the first result instead of
  generating and metering again.

Each entry is the finished stream: the serialized GenerateResponse events, in order. Redis
being down only disables caching (errors are logged, never raised).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging

from aimesh.orchestrator.v1 import orchestrator_pb2
from redis.exceptions import RedisError

from services.common.cache import ServiceCache

log = logging.getLogger("aimesh.orchestrator.cache")

RESPONSE_TTL_SECONDS = 3600
REPLAY_TTL_SECONDS = 24 * 3600


def response_key(org: str, request: orchestrator_pb2.GenerateRequest) -> str:
    copy = orchestrator_pb2.GenerateRequest()
    copy.CopyFrom(request)
    copy.request_id = ""
    digest = hashlib.sha256(
        org.encode() + b"\0" + copy.SerializeToString(deterministic=True)
    ).hexdigest()
    return digest


class GenerationStore:
    def __init__(self, cache: ServiceCache | None) -> None:
        self.cache = cache

    async def _get(self, key: str) -> list[orchestrator_pb2.GenerateResponse] | None:
        if self.cache is None:
            return None
        try:
            raw = await self.cache.redis.get(key)
        except (RedisError, OSError) as exc:
            log.warning("cache read failed", extra={"error": str(exc)})
            return None
        if raw is None:
            return None
        return [
            orchestrator_pb2.GenerateResponse.FromString(base64.b64decode(e))
            for e in json.loads(raw)
        ]

    async def _put(
        self, key: str, events: list[orchestrator_pb2.GenerateResponse], ttl: int
    ) -> None:
        if self.cache is None:
            return
        value = json.dumps([base64.b64encode(e.SerializeToString()).decode() for e in events])
        try:
            await self.cache.redis.set(key, value, ex=ttl)
        except (RedisError, OSError) as exc:
            log.warning("cache write failed", extra={"error": str(exc)})

    def _response_key(self, digest: str) -> str:
        assert self.cache is not None
        return self.cache.key("response", digest)

    def _replay_key(self, org: str, request_id: str) -> str:
        assert self.cache is not None
        return self.cache.key("replay", org, request_id)

    async def cached_response(self, digest: str) -> list[orchestrator_pb2.GenerateResponse] | None:
        return await self._get(self._response_key(digest)) if self.cache else None

    async def store_response(
        self, digest: str, events: list[orchestrator_pb2.GenerateResponse]
    ) -> None:
        if self.cache:
            await self._put(self._response_key(digest), events, RESPONSE_TTL_SECONDS)

    async def replay(
        self, org: str, request_id: str
    ) -> list[orchestrator_pb2.GenerateResponse] | None:
        return await self._get(self._replay_key(org, request_id)) if self.cache else None

    async def store_replay(
        self, org: str, request_id: str, events: list[orchestrator_pb2.GenerateResponse]
    ) -> None:
        if self.cache:
            await self._put(self._replay_key(org, request_id), events, REPLAY_TTL_SECONDS)
