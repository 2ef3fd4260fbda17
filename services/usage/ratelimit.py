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
hits or none does (a rejected request consumes no quota), so never more than `limit` hits are
counted per window however many race.

Two kinds of callers run the same `Counters`:
- Usage's RateLimitService (ShouldRateLimit, for an Envoy ratelimit filter): exact per request,
  one round trip each (`Counters.check`): exactly `limit` requests pass per window.
- The gateway's admissions (`GatewayLimiter`): Auth's ext_authz Check, and every service's
  in-process admission of JWT and API-key callers (services/common/gateway_jwt.py). They count
  from leases: blocks of a caller's windows taken by the same script (`Counters.lease`: as many
  as every window still has, so the per-window bound holds across processes and replicas),
  spent in process memory, the unspent rest returned (`Counters.give_back`) within
  LEASE_SECONDS. A caller's first request in a window leases 1; a hot caller's leases grow with
  its rate, so it pays a Redis round trip every few hundred requests, not per request. With one
  process counting a caller exactly `limit` pass; with several, quota one of them leased and
  has not spent is unavailable to the others for at most LEASE_SECONDS (GatewayLimiter says
  what that means for refusals, x-ratelimit-* headers, policy changes and SIGKILL).
Either way the counters and policies are Usage's Redis keys (prefix `usage:`), read and written
only by this module; PostgreSQL stays Usage's alone.

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
from collections.abc import Callable, Sequence
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
# counters. ARGV: hits wanted, counter ttl (ms), configured default org rpm and key rpm (when no
# default policy is published), the number of policy keys, the fewest hits worth granting (all
# of them for an exact check; 1 for a lease), then per counter its policy's index (0: the default
# policy) and its kind ("o": organization window, "k": API-key window).
# Grants min(wanted, what every window has left), or 0 when that is below the fewest: every window
# takes the grant or none does. Returns {grant, limit_1, count_1, ..., limit_n, count_n}: counts
# after the increment when granted, the untouched counts when not.
_TAKE = """
local grant = tonumber(ARGV[1])
local least = tonumber(ARGV[6])
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
local limits, counts = {}, {}
for c = first, #KEYS do
  local at = 7 + 2 * (c - first)
  local policy = tonumber(ARGV[at])
  local limit = org_limit[policy]
  if ARGV[at + 1] == 'k' then limit = key_limit[policy] end
  local current = tonumber(redis.call('GET', KEYS[c]) or '0')
  limits[c], counts[c] = limit, current
  if limit - current < grant then grant = limit - current end
end
if grant < least then grant = 0 end
if grant > 0 then
  for c = first, #KEYS do
    counts[c] = redis.call('INCRBY', KEYS[c], grant)
    if counts[c] == grant then redis.call('PEXPIRE', KEYS[c], ARGV[2]) end
  end
end
local out = {grant}
for c = first, #KEYS do
  table.insert(out, limits[c])
  table.insert(out, counts[c])
end
return out
"""

