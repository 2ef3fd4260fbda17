"""Envoy's global rate limit, answered by Usage from Redis counters.

Descriptors (what the gateway's `rate_limits` actions send; the domain is ignored):

- an entry `org_id` (value: x-aimesh-org) and no `key_id`  -> the organization's window,
  limited to the policy's organization_requests_per_minute;
- an entry `key_id` (value: x-aimesh-key-id), with or without `org_id` -> that API key's
  window, limited to api_key_requests_per_minute of the key's organization (the `org_id` of
  the same descriptor, else the first `org_id` anywhere in the request);
- anything else -> OK without a limit (so a new gateway action cannot block traffic).

Windows are fixed, one per UTC minute. All windows of one request are checked and incremented
by a single Lua script: either every window takes the hits or none does (a rejected request
consumes no quota), so exactly `limit` requests pass per window however many race.

Policies come from SetRateLimitPolicy (Billing, on plan changes), are stored in PostgreSQL and
cached in Redis (write-through on set, fill-on-miss otherwise); organizations without one get
the defaults AIMESH_RATELIMIT_DEFAULT_ORG_RPM / AIMESH_RATELIMIT_DEFAULT_KEY_RPM.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.common.cache import ServiceCache
from services.common.config import Settings
from services.common.errors import FieldViolations
from services.common.names import resource
from services.usage import metrics as usage_metrics
from services.usage.store import Store

WINDOW_SECONDS = 60
POLICY_CACHE_SECONDS = 300
DEFAULT_MARKER = b"default"
ORG_ENTRY = "org_id"
KEY_ENTRY = "key_id"

# KEYS: window counters; ARGV[1]: hits, ARGV[2]: counter ttl (ms), ARGV[3..]: limit per key.
# Returns {over (0/1), count_1, ..., count_n}: counts after the increment when allowed, the
# untouched counts when over.
_CHECK_AND_INCREMENT = """
local hits = tonumber(ARGV[1])
local over = 0
local counts = {}
for i, key in ipairs(KEYS) do
  local current = tonumber(redis.call('GET', key) or '0')
  counts[i] = current
  if current + hits > tonumber(ARGV[i + 2]) then over = 1 end
end
if over == 0 then
  for i, key in ipairs(KEYS) do
    counts[i] = redis.call('INCRBY', key, hits)
    if counts[i] == hits then redis.call('PEXPIRE', key, ARGV[2]) end
  end
end
table.insert(counts, 1, over)
return counts
"""


@dataclass(frozen=True)
class Policy:
    org_rpm: int
    key_rpm: int
    plan: str = ""
    is_default: bool = False


@dataclass(frozen=True)
class Check:
    """One descriptor's window: `kind` is "org", "api_key" or "" (no limit applies)."""

    kind: str
    org: str = ""
    key_id: str = ""


@dataclass(frozen=True)
class Status:
    over: bool
    limit: int  # 0: no limit applies
    remaining: int
    kind: str


@dataclass(frozen=True)
class Decision:
    over: bool
    statuses: list[Status]
    seconds_until_reset: float


def classify(descriptors: Sequence[Sequence[tuple[str, str]]]) -> list[Check]:
    """Map Envoy descriptors (lists of (key, value) entries) to windows."""
    request_org = ""
    for entries in descriptors:
        for key, value in entries:
            if key == ORG_ENTRY and value:
                request_org = value
                break
        if request_org:
            break
    checks = []
    for entries in descriptors:
        values = {k: v for k, v in entries if v}
        if KEY_ENTRY in values:
            checks.append(Check("api_key", values.get(ORG_ENTRY, request_org), values[KEY_ENTRY]))
        elif ORG_ENTRY in values:
            checks.append(Check("org", values[ORG_ENTRY]))
        else:
            checks.append(Check(""))
    return checks


