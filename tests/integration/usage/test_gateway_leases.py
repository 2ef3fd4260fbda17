"""The gateway's rate limiter counting from leases (services/usage/ratelimit.py GatewayLimiter)
against the real Redis: exact with one process under racing, never over the limit with several
(and the unspent quota usable by the others once a lease ends), exact x-ratelimit-remaining,
window rollover, leases that grow for a hot caller and stay 1 for a cold one, the quota a
SIGKILLed process held lost (under-admission, never over), fail open / closed unchanged.
Policies are written to Redis as Usage publishes them (the Usage tests cover publishing)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from services.common.cache import ServiceCache
from services.common.config import Settings
from services.common.errors import ServiceError
from services.usage.ratelimit import (
    LEASE_SECONDS,
    WINDOW_SECONDS,
    Counters,
    Decision,
    GatewayLimiter,
    Policy,
    policy_value,
)
from tests.support.mesh import TestMesh, free_port

KEY = "key_1"


async def fresh_window(margin: float = 10.0) -> None:
    """Windows are UTC minutes: do not let one test straddle two of them."""
    if time.time() % WINDOW_SECONDS > WINDOW_SECONDS - margin:
        await asyncio.sleep(WINDOW_SECONDS + 0.2 - time.time() % WINDOW_SECONDS)


class Limiters:
    """GatewayLimiters on the test's Redis (each one stands for a process), closed at the end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.made: list[GatewayLimiter] = []
        self.admin = ServiceCache(settings.redis_url, "usage")

    def new(self, fail_closed: bool = False, redis_url: str | None = None,
            clock: Callable[[], float] = time.time) -> GatewayLimiter:
        cache = ServiceCache(redis_url or self.settings.redis_url, "usage", socket_timeout=0.25)
        limiter = GatewayLimiter(Counters(self.settings, cache), fail_closed, clock)
        self.made.append(limiter)
        return limiter

    async def policy(self, org_rpm: int, key_rpm: int) -> str:
        """A new organization with this policy, as Usage publishes it."""
        org = f"o_{uuid.uuid4().hex[:12]}"
        await self.admin.redis.set(self.admin.key("rlpolicy", org),
                                   policy_value(Policy(org_rpm, key_rpm)))
        return org

    async def counted(self, org: str, key_id: str | None = None, now: float | None = None
                      ) -> int:
        """The window's counter in Redis (what every process's leases took)."""
        window = str(int((time.time() if now is None else now) // WINDOW_SECONDS))
        parts = ("rl", "key", org, key_id, window) if key_id else ("rl", "org", org, window)
        return int(await self.admin.redis.get(self.admin.key(*parts)) or 0)


@pytest.fixture
async def limiters(mesh: TestMesh) -> AsyncIterator[Limiters]:
    made = Limiters(mesh.settings)
    try:
        yield made
    finally:
        for limiter in made.made:
            await limiter.close()
        await made.admin.close()


async def _admitted(limiter: GatewayLimiter, org: str, key_id: str | None, n: int,
                    concurrent: bool = False) -> tuple[list[Decision], list[ServiceError]]:
    """n requests through admit(): the decisions of the admitted, the refusals."""
    async def one() -> Decision | ServiceError:
        try:
            decision = await limiter.admit(org, key_id)
        except ServiceError as exc:
            return exc
        assert decision is not None
        return decision

    if concurrent:
        outcomes = await asyncio.gather(*(one() for _ in range(n)))
    else:
        outcomes = [await one() for _ in range(n)]
    return ([o for o in outcomes if isinstance(o, Decision)],
            [o for o in outcomes if isinstance(o, ServiceError)])


async def _hot(limiter: GatewayLimiter, org: str, key_id: str | None, n: int
               ) -> tuple[int, int]:
    """n requests in a row (a hot caller), then more until the limiter holds leased hits it has
    not spent, and any lease it took ahead of need (in the background) has landed: how many
    were admitted, and how many hits the limiter then holds."""
    admitted = len((await _admitted(limiter, org, key_id, n))[0])
    for _ in range(n):
        if limiter.held(org, key_id):
            break
        admitted += len((await _admitted(limiter, org, key_id, 1))[0])
    await asyncio.sleep(0.1)
    return admitted, limiter.held(org, key_id)


def _retry_seconds(refusal: ServiceError) -> float:
    """The RetryInfo of the refusal's google.rpc.Status, as the caller reads it."""
    delay = ServiceError.from_status(refusal.to_status()).retry_after_seconds
    assert delay is not None, "no RetryInfo in the refusal"
    return delay


async def test_one_limiter_admits_exactly_the_limit_under_racing(limiters: Limiters) -> None:
    await fresh_window()
    limit, extra = 30, 45
    org = await limiters.policy(org_rpm=1000, key_rpm=limit)
    limiter = limiters.new()
    admitted, refused = await _admitted(limiter, org, KEY, limit + extra, concurrent=True)
    assert len(admitted) == limit and len(refused) == extra
    for refusal in refused:
        assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refusal.reason == "RATE_LIMITED"
        assert 1 <= _retry_seconds(refusal) <= WINDOW_SECONDS
        assert dict(refusal.headers)["x-ratelimit-remaining"] == "0"
    # Refused requests took nothing: the key's window holds the limit, the org's what passed.
    assert await limiters.counted(org, KEY) == limit
    assert await limiters.counted(org) == limit
    # The racing requests shared leases: fewer round trips than requests.
    assert limiter.lease_calls < limit + extra


async def test_remaining_header_is_exact_for_one_limiter(limiters: Limiters) -> None:
    await fresh_window()
    limit = 300
    org = await limiters.policy(org_rpm=100_000, key_rpm=limit)
    limiter = limiters.new()
    admitted, refused = await _admitted(limiter, org, KEY, limit + 2)
    remaining = [int(dict(d.headers())["x-ratelimit-remaining"]) for d in admitted]
    assert remaining == list(range(limit - 1, -1, -1))
    assert {dict(d.headers())["x-ratelimit-limit"] for d in admitted} == {f"{limit}, {limit};w=60"}
    assert len(refused) == 2
    # Counted from leases that grew: far fewer Redis round trips than requests.
    assert limiter.lease_calls < limit / 3, limiter.lease_calls


async def test_lease_grows_for_a_hot_caller_and_stays_one_for_a_cold_one(
    limiters: Limiters,
) -> None:
    await fresh_window()
    org = await limiters.policy(org_rpm=10_000_000, key_rpm=10_000_000)
    hot = limiters.new()
    admitted, _ = await _admitted(hot, org, KEY, 2000)
    assert len(admitted) == 2000
    assert hot.lease_calls <= 40, hot.lease_calls  # e.g. 1, 2, 4, ... then rate-sized blocks
    cold = limiters.new()
    cold_org = await limiters.policy(org_rpm=10_000_000, key_rpm=10_000_000)
    for _ in range(5):  # ~7 requests/s: below one per lease horizon
        await _admitted(cold, cold_org, KEY, 1)
        assert cold.held(cold_org, KEY) == 0  # nothing leased ahead of need
        await asyncio.sleep(0.15)
    assert cold.lease_calls == 5
    assert await limiters.counted(cold_org, KEY) == 5


async def test_two_limiters_never_exceed_the_limit_racing(limiters: Limiters) -> None:
    await fresh_window()
    limit = 200
    org = await limiters.policy(org_rpm=100_000, key_rpm=limit)
    first, second = limiters.new(), limiters.new()
    await _admitted(first, org, KEY, 20)  # the first is hot already: it leases blocks
    racing = await asyncio.gather(_admitted(first, org, KEY, 150, concurrent=True),
                                  _admitted(second, org, KEY, 150, concurrent=True))
    admitted = 20 + len(racing[0][0]) + len(racing[1][0])
    assert await limiters.counted(org, KEY) == limit  # every hit leased, none twice
    assert admitted + first.held(org, KEY) + second.held(org, KEY) == limit


async def test_unspent_quota_is_usable_by_another_limiter_after_the_lease(
    limiters: Limiters,
) -> None:
    await fresh_window(margin=15)
    limit = 200
    org = await limiters.policy(org_rpm=100_000, key_rpm=limit)
    first, second = limiters.new(), limiters.new()
    # The first (hot) admits until it holds leased hits it has not spent.
    admitted_first, stranded = await _hot(first, org, KEY, 100)
    assert admitted_first < limit
    # The second gets the rest of the window, not what the first holds: under-admission.
    admitted_second, refused = await _admitted(second, org, KEY, limit)
    assert len(admitted_second) == limit - admitted_first - stranded and refused
    assert second.held(org, KEY) == 0
    assert await limiters.counted(org, KEY) == limit
    # After the lease's lifetime the first returned them, and the second admits exactly those.
    await asyncio.sleep(LEASE_SECONDS + 0.5)
    assert first.held(org, KEY) == 0
    assert await limiters.counted(org, KEY) == limit - stranded
    later, refused = await _admitted(second, org, KEY, stranded + 5)
    assert len(later) == stranded and len(refused) == 5
    assert admitted_first + len(admitted_second) + len(later) == limit


async def test_a_lowered_policy_applies_at_the_next_lease(limiters: Limiters) -> None:
    await fresh_window()
    org = await limiters.policy(org_rpm=100_000, key_rpm=10_000)
    limiter = limiters.new()
    admitted, held = await _hot(limiter, org, KEY, 300)
    assert admitted >= 300 and held > 0
    # Billing lowers the plan below what this window has used: hits already leased are still
    # spent (bounded by the lease), the next lease is refused.
    await limiters.admin.redis.set(limiters.admin.key("rlpolicy", org),
                                   policy_value(Policy(100_000, 100)))
    later, refused = await _admitted(limiter, org, KEY, held + 10)
    assert len(later) == held and len(refused) == 10
    assert refused[0].headers and dict(refused[0].headers)["x-ratelimit-limit"].startswith("100,")


async def test_close_returns_unspent_hits(limiters: Limiters) -> None:
    await fresh_window()
    org = await limiters.policy(org_rpm=100_000, key_rpm=100_000)
    limiter = limiters.new()
    admitted, held = await _hot(limiter, org, KEY, 200)
    assert await limiters.counted(org, KEY) == admitted + held
    await limiter.close()
    limiters.made.remove(limiter)
    assert await limiters.counted(org, KEY) == admitted


async def test_one_process_stays_exact_across_its_callers_of_an_organization(
    limiters: Limiters,
) -> None:
    """An API key's lease holds hits of its organization's window too: a JWT caller of that
    organization refused by it first gets the hits the key's lease holds back."""
    await fresh_window()
    limit = 150
    org = await limiters.policy(org_rpm=limit, key_rpm=100_000)
    limiter = limiters.new()
    by_key, _ = await _hot(limiter, org, KEY, 100)
    assert by_key < limit
    by_jwt, refused = await _admitted(limiter, org, None, limit)
    assert by_key + len(by_jwt) == limit and len(refused) == by_key


async def test_window_rollover(limiters: Limiters) -> None:
    now = [time.time() // WINDOW_SECONDS * WINDOW_SECONDS - 3 * WINDOW_SECONDS + 10]
    org = await limiters.policy(org_rpm=1000, key_rpm=3)
    limiter = limiters.new(clock=lambda: now[0])
    admitted, refused = await _admitted(limiter, org, KEY, 5)
    assert len(admitted) == 3 and len(refused) == 2
    assert abs(admitted[-1].seconds_until_reset - (WINDOW_SECONDS - 10)) < 1e-6
    now[0] += WINDOW_SECONDS  # the next minute: a new window, a new first lease of 1
    calls = limiter.lease_calls
    admitted, refused = await _admitted(limiter, org, KEY, 5)
    assert len(admitted) == 3 and len(refused) == 2
    assert limiter.lease_calls > calls
    assert [dict(d.headers())["x-ratelimit-remaining"] for d in admitted] == ["2", "1", "0"]
    assert await limiters.counted(org, KEY, now[0]) == 3
    assert await limiters.counted(org, KEY, now[0] - WINDOW_SECONDS) == 3


@pytest.mark.parametrize("fail_closed", [False, True])
async def test_unreachable_counters_fail_open_unless_configured(
    limiters: Limiters, fail_closed: bool
) -> None:
    limiter = limiters.new(fail_closed, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    if fail_closed:
        with pytest.raises(ServiceError) as refused:
            await limiter.admit("o_x", KEY)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        assert refused.value.reason == "RATE_LIMIT_UNAVAILABLE"
    else:
        assert await limiter.admit("o_x", KEY) is None
        assert await limiter.admit("o_x", None) is None  # skipped while down: no wait


_HOLDER = """
import asyncio, sys, time
from services.common.cache import ServiceCache
from services.common.config import Settings
from services.usage.ratelimit import Counters, GatewayLimiter

async def main() -> None:
    settings = Settings.from_env()
    limiter = GatewayLimiter(Counters(settings, ServiceCache(settings.redis_url, "usage")))
    org, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    admitted = 0
    for _ in range(n):
        admitted += await limiter.admit(org, key) is not None
    while not limiter.held(org, key):
        admitted += await limiter.admit(org, key) is not None
    await asyncio.sleep(0.1)
    print(admitted, limiter.held(org, key), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_a_sigkilled_process_loses_only_its_unspent_hits(
    limiters: Limiters, mesh: TestMesh
) -> None:
    await fresh_window(margin=20)
    limit = 300
    org = await limiters.policy(org_rpm=100_000, key_rpm=limit)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, org, KEY, "100"],
                              env=mesh.settings.as_env() | _base_env(), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None
        line = await asyncio.to_thread(holder.stdout.readline)
        admitted_there, held_there = (int(x) for x in line.split())
        assert held_there > 0
    finally:
        holder.kill()  # SIGKILL: no close(), the held hits are never returned
        holder.wait(timeout=10)
    await asyncio.sleep(LEASE_SECONDS + 0.5)
    here = limiters.new()
    admitted_here = len((await _admitted(here, org, KEY, limit))[0])
    assert admitted_there + admitted_here == limit - held_there
    assert await limiters.counted(org, KEY) == limit


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")} | {
        "PYTHONPATH": os.pathsep.join(sys.path)}