# KEYS: the window counters a lease was taken from; ARGV[1]: its unspent tokens. Each counter
# takes them back only while it exists (its name holds the window: an ended window's counter has
# expired) and never goes below zero.
_GIVE_BACK = """
local back = tonumber(ARGV[1])
for i = 1, #KEYS do
  local current = tonumber(redis.call('GET', KEYS[i]) or '0')
  if current > 0 then redis.call('DECRBY', KEYS[i], math.min(back, current)) end
end
return 1
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
        self._take = cache.redis.register_script(_TAKE)
        self._give_back = cache.redis.register_script(_GIVE_BACK)

    def policy_key(self, org: str) -> str:
        return self.cache.key("rlpolicy", org)

    async def check(
        self, descriptors: Sequence[Sequence[tuple[str, str]]], hits: int, now: float | None = None
    ) -> Decision:
        """Count `hits` in every window of the request, all or nothing (exact per request)."""
        _, decision, _ = await self.take(descriptors, hits, hits, now)
        usage_metrics.record_ratelimit(decision.over)
        return decision

    async def lease(
        self, descriptors: Sequence[Sequence[tuple[str, str]]], wanted: int,
        now: float | None = None,
    ) -> tuple[int, Decision, list[str]]:
        """Take up to `wanted` hits of every window of the request at once (a lease: as many as
        every window still has, 0 when one is full). Returns the grant, the decision (remaining
        after the grant) and the window counters, which give_back() takes."""
        return await self.take(descriptors, wanted, 1, now)

    async def give_back(self, counters: Sequence[str], unspent: int) -> None:
        """Return a lease's unspent hits to its windows (while they last, never below zero)."""
        if counters and unspent > 0:
            await self._give_back(keys=list(counters), args=[unspent])

    async def take(
        self, descriptors: Sequence[Sequence[tuple[str, str]]], wanted: int, least: int,
        now: float | None = None,
    ) -> tuple[int, Decision, list[str]]:
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
            return wanted, Decision(False, statuses, reset), counters
        orgs = [org for org in policy_index if org]
        keys = [*(self.policy_key(o) for o in orgs), self.policy_key(DEFAULT_POLICY_ORG),
                *counters]
        result = await self._take(keys=keys, args=[
            wanted, int(reset * 1000) + 1000, self.settings.ratelimit_default_org_rpm,
            self.settings.ratelimit_default_key_rpm, len(orgs), least, *args])
        grant = int(result[0])
        over = grant == 0
        for position, index in enumerate(limited):
            limit, count = int(result[1 + 2 * position]), int(result[2 + 2 * position])
            # When nothing is granted the counts are untouched: say which window refused.
            this_over = over and count + least > limit
            statuses[index] = Status(this_over, limit, max(limit - count, 0), checks[index].kind)
        return grant, Decision(over, statuses, reset), counters


# A slow Redis must not hold gateway requests (Envoy's ratelimit filter waited 20-250 ms too).
GATEWAY_COUNTERS_TIMEOUT = 0.25
GATEWAY_COUNTERS_RETRY_AFTER = 1.0  # seconds the counters are skipped after they failed
# An over-limit caller's reads are refused up front this long (not run alongside the count); short,
# so a raised limit applies within it.
REFUSAL_MEMORY_SECONDS = 1.0
# Leases (GatewayLimiter): unspent hits go back to their windows this long after the last lease.
LEASE_SECONDS = 1.0
# A hot caller's lease covers about this much of its observed rate...
LEASE_HORIZON_SECONDS = 0.1
# ...measured over at least this long (a burst of requests within it is a rate, not infinite)...
RATE_MIN_SECONDS = 0.01
# ...and at most this share of what its windows have left (near the limit: 1), twice the last
# lease (growth is gradual) and MAX_LEASE.
LEASE_SHARE = 0.1
MAX_LEASE = 1000
MAX_LEASES = 100_000  # callers held; beyond it, the idle ones are forgotten


class _Lease:
    """One caller's hits leased from its windows (organization, and API key) in one window."""

    __slots__ = ("org", "key_id", "descriptors", "window", "tokens", "counters", "limits",
                 "left", "reset_at", "size", "arrivals", "seen_arrivals", "seen_at", "waiting",
                 "refill", "expiry")

    def __init__(self, org: str, key_id: str | None) -> None:
        self.org, self.key_id = org, key_id
        self.descriptors = gateway_descriptors(org, key_id)
        self.window = -1
        self.tokens = 0  # leased, not yet spent
        self.counters: list[str] = []  # the window counters leased from (give_back)
        self.limits: list[tuple[int, int, str]] = []  # per window: limit, count as of the lease
        self.left = 0  # the least any window had left after the last lease
        self.reset_at = 0.0  # epoch seconds the window ends
        self.size = 0  # the last lease asked for (0: none yet this window)
        self.arrivals = 0  # requests seen (all windows): the rate
        self.seen_arrivals = 0  # arrivals when the last lease was asked for...
        self.seen_at = 0.0  # ...and when (monotonic)
        self.waiting = 0  # requests awaiting a lease now
        self.refill: asyncio.Future[Decision | None] | None = None  # the one lease in flight
        self.expiry: asyncio.TimerHandle | None = None

    def start_window(self, window: int) -> None:
        self.window, self.tokens, self.size, self.counters = window, 0, 0, []

    def decision(self, now: float) -> Decision:
        """An admitted request's decision: remaining = limit - the window's count as of the
        lease + the hits this process has not spent yet (exact with one process counting)."""
        return Decision(False, [Status(False, limit, max(limit - count + self.tokens, 0), kind)
                                for limit, count, kind in self.limits], self.reset_at - now)


