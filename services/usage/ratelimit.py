"""Rate limits: per-minute windows counted in Redis, with limits from the organization's policy.

Descriptors (what a rate-limit request carries; the domain is ignored):

- an entry `org_id` (value: x-aimesh-org) and no `key_id`  -> the organization's window,
  limited to the policy's organization_requests_per_minute;
- an entry `key_id` (value: x-aimesh-key-id), with or without `org_id` -> that API key's
  window, limited to api_key_requests_per_minute of the key's organization (the `org_id` of
  the same descriptor, else the first `org_id` anywhere in the request);
- anything else -> OK without a limit (so a new gateway action cannot block traffic).

Windows are fixed, one per UTC minute. One Lua script reads the request's policies and checks
and increments all its windows in a single Redis round trip: either every window takes the
hits or none does (a rejected request consumes no quota), so exactly `limit` requests pass per
window however many race.

Two callers run the same `Counters`: Usage's RateLimitService (ShouldRateLimit, for an Envoy
ratelimit filter) and the gateway's ext_authz Check in Auth's process, which counts the request
right after admitting the caller, so a gateway request pays one gRPC hop, not two
(`gateway_limits`). Either way the counters and policies are Usage's Redis keys (prefix
`usage:`), read and written only by this module; PostgreSQL stays Usage's alone.

Policies come from SetRateLimitPolicy (Billing, on plan changes), are stored in PostgreSQL and
published by Usage to Redis without expiry: write-through on set, and every
POLICY_PUBLISH_SECONDS (and at start) any missing entry is restored, so a flushed Redis heals.
An organization without a published policy gets the default policy
`organizations/-/rateLimitPolicy`, which Billing sets to its default plan's limits, so a new
organization has its plan's limits from sign-up; until Billing has ever set it,
AIMESH_RATELIMIT_DEFAULT_ORG_RPM / AIMESH_RATELIMIT_DEFAULT_KEY_RPM apply.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from redis.exceptions import RedisError

from services.common.cache import ServiceCache
from services.common.config import Settings
from services.common.errors import (
    FieldViolations,
    ServiceError,
    resource_exhausted,
    unavailable,
)
from services.common.names import resource
from services.usage import metrics as usage_metrics
from services.usage.store import Store

log = logging.getLogger("aimesh.usage.ratelimit")

WINDOW_SECONDS = 60
POLICY_PUBLISH_SECONDS = 60.0
# The organization id of the default policy (AIP-159's "-": any organization without its own).
DEFAULT_POLICY_ORG = "-"
DEFAULT_POLICY_MEMORY_SECONDS = 5.0  # GetRateLimitPolicy of the default: keep it in memory briefly
ORG_ENTRY = "org_id"
KEY_ENTRY = "key_id"

# KEYS: the policies of the request's organizations, the default policy, then the window
# counters. ARGV: hits, counter ttl (ms), configured default org rpm and key rpm (when no default
# policy is published), the number of policy keys, then per counter its policy's index (0: the
# default policy) and its kind ("o": organization window, "k": API-key window).
# Returns {over (0/1), limit_1, count_1, ..., limit_n, count_n}: counts after the increment
# when allowed, the untouched counts when over.
_CHECK_AND_INCREMENT = """
local hits = tonumber(ARGV[1])
local npol = tonumber(ARGV[5])
local function parse(stored)
  if not stored then return nil, nil end
  local o, k = string.match(stored, '^(%d+),(%d+)')
  return tonumber(o), tonumber(k)
end
local dorg, dkey = parse(redis.call('GET', KEYS[npol + 1]))
dorg, dkey = dorg or tonumber(ARGV[3]), dkey or tonumber(ARGV[4])
local org_limit, key_limit = {[0] = dorg}, {[0] = dkey}
for i = 1, npol do
  local o, k = parse(redis.call('GET', KEYS[i]))
  org_limit[i], key_limit[i] = o or dorg, k or dkey
end
local first = npol + 2
local limits, counts, over = {}, {}, 0
for c = first, #KEYS do
  local at = 6 + 2 * (c - first)
  local policy = tonumber(ARGV[at])
  local limit = org_limit[policy]
  if ARGV[at + 1] == 'k' then limit = key_limit[policy] end
  local current = tonumber(redis.call('GET', KEYS[c]) or '0')
  limits[c], counts[c] = limit, current
  if current + hits > limit then over = 1 end
end
if over == 0 then
  for c = first, #KEYS do
    counts[c] = redis.call('INCRBY', KEYS[c], hits)
    if counts[c] == hits then redis.call('PEXPIRE', KEYS[c], ARGV[2]) end
  end
end
local out = {over}
for c = first, #KEYS do
  table.insert(out, limits[c])
  table.insert(out, counts[c])
