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
cached in Redis (write-through on set, fill-on-miss otherwise). Organizations without their own
get the default policy `organizations/-/rateLimitPolicy`, which Billing sets to its default
plan's limits, so a new organization has its plan's limits from sign-up; until Billing has
ever set it, AIMESH_RATELIMIT_DEFAULT_ORG_RPM / AIMESH_RATELIMIT_DEFAULT_KEY_RPM apply.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
# The organization id of the default policy (AIP-159's "-": any organization without its own).
DEFAULT_POLICY_ORG = "-"
DEFAULT_POLICY_MEMORY_SECONDS = 5.0  # the default is read per check: keep it in memory briefly
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
        self._default: tuple[float, Policy] | None = None

    def configured_default(self) -> Policy:
        return Policy(
            self.settings.ratelimit_default_org_rpm,
            self.settings.ratelimit_default_key_rpm,
            is_default=True,
        )

    async def default_policy(self) -> Policy:
        """The policy of organizations without their own: the default plan's, as Billing set it."""
        remembered = self._default
        if remembered is not None and (
            time.monotonic() - remembered[0] < DEFAULT_POLICY_MEMORY_SECONDS
        ):
            return remembered[1]
        stored = await self._stored(DEFAULT_POLICY_ORG)
        policy = replace(stored, is_default=True) if stored else self.configured_default()
        self._default = (time.monotonic(), policy)
        return policy

    def _policy_key(self, org: str) -> str:
        return self.cache.key("rlpolicy", org)

    async def policy(self, org: str) -> Policy:
        own = await self._stored(org)
        return own if own is not None else await self.default_policy()

    async def _stored(self, org: str) -> Policy | None:
        """The organization's own policy (None: it has none), cached in Redis."""
        cached = await self.cache.redis.get(self._policy_key(org))
        if cached is None:
            row = await self.store.get_rate_limit_policy(org)
            if row is None:
                cached = DEFAULT_MARKER
            else:
                cached = f"{row['org_rpm']},{row['key_rpm']},{row['plan']}".encode()
            # NX: never overwrite what a concurrent SetRateLimitPolicy just wrote through.
            await self.cache.redis.set(
                self._policy_key(org), cached, ex=POLICY_CACHE_SECONDS, nx=True
            )
        if cached == DEFAULT_MARKER:
            return None
        org_rpm, key_rpm, plan = cached.decode().split(",", 2)
        return Policy(int(org_rpm), int(key_rpm), plan)

    async def policy_changed(self, org: str, policy: Policy) -> None:
        """Write-through after the policy row committed: the next check sees it."""
        value = f"{policy.org_rpm},{policy.key_rpm},{policy.plan}".encode()
        await self.cache.redis.set(self._policy_key(org), value, ex=POLICY_CACHE_SECONDS)
        if org == DEFAULT_POLICY_ORG:
            self._default = None

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
                    await self.policy(check.org) if check.org else await self.default_policy()
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
DEFAULT_POLICY_NAME = RATE_LIMIT_POLICY.format(DEFAULT_POLICY_ORG)
MAX_RPM = 10_000_000


def check_policy(p: Any, v: FieldViolations) -> None:
    """A SetRateLimitPolicy request's policy (usage.v1.RateLimitPolicy): positive limits."""
    v.check(
        0 < p.organization_requests_per_minute <= MAX_RPM,
        "policy.organization_requests_per_minute",
        f"must be 1..{MAX_RPM}",
    )
    v.check(
        0 < p.api_key_requests_per_minute <= MAX_RPM,
        "policy.api_key_requests_per_minute",
        f"must be 1..{MAX_RPM}",
    )
    v.check(len(p.plan) <= 200, "policy.plan", "at most 200 characters")


class Policies:
    """Get/SetRateLimitPolicy: the stored policies, kept in step with the limiter's cache."""

    def __init__(self, store: Store, limiter: RateLimiter) -> None:
        self.store = store
        self.limiter = limiter

    async def get(self, org: str) -> tuple[Policy, dt.datetime | None]:
        """The org's policy and when it was set; the default (no time) when it has none."""
        row = None if org == DEFAULT_POLICY_ORG else await self.store.get_rate_limit_policy(org)
        if row is None:
            return await self.limiter.default_policy(), None
        return Policy(row["org_rpm"], row["key_rpm"], row["plan"]), row["update_time"]

    async def set(self, p: Any) -> tuple[str, Policy, dt.datetime]:
        """Store a policy (a usage.v1.RateLimitPolicy) for the org it names, or the default
        (the AIP-159 "-" for an id); the limiter sees it at its next check. Returns the org."""
        v = FieldViolations()
        org = (
            DEFAULT_POLICY_ORG
            if p.name == DEFAULT_POLICY_NAME
            else RATE_LIMIT_POLICY.id(p.name, "policy.name", v)
        )
        check_policy(p, v)
        v.raise_if_any()
        row = await self.store.set_rate_limit_policy(
            org, p.organization_requests_per_minute, p.api_key_requests_per_minute, p.plan
        )
        policy = Policy(row["org_rpm"], row["key_rpm"], row["plan"])
        await self.limiter.policy_changed(org, policy)
        return org, policy, row["update_time"]