class GatewayLimiter:
    """Counts an admitted gateway request in its organization's window (and its API key's), as
    the gateway's callers are counted wherever they are admitted: Auth's Check (API keys, the
    edge) and services/common/gateway_jwt.py (JWT and API-key callers). If the counters cannot
    be reached the request is served (fail open, like Envoy's ratelimit filter's default) unless
    `fail_closed` (AIMESH_GATEWAY_RATELIMIT_FAIL_CLOSED): then UNAVAILABLE.

    Leases: the process takes blocks of each caller's windows at once (Counters.lease, the same
    all-or-nothing script: min(wanted, what every window has left), 0 = over) and spends them in
    memory, so a hot caller's request normally costs no Redis round trip:
    - never more than `limit` requests per window across all processes and replicas (leases
      come out of the Redis counters); with one process counting a caller exactly `limit` pass;
    - a caller's first request in a window leases 1 (one round trip, as a plain count); later
      leases follow its observed rate (about LEASE_HORIZON_SECONDS of it, at most twice the
      last lease, LEASE_SHARE of what its windows have left, MAX_LEASE), so a caller slower than
      ~1 request per LEASE_HORIZON_SECONDS keeps leasing 1 per request;
    - a hot caller's next lease is taken in the background when half of the last is spent (one
      lease in flight per caller); requests that find none left await that one lease;
    - unspent hits go back to their windows (Counters.give_back) LEASE_SECONDS after the last
      lease and on close(); until then another process cannot use them (it refuses what this
      one could still admit: under-admission, never over). A process killed (SIGKILL) loses its
      unspent hits for the rest of that window, the same way. A refusal first returns what this
      process's other callers of that organization hold, then asks once more;
    - a lowered policy applies at each caller's next lease (within LEASE_SECONDS or its next
      block), hits already leased are still spent;
    - x-ratelimit-remaining = limit - the window's count as of the lease + this process's
      unspent hits: exact with one process; with several it also counts as used what the others
      leased and have not spent yet."""

    def __init__(self, counters: Counters, fail_closed: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.counters = counters
        self.fail_closed = fail_closed
        self.clock = clock  # epoch seconds: which window a request counts in
        self._down_until = 0.0
        self._refused: dict[tuple[str, str | None], tuple[float, Decision]] = {}
        self._leases: dict[tuple[str, str | None], _Lease] = {}
        self._by_org: dict[str, list[_Lease]] = {}
        self._returns: set[asyncio.Task[None]] = set()
        self.lease_calls = 0  # this limiter's lease round trips (the metric counts all)
        self._closing = False

    @classmethod
    def for_settings(cls, settings: Settings) -> GatewayLimiter:
        cache = ServiceCache(settings.redis_url, "usage", socket_timeout=GATEWAY_COUNTERS_TIMEOUT)
        return cls(Counters(settings, cache), settings.gateway_ratelimit_fail_closed)

    async def close(self) -> None:
        """Return every unspent hit to its window (leases in flight landed first), then close
        the connection."""
        self._closing = True
        for lease in self._leases.values():
            if lease.expiry is not None:
                lease.expiry.cancel()
        await asyncio.gather(*(lease.refill for lease in self._leases.values() if lease.refill),
                             return_exceptions=True)
        await asyncio.gather(*self._returns, *(self._give_back(lease)
                                               for lease in self._leases.values()))
        await self.counters.cache.close()

    def spend(self, org: str, key_id: str | None, now: float | None = None) -> Decision | None:
        """This request counted from this process's lease, without waiting (None: no hit left
        here; count() leases more)."""
        lease = self._leases.get((org, key_id))
        if lease is None or lease.tokens <= 0:
            return None
        now = self.clock() if now is None else now
        if lease.window != int(now // WINDOW_SECONDS):
            return None
        lease.arrivals += 1
        decision = self._spent(lease, now)
        if (lease.size > 1 and lease.tokens <= lease.size // 2 and lease.refill is None
                and time.monotonic() >= self._down_until):
            self._refill(lease, now)  # a hot caller's next lease, taken before it is needed
        return decision

    async def count(self, org: str, key_id: str | None, now: float | None = None
                    ) -> Decision | None:
        """This request counted in its windows; None when the counters are unreachable and the
        gateway fails open."""
        now = self.clock() if now is None else now
        decision = self.spend(org, key_id, now)
        if decision is not None:
            return decision
        lease = self._leases.get((org, key_id)) or self._new_lease(org, key_id)
        lease.arrivals += 1
        window = int(now // WINDOW_SECONDS)
        if lease.window < window:
            lease.start_window(window)
        lease.waiting += 1
        retried = False
        try:
            while True:
                if lease.window != window:  # a later request moved the lease to a new window
                    now = self.clock()
                    window = int(now // WINDOW_SECONDS)
                    if lease.window < window:
                        lease.start_window(window)
                if lease.tokens > 0 and lease.window == window:
                    return self._spent(lease, now)
                if time.monotonic() < self._down_until:
                    return self._unreachable()
                refill = lease.refill or self._refill(lease, now)
                try:
                    refused = await asyncio.shield(refill)
                except (RedisError, OSError):
                    return self._unreachable()
                if refused is None or lease.tokens > 0:
                    continue
                if not retried and await self._return_siblings(lease, refused):
                    retried = True
                    continue
                usage_metrics.record_ratelimit(True)
                return refused
        finally:
            lease.waiting -= 1

    @staticmethod
    def _spent(lease: _Lease, now: float) -> Decision:
        """One of the lease's hits spent on the current request: its decision."""
        lease.tokens -= 1
        usage_metrics.record_ratelimit(False)
        return lease.decision(now)

    def held(self, org: str, key_id: str | None) -> int:
        """Hits this process leased for the caller and has not spent yet."""
        lease = self._leases.get((org, key_id))
        return lease.tokens if lease is not None else 0

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

    def _unreachable(self) -> Decision | None:
        """Fail open (None: not counted) unless configured closed (UNAVAILABLE)."""
        if self.fail_closed:
            raise unavailable("rate-limit counters unavailable", reason="RATE_LIMIT_UNAVAILABLE")
        return None

    def _new_lease(self, org: str, key_id: str | None) -> _Lease:
        if len(self._leases) >= MAX_LEASES:
            self._forget_idle()
        lease = self._leases[(org, key_id)] = _Lease(org, key_id)
        self._by_org.setdefault(org, []).append(lease)
        return lease

    def _forget_idle(self) -> None:
        idle = [k for k, lease in self._leases.items()
                if not lease.tokens and lease.refill is None and not lease.waiting]
        for key in idle:
            lease = self._leases.pop(key)
            siblings = self._by_org.get(lease.org, [])
            if lease in siblings:
                siblings.remove(lease)
            if not siblings:
                self._by_org.pop(lease.org, None)

    def _lease_size(self, lease: _Lease) -> int:
        """The first lease of a window is 1; then the requests waiting plus about
        LEASE_HORIZON_SECONDS of the caller's rate since the last lease (bounded)."""
        at = time.monotonic()
        arrived = lease.arrivals - lease.seen_arrivals
        rate = arrived / max(at - lease.seen_at, RATE_MIN_SECONDS)
        lease.seen_at, lease.seen_arrivals = at, lease.arrivals
        if not lease.size:
            return 1
        ahead = min(int(rate * LEASE_HORIZON_SECONDS), 2 * lease.size,
                    int(lease.left * LEASE_SHARE))
        return max(1, min(lease.waiting + max(ahead, 0), MAX_LEASE))

    def _refill(self, lease: _Lease, now: float) -> asyncio.Future[Decision | None]:
        size = self._lease_size(lease)
        lease.size = size
        refill = lease.refill = asyncio.ensure_future(self._take(lease, size, now))
        # Retrieved here too, so a failed background lease nobody awaited logs no stray error.
        refill.add_done_callback(lambda done: done.cancelled() or done.exception())
        return refill

    async def _take(self, lease: _Lease, size: int, now: float) -> Decision | None:
        """Lease `size` hits (the one lease in flight of this caller); the refusal when none
        was granted, else None. Raises (after marking the counters down) when Redis fails."""
        window = int(now // WINDOW_SECONDS)
        try:
            self.lease_calls += 1
            usage_metrics.record_lease()
            grant, decision, counters = await self.counters.lease(lease.descriptors, size, now)
        except (RedisError, OSError) as exc:
            if time.monotonic() >= self._down_until:
                log.warning("rate-limit counters unavailable: %r", exc)
            self._down_until = time.monotonic() + GATEWAY_COUNTERS_RETRY_AFTER
            raise
        finally:
            lease.refill = None
        if lease.window != window:  # the caller's window moved on meanwhile: that one is over
            return None
        lease.limits = [(s.limit, s.limit - s.remaining, s.kind) for s in decision.statuses
                        if s.limit]
        lease.left = min((s.remaining for s in decision.statuses if s.limit), default=0)
        lease.reset_at = now + decision.seconds_until_reset
        lease.counters = counters
        if not grant:
            return decision
        lease.tokens += grant
        if lease.expiry is not None:
            lease.expiry.cancel()
        if not self._closing:  # else close() returns it
            lease.expiry = asyncio.get_running_loop().call_later(LEASE_SECONDS, self._expired,
                                                                 lease)
        return None

    def _expired(self, lease: _Lease) -> None:
        """LEASE_SECONDS after the last lease: return what is unspent, in the background."""
        lease.expiry = None
        if lease.tokens > 0:
            task = asyncio.ensure_future(self._give_back(lease))
            self._returns.add(task)
            task.add_done_callback(self._returns.discard)

    async def _give_back(self, lease: _Lease) -> None:
        unspent, lease.tokens = lease.tokens, 0
        if unspent <= 0 or lease.window != int(self.clock() // WINDOW_SECONDS):
            return  # nothing held, or its window is over (and its counters with it)
        try:
            await self.counters.give_back(lease.counters, unspent)
        except (RedisError, OSError) as exc:  # those hits stay counted: under-admission only
            log.warning("could not return %d leased rate-limit hits: %r", unspent, exc)

    async def _return_siblings(self, lease: _Lease, refused: Decision) -> bool:
        """A request refused by its organization's window: return the hits this process's
        other callers of that organization hold unspent (so one process stays exact across
        them). True when some were returned (ask again)."""
        if not any(s.over and s.kind == "org" for s in refused.statuses):
            return False
        holders = [other for other in self._by_org.get(lease.org, ())
                   if other is not lease and other.tokens > 0 and other.window == lease.window]
        if not holders:
            return False
        await asyncio.gather(*(self._give_back(other) for other in holders))
        return True


def gateway_limiter(runtime: Any) -> GatewayLimiter:
    """The process's one GatewayLimiter (a services.common.server.Runtime's shared object):
    Auth's Check and the server's interceptor spend the same leases, so one process stays exact
    and holds one set of unspent hits. Closed (its hits returned) at shutdown."""
    limiter: GatewayLimiter | None = runtime.shared.get("gateway-limiter")
    if limiter is None:
        limiter = GatewayLimiter.for_settings(runtime.settings)
        runtime.shared["gateway-limiter"] = limiter
        runtime.on_shutdown(limiter.close)
    return limiter


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