class RateLimiter:
    def __init__(self, settings: Settings, store: Store, cache: ServiceCache) -> None:
        self.settings = settings
        self.store = store
        self.cache = cache
        self._script = cache.redis.register_script(_CHECK_AND_INCREMENT)

    def default_policy(self) -> Policy:
        return Policy(
            self.settings.ratelimit_default_org_rpm,
            self.settings.ratelimit_default_key_rpm,
            is_default=True,
        )

    def _policy_key(self, org: str) -> str:
        return self.cache.key("rlpolicy", org)

    async def policy(self, org: str) -> Policy:
        cached = await self.cache.redis.get(self._policy_key(org))
        if cached is not None:
            return self._decode(cached)
        row = await self.store.get_rate_limit_policy(org)
        if row is None:
            value = DEFAULT_MARKER
        else:
            value = f"{row['org_rpm']},{row['key_rpm']},{row['plan']}".encode()
        # NX: never overwrite what a concurrent SetRateLimitPolicy just wrote through.
        await self.cache.redis.set(self._policy_key(org), value, ex=POLICY_CACHE_SECONDS, nx=True)
        return self._decode(value)

    def _decode(self, value: bytes) -> Policy:
        if value == DEFAULT_MARKER:
            return self.default_policy()
        org_rpm, key_rpm, plan = value.decode().split(",", 2)
        return Policy(int(org_rpm), int(key_rpm), plan)

    async def policy_changed(self, org: str, policy: Policy) -> None:
        """Write-through after the policy row committed: the next check sees it."""
        value = f"{policy.org_rpm},{policy.key_rpm},{policy.plan}".encode()
        await self.cache.redis.set(self._policy_key(org), value, ex=POLICY_CACHE_SECONDS)

    async def check(
        self, descriptors: Sequence[Sequence[tuple[str, str]]], hits: int, now: float | None = None
    ) -> Decision:
        now = time.time() if now is None else now
        window = int(now // WINDOW_SECONDS)
        reset = (window + 1) * WINDOW_SECONDS - now
        checks = classify(descriptors)
        policies: dict[str, Policy] = {}
        keys: list[str] = []
        limits: list[int] = []
        limited: list[int] = []  # index into checks of each Redis key
        for index, check in enumerate(checks):
            if not check.kind:
                continue
            if check.org not in policies:
                policies[check.org] = (
                    await self.policy(check.org) if check.org else self.default_policy()
                )
            policy = policies[check.org]
            if check.kind == "org":
                keys.append(self.cache.key("rl", "org", check.org, str(window)))
                limits.append(policy.org_rpm)
            else:
                keys.append(self.cache.key("rl", "key", check.org, check.key_id, str(window)))
                limits.append(policy.key_rpm)
            limited.append(index)
        statuses = [Status(False, 0, 0, c.kind) for c in checks]
        if not keys:
            return Decision(False, statuses, reset)
        ttl_ms = int(reset * 1000) + 1000
        result = await self._script(keys=keys, args=[hits, ttl_ms, *limits])
        over = bool(result[0])
        for position, index in enumerate(limited):
            count = int(result[position + 1])
            limit = limits[position]
            # When the request is refused the counts are pre-request: say which window refused.
            this_over = over and count + hits > limit
            statuses[index] = Status(this_over, limit, max(limit - count, 0), checks[index].kind)
        usage_metrics.record_ratelimit(over)
        return Decision(over, statuses, reset)


RATE_LIMIT_POLICY = resource("usage.aimesh.dev/RateLimitPolicy")
MAX_RPM = 10_000_000


def check_policy(p: Any, v: FieldViolations) -> None:
    """A SetRateLimitPolicy request's policy (usage.v1.RateLimitPolicy): positive limits."""
    v.check(0 < p.organization_requests_per_minute <= MAX_RPM,
            "policy.organization_requests_per_minute", f"must be 1..{MAX_RPM}")
    v.check(0 < p.api_key_requests_per_minute <= MAX_RPM,
            "policy.api_key_requests_per_minute", f"must be 1..{MAX_RPM}")
    v.check(len(p.plan) <= 200, "policy.plan", "at most 200 characters")
