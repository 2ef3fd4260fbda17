"""Usage's Envoy rate-limit service over gRPC: exact counts under concurrency, separate windows
per key and per organization, limits from the organization's policy (SetRateLimitPolicy)."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from envoy_api.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy_api.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from services.common.errors import field_violations, status_from_rpc_error
from tests.support.mesh import TestMesh

Code = rls_pb2.RateLimitResponse.Code


def request(org: str, key: str | None = None) -> rls_pb2.RateLimitRequest:
    """What the gateway sends: an org descriptor, plus an org+key descriptor for API keys."""
    Descriptor = ratelimit_pb2.RateLimitDescriptor
    descriptors = [Descriptor(entries=[Descriptor.Entry(key="org_id", value=org)])]
    if key is not None:
        descriptors.append(
            Descriptor(
                entries=[
                    Descriptor.Entry(key="org_id", value=org),
                    Descriptor.Entry(key="key_id", value=key),
                ]
            )
        )
    return rls_pb2.RateLimitRequest(domain="aimesh", descriptors=descriptors)


async def set_policy(mesh: TestMesh, org: str, org_rpm: int, key_rpm: int) -> None:
    # Rate limits follow the subscribed plan: only Billing sets them.
    stub = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="billing"))
    await stub.SetRateLimitPolicy(
        usage_pb2.SetRateLimitPolicyRequest(
            policy=usage_pb2.RateLimitPolicy(
                name=f"organizations/{org}/rateLimitPolicy",
                organization_requests_per_minute=org_rpm,
                api_key_requests_per_minute=key_rpm,
                plan="plans/test",
            )
        ),
        timeout=5,
    )


async def wait_for_fresh_window() -> None:
    """Avoid straddling a minute boundary: a test burst then lands in one window."""
    if time.time() % 60 > 50:
        await asyncio.sleep(61 - time.time() % 60)


async def test_exactly_limit_allowed_under_concurrency(mesh: TestMesh) -> None:
    mesh.ensure("usage")
    org = f"org-{uuid.uuid4().hex[:12]}"
    await set_policy(mesh, org, org_rpm=1000, key_rpm=25)
    stub = rls_pb2_grpc.RateLimitServiceStub(mesh.channel("usage"))
    await wait_for_fresh_window()
    replies = await asyncio.gather(
        *(stub.ShouldRateLimit(request(org, "key-a"), timeout=10) for _ in range(120))
    )
    allowed = [r for r in replies if r.overall_code == Code.OK]
    assert len(allowed) == 25
    over = [r for r in replies if r.overall_code == Code.OVER_LIMIT]
    assert len(over) == 95
    refused = over[0].statuses[1]
    assert refused.code == Code.OVER_LIMIT
    assert refused.current_limit.requests_per_unit == 25
    assert refused.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.Unit.MINUTE
    assert refused.limit_remaining == 0
    assert 0 < refused.duration_until_reset.ToMilliseconds() <= 60_000
    # The org window was not charged for refused requests: 25 used out of 1000.
    assert over[0].statuses[0].code == Code.OK
    assert over[0].statuses[0].limit_remaining == 1000 - 25
    remaining = sorted(r.statuses[1].limit_remaining for r in allowed)
    assert remaining == list(range(25))


async def test_windows_are_separate_per_key_and_per_org(mesh: TestMesh) -> None:
    mesh.ensure("usage")
    org_a = f"org-{uuid.uuid4().hex[:12]}"
    org_b = f"org-{uuid.uuid4().hex[:12]}"
    await set_policy(mesh, org_a, org_rpm=30, key_rpm=10)
    await set_policy(mesh, org_b, org_rpm=30, key_rpm=10)
    stub = rls_pb2_grpc.RateLimitServiceStub(mesh.channel("usage"))
    await wait_for_fresh_window()

    async def allowed(org: str, key: str | None, n: int) -> int:
        replies = await asyncio.gather(
            *(stub.ShouldRateLimit(request(org, key), timeout=10) for _ in range(n))
        )
        return sum(r.overall_code == Code.OK for r in replies)

    # Each key of org A has its own 10/min; the same key id in org B is another window.
    assert await allowed(org_a, "k1", 15) == 10
    assert await allowed(org_a, "k2", 15) == 10
    assert await allowed(org_b, "k1", 15) == 10
    # Org A has 30/min: 20 used by its keys, so 10 more key-less requests, then refused.
    assert await allowed(org_a, None, 15) == 10
    reply = await stub.ShouldRateLimit(request(org_a, "k3"), timeout=5)
    assert reply.overall_code == Code.OVER_LIMIT
    assert reply.statuses[0].code == Code.OVER_LIMIT and reply.statuses[1].code == Code.OK
    # Org B still has room.
    assert await allowed(org_b, None, 5) == 5


async def test_default_policy_and_unknown_descriptors(mesh: TestMesh) -> None:
    mesh.ensure("usage")
    org = f"org-{uuid.uuid4().hex[:12]}"
    usage = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="billing"))
    policy = await usage.GetRateLimitPolicy(
        usage_pb2.GetRateLimitPolicyRequest(name=f"organizations/{org}/rateLimitPolicy"), timeout=5
    )
    # Organizations without their own policy get the default one (Billing sets it to its
    # default plan's limits; the configured defaults until it ever has).
    default = await usage.GetRateLimitPolicy(
        usage_pb2.GetRateLimitPolicyRequest(name="organizations/-/rateLimitPolicy"), timeout=5
    )
    if not default.plan:
        assert default.organization_requests_per_minute == mesh.settings.ratelimit_default_org_rpm
        assert default.api_key_requests_per_minute == mesh.settings.ratelimit_default_key_rpm
    assert policy.organization_requests_per_minute == default.organization_requests_per_minute
    assert policy.api_key_requests_per_minute == default.api_key_requests_per_minute
    assert not policy.HasField("update_time")

    stub = rls_pb2_grpc.RateLimitServiceStub(mesh.channel("usage"))
    reply = await stub.ShouldRateLimit(request(org, "k"), timeout=5)
    assert reply.overall_code == Code.OK
    assert reply.statuses[1].current_limit.requests_per_unit == default.api_key_requests_per_minute
    Descriptor = ratelimit_pb2.RateLimitDescriptor
    odd = rls_pb2.RateLimitRequest(
        descriptors=[Descriptor(entries=[Descriptor.Entry(key="path", value="/x")])]
    )
    reply = await stub.ShouldRateLimit(odd, timeout=5)
    assert reply.overall_code == Code.OK and not reply.statuses[0].HasField("current_limit")


async def test_policy_change_applies_to_next_check(mesh: TestMesh) -> None:
    mesh.ensure("usage")
    org = f"org-{uuid.uuid4().hex[:12]}"
    stub = rls_pb2_grpc.RateLimitServiceStub(mesh.channel("usage"))
    await wait_for_fresh_window()
    await stub.ShouldRateLimit(request(org), timeout=5)  # caches the default policy
    await set_policy(mesh, org, org_rpm=3, key_rpm=3)
    replies = [await stub.ShouldRateLimit(request(org), timeout=5) for _ in range(4)]
    assert [r.overall_code for r in replies] == [Code.OK, Code.OK, Code.OVER_LIMIT, Code.OVER_LIMIT]


async def test_bad_policy_is_invalid_argument(mesh: TestMesh) -> None:
    mesh.ensure("usage")
    stub = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="billing"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SetRateLimitPolicy(
            usage_pb2.SetRateLimitPolicyRequest(
                policy=usage_pb2.RateLimitPolicy(
                    name="orgs/x", organization_requests_per_minute=0, api_key_requests_per_minute=-1
                )
            ),
            timeout=5,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_from_rpc_error(err.value)
    assert status is not None
    fields = {f for f, _ in field_violations(status)}
    assert fields == {
        "policy.name",
        "policy.organization_requests_per_minute",
        "policy.api_key_requests_per_minute",
    }

    if mesh.mtls_only("SetRateLimitPolicy refused to the gateway"):
        # The gateway may ask ShouldRateLimit but never set a policy (that would lift its limit).
        gateway = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="gateway"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await gateway.SetRateLimitPolicy(
                usage_pb2.SetRateLimitPolicyRequest(policy=usage_pb2.RateLimitPolicy(
                    name="organizations/x/rateLimitPolicy", organization_requests_per_minute=1,
                    api_key_requests_per_minute=1)),
                timeout=5,
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_gateway_calls_without_identity_cannot_pick_an_organization(mesh: TestMesh) -> None:
    """The gateway always acts for an authenticated end user; an identity-less call from it
    naming some organization is refused (a service acting on its own account may do so)."""
    if not mesh.mtls_only("identity-less gateway calls refused"):
        pytest.skip("needs mTLS: the peer's identity is what tells the gateway from a service")
    mesh.ensure("usage")
    name = f"organizations/o_{uuid.uuid4().hex[:12]}/rateLimitPolicy"
    request = usage_pb2.GetRateLimitPolicyRequest(name=name)
    as_gateway = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="gateway"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await as_gateway.GetRateLimitPolicy(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    as_billing = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="billing"))
    policy = await as_billing.GetRateLimitPolicy(request, timeout=10)
    assert policy.name == name