end
return out
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

    def limiting(self) -> Status | None:
        """The window that refused the request (when over), else the one with the least left."""
        counted = [s for s in self.statuses if s.limit]
        if not counted:
            return None
        refused = [s for s in counted if s.over]
        return (refused or sorted(counted, key=lambda s: s.remaining))[0]

    @property
    def reset_seconds(self) -> int:
        """Whole seconds until the window resets, at least 1 (what retry-after needs)."""
        return max(1, math.ceil(self.seconds_until_reset))

    def headers(self) -> tuple[tuple[str, str], ...]:
        """x-ratelimit-* (IETF draft 03, as Envoy's ratelimit filter writes them) for the window
        closest to its limit: sent on every counted gateway reply."""
        status = self.limiting()
        if status is None:
            return ()
        return (("x-ratelimit-limit", f"{status.limit}, {status.limit};w=60"),
                ("x-ratelimit-remaining", str(status.remaining)),
                ("x-ratelimit-reset", str(self.reset_seconds)))


def classify(descriptors: Sequence[Sequence[tuple[str, str]]]) -> list[Check]:
    """Map descriptors (lists of (key, value) entries) to windows."""
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


def gateway_descriptors(org: str, key_id: str | None) -> list[list[tuple[str, str]]]:
    """The descriptors of one gateway request: its organization's window, plus its API key's
    window for API-key callers (JWT users are counted per organization)."""
    descriptors = [[(ORG_ENTRY, org)]]
    if key_id:
        descriptors.append([(ORG_ENTRY, org), (KEY_ENTRY, key_id)])
    return descriptors


def policy_value(policy: Policy) -> bytes:
    return f"{policy.org_rpm},{policy.key_rpm},{policy.plan}".encode()


