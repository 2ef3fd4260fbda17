"""The account every gateway benchmark measures with: a fresh organization and API key whose
rate limits are lifted out of the way (set as Billing would), and the identity headers the
gateway sets for that key (for the direct paths that skip the gateway)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import httpx
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

from services.common.channels import open_channel
from services.common.config import Settings


@dataclass(frozen=True)
class BenchAccount:
    organization: str  # organizations/o_...
    secret: str  # the API key, shown once
    identity: tuple[tuple[str, str], ...]  # x-aimesh-* headers as the gateway sets them
    access_token: str = ""  # the signed-up owner's JWT (the JWT caller path)

    @property
    def key_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", self.secret),)

    @property
    def jwt_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.access_token}"),)


async def bench_account(http: httpx.AsyncClient, settings: Settings) -> BenchAccount:
    """Sign up through the gateway at `http`, create an API key, lift its rate limits."""
    for _ in range(20):  # Envoy may still be connecting to Auth right after start
        signup = await http.post("/v1/auth:signUp", json={
            "email": f"bench-{uuid.uuid4().hex[:10]}@example.com",
            "password": "benchmark password 123", "organizationDisplayName": "Bench"})
        if signup.status_code != 503:
            break
        await asyncio.sleep(0.5)
    signup.raise_for_status()
    org = signup.json()["organization"]
    bearer = {"authorization": f"Bearer {signup.json()['accessToken']}"}
    key = await http.post(f"/v1/{org}/apiKeys", json={"displayName": "bench"}, headers=bearer)
    key.raise_for_status()
    secret, key_id = key.json()["secret"], key.json()["name"].rsplit("/", 1)[1]
    # Billing is the identity that sets plan limits.
    async with open_channel(settings, "usage", caller="billing") as usage_channel:
        await usage_pb2_grpc.UsageServiceStub(usage_channel).SetRateLimitPolicy(
            usage_pb2.SetRateLimitPolicyRequest(policy=usage_pb2.RateLimitPolicy(
                name=f"{org}/rateLimitPolicy", organization_requests_per_minute=10_000_000,
                api_key_requests_per_minute=10_000_000, plan="bench")), timeout=30)  # setup, not measured
    identity = (("x-aimesh-org", org.split("/", 1)[1]), ("x-aimesh-subject", f"apiKeys/{key_id}"),
                ("x-aimesh-roles", "member"), ("x-aimesh-key-id", key_id))
    return BenchAccount(org, secret, identity, signup.json()["accessToken"])
