"""A new organization has its plan's rate limits from sign-up (issue 12 item 4): not Usage's
configured 600/120 until something first reads its subscription. Through the real gateway:
the organization signs up, never touches Billing, and its API key is limited by the default
plan's per-key limit."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import httpx
from aimesh.billing.v1 import billing_pb2, billing_pb2_grpc
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

from tests.support.accounts import create_key, sign_up
from tests.support.mesh import TestMesh

DEFAULT_POLICY = "organizations/-/rateLimitPolicy"


async def _default_plan(mesh: TestMesh) -> billing_pb2.Plan:
    """The plan Billing gives new organizations: the one a never-seen organization's
    subscription starts on."""
    probe = (("x-aimesh-org", f"o_probe{uuid.uuid4().hex[:10]}"),
             ("x-aimesh-subject", "users/u_probe"), ("x-aimesh-roles", "viewer"))
    billing = billing_pb2_grpc.BillingServiceStub(mesh.channel("billing"))
    subscription = await billing.GetSubscription(billing_pb2.GetSubscriptionRequest(),
                                                 metadata=probe, timeout=10)
    return await billing.GetPlan(billing_pb2.GetPlanRequest(name=subscription.plan),
                                 metadata=probe, timeout=10)


async def _billing_has_started(mesh: TestMesh) -> None:
    """Wait (at most 30 s) until Billing, just started, has told Usage its default plan."""
    usage = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="billing"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            policy = await usage.GetRateLimitPolicy(
                usage_pb2.GetRateLimitPolicyRequest(name=DEFAULT_POLICY), timeout=5)
            if policy.plan:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.2)


async def test_new_org_has_its_plans_limits_from_sign_up(mesh: TestMesh) -> None:
    mesh.ensure("auth", "usage", "billing")
    plan = await _default_plan(mesh)
    await _billing_has_started(mesh)
    async with httpx.AsyncClient(base_url=f"http://{mesh.ensure_gateway()}", timeout=10) as http:
        account = await sign_up(http)
        policy = await http.get(f"/v1/{account.org}/rateLimitPolicy", headers=account.bearer)
        assert policy.status_code == 200, policy.text
        body = policy.json()
        assert (body["organizationRequestsPerMinute"], body["apiKeyRequestsPerMinute"]) == \
            (plan.organization_requests_per_minute, plan.api_key_requests_per_minute)
        assert body["plan"] == plan.name

        # Enforced at the gateway: the key gets exactly the plan's per-key limit in a window.
        key = await create_key(http, account)
        limit = plan.api_key_requests_per_minute
        for _ in range(2):  # a second try if the one-minute window rolled over mid-way
            window = int(time.time() // 60)
            passed = 0
            for _ in range(limit + 5):
                reply = await http.get("/v1/budgets", headers={"x-api-key": key["secret"]})
                assert reply.status_code in (200, 429), reply.text
                if reply.status_code == 429:
                    break
                passed += 1
            if int(time.time() // 60) == window:
                break
            await asyncio.sleep(61 - time.time() % 60)
        assert passed == limit