class Counters:
    """The windows of a request, checked and counted by one script in one Redis round trip.
    Needs only Usage's Redis (its key prefix) and the configured default limits."""

    def __init__(self, settings: Settings, cache: ServiceCache) -> None:
        self.settings = settings
        self.cache = cache
        self._script = cache.redis.register_script(_CHECK_AND_INCREMENT)

    def policy_key(self, org: str) -> str:
        return self.cache.key("rlpolicy", org)

    async def check(
        self, descriptors: Sequence[Sequence[tuple[str, str]]], hits: int, now: float | None = None
    ) -> Decision:
        now = time.time() if now is None else now
        window = int(now // WINDOW_SECONDS)
        reset = (window + 1) * WINDOW_SECONDS - now
        checks = classify(descriptors)
        policy_index: dict[str, int] = {"": 0}
        counters: list[str] = []
        args: list[Any] = []
        limited: list[int] = []  # index into checks of each counter
        for index, check in enumerate(checks):
            if not check.kind:
                continue
            policy = policy_index.setdefault(check.org, len(policy_index))
            if check.kind == "org":
                counters.append(self.cache.key("rl", "org", check.org, str(window)))
            else:
                counters.append(self.cache.key("rl", "key", check.org, check.key_id, str(window)))
            args += [policy, "o" if check.kind == "org" else "k"]
            limited.append(index)
        statuses = [Status(False, 0, 0, c.kind) for c in checks]
        if not counters:
            return Decision(False, statuses, reset)
        orgs = [org for org in policy_index if org]
        keys = [*(self.policy_key(o) for o in orgs), self.policy_key(DEFAULT_POLICY_ORG),
                *counters]
        result = await self._script(keys=keys, args=[
            hits, int(reset * 1000) + 1000, self.settings.ratelimit_default_org_rpm,
            self.settings.ratelimit_default_key_rpm, len(orgs), *args])
        over = bool(result[0])
        for position, index in enumerate(limited):
            limit, count = int(result[1 + 2 * position]), int(result[2 + 2 * position])
            # When the request is refused the counts are pre-request: say which window refused.
            this_over = over and count + hits > limit
            statuses[index] = Status(this_over, limit, max(limit - count, 0), checks[index].kind)
        usage_metrics.record_ratelimit(over)
        return Decision(over, statuses, reset)


# A slow Redis must not hold gateway requests (Envoy's ratelimit filter waited 20-250 ms too).
GATEWAY_COUNTERS_TIMEOUT = 0.25
GATEWAY_COUNTERS_RETRY_AFTER = 1.0  # seconds the counters are skipped after they failed
# An over-limit caller's reads are refused up front this long (not run alongside the count); short,
# so a raised limit applies within it.
REFUSAL_MEMORY_SECONDS = 1.0


class GatewayLimiter:
    """Counts an admitted gateway request in its organization's window (and its API key's), as
    the gateway's callers are counted wherever they are admitted: Auth's Check (API keys, the
    edge) and services/common/gateway_jwt.py (JWT callers). If the counters cannot be reached
    the request is served (fail open, like Envoy's ratelimit filter's default) unless
    `fail_closed` (AIMESH_GATEWAY_RATELIMIT_FAIL_CLOSED): then UNAVAILABLE."""

    def __init__(self, counters: Counters, fail_closed: bool = False) -> None:
        self.counters = counters
        self.fail_closed = fail_closed
        self._down_until = 0.0
        self._refused: dict[tuple[str, str | None], tuple[float, Decision]] = {}

    @classmethod
    def for_settings(cls, settings: Settings) -> GatewayLimiter:
        cache = ServiceCache(settings.redis_url, "usage", socket_timeout=GATEWAY_COUNTERS_TIMEOUT)
        return cls(Counters(settings, cache), settings.gateway_ratelimit_fail_closed)

    async def close(self) -> None:
        await self.counters.cache.close()

    async def count(self, org: str, key_id: str | None) -> Decision | None:
        """This request counted in its windows; None when the counters are unreachable and the
        gateway fails open."""
        if time.monotonic() >= self._down_until:
            try:
                return await self.counters.check(gateway_descriptors(org, key_id), 1)
            except (RedisError, OSError) as exc:
                log.warning("rate-limit counters unavailable: %r", exc)
                self._down_until = time.monotonic() + GATEWAY_COUNTERS_RETRY_AFTER
        if self.fail_closed:
            raise unavailable("rate-limit counters unavailable", reason="RATE_LIMIT_UNAVAILABLE")
        return None

    async def admit(self, org: str, key_id: str | None) -> Decision | None:
        """count(), refusing the request RESOURCE_EXHAUSTED (with RetryInfo) when over."""
        decision = await self.count(org, key_id)
        if decision is not None and decision.over:
            if len(self._refused) > 10_000:
                self._refused.clear()
            self._refused[(org, key_id)] = (time.monotonic() + REFUSAL_MEMORY_SECONDS, decision)
            raise over_limit(decision)
        return decision

    def refused_recently(self, org: str, key_id: str | None) -> ServiceError | None:
        """The refusal admit() gave this caller within REFUSAL_MEMORY_SECONDS, if any: callers
        that run a read alongside the count refuse with it up front instead of reading."""
        held = self._refused.get((org, key_id))
        if held is None or held[0] <= time.monotonic():
            return None
        return over_limit(held[1])


def over_limit(decision: Decision) -> ServiceError:
    return resource_exhausted("rate limit exceeded for this API key or organization",
                              reason="RATE_LIMITED", retry_after_seconds=decision.reset_seconds,
                              headers=decision.headers())


class RateLimiter:
    """Usage's side: the counters plus the policies' source of truth (PostgreSQL), published
    to Redis for every caller of Counters."""

    def __init__(self, settings: Settings, store: Store, cache: ServiceCache) -> None:
        self.settings = settings
        self.store = store
        self.cache = cache
        self.counters = Counters(settings, cache)
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

    async def _stored(self, org: str) -> Policy | None:
        """The organization's own policy (None: it has none), from PostgreSQL."""
        row = await self.store.get_rate_limit_policy(org)
        return Policy(row["org_rpm"], row["key_rpm"], row["plan"]) if row else None

    async def policy_changed(self, org: str, policy: Policy) -> None:
        """Write-through after the policy row committed: the next check sees it."""
        await self.cache.redis.set(self.counters.policy_key(org), policy_value(policy))
        if org == DEFAULT_POLICY_ORG:
            self._default = None

    async def publish_missing(self) -> int:
        """Restore every policy missing from Redis (never overwriting: a SetRateLimitPolicy
        racing with this pass wrote the newer value). Returns how many were restored."""
        rows = await self.store.list_rate_limit_policies()
        if not rows:
            return 0
        async with self.cache.redis.pipeline(transaction=False) as pipe:
            for row in rows:
                value = policy_value(Policy(row["org_rpm"], row["key_rpm"], row["plan"]))
                pipe.set(self.counters.policy_key(row["org"]), value, nx=True)
            written = await pipe.execute()
        return sum(1 for w in written if w)

    async def keep_published(self, interval: float = POLICY_PUBLISH_SECONDS) -> None:
        """Background task: publish at start, then restore what a Redis flush lost."""
        while True:
            try:
                restored = await self.publish_missing()
                if restored:
                    log.info("rate-limit policies published", extra={"restored": restored})
            except (RedisError, OSError) as exc:
                log.warning("could not publish rate-limit policies: %r", exc)
            except Exception:  # the database may be restarting: try again next round
                log.exception("could not publish rate-limit policies")
            await asyncio.sleep(interval)

    async def check(
        self, descriptors: Sequence[Sequence[tuple[str, str]]], hits: int, now: float | None = None
    ) -> Decision:
        return await self.counters.check(descriptors, hits, now)


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
