"""Auth's ext_authz Check counts the gateway's rate limits itself (Usage's limiter on Usage's
Redis keys, one hop per request): over the limit it answers 429 / RESOURCE_EXHAUSTED with
x-ratelimit-* headers; when the counters cannot be reached it serves the request (fail open) or,
with AIMESH_GATEWAY_RATELIMIT_FAIL_CLOSED, answers 503 UNAVAILABLE. Real PostgreSQL and Redis;
the unreachable Redis is an address nothing answers. The gateway tests cover the same path
through the real Envoy (tests/integration/gateway/test_gateway.py)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator

import jwt
import pytest
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from envoy_api.service.auth.v3 import external_auth_pb2

from services.auth.check import AuthorizationServicer
from services.auth.domain import AuthDomain
from services.common.cache import ServiceCache
from services.usage.ratelimit import Counters, GatewayLimiter
from tests.integration.auth.domains import open_domain
from tests.integration.usage.test_ratelimit import wait_for_fresh_window
from tests.support.mesh import TestMesh, free_port

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def domain(mesh: TestMesh) -> AsyncIterator[AuthDomain]:
    async with open_domain(mesh, mesh.settings.redis_url) as auth:
        yield auth


async def _jwt_check(domain: AuthDomain) -> external_auth_pb2.CheckRequest:
    """What Envoy sends for a JWT caller that jwt_authn verified (the payload header)."""
    tokens = await domain.sessions.sign_up(f"limits-{uuid.uuid4().hex[:10]}@example.com",
                                           PASSWORD, "", "Limits", "")
    claims = jwt.decode(tokens.access_token, options={"verify_signature": False})
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.path = "/aimesh.auth.v1.AuthService/GetCurrentUser"
    http.headers["content-type"] = "application/grpc"
    http.headers["x-aimesh-jwt-payload"] = payload
    return request


def _headers(options: object) -> dict[str, str]:
    return {o.header.key: o.header.value for o in options}  # type: ignore[attr-defined]


async def test_counts_and_refuses_over_the_limit(domain: AuthDomain, mesh: TestMesh) -> None:
    request = await _jwt_check(domain)
    org = json.loads(base64.urlsafe_b64decode(
        request.attributes.request.http.headers["x-aimesh-jwt-payload"] + "=="))["org"]
    # As Billing does on a plan change; Usage publishes the policy to its Redis keys.
    mesh.ensure("usage")
    usage = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="billing"))
    policy = usage_pb2.RateLimitPolicy(
        name=f"organizations/{org}/rateLimitPolicy", organization_requests_per_minute=2,
        api_key_requests_per_minute=1, plan="plans/test")
    await usage.SetRateLimitPolicy(usage_pb2.SetRateLimitPolicyRequest(policy=policy), timeout=5)
    await wait_for_fresh_window()
    limiter = GatewayLimiter(Counters(mesh.settings, ServiceCache(mesh.settings.redis_url, "usage")))
    try:
        check = AuthorizationServicer(domain, limiter)
        first = await check.Check(request, None)  # type: ignore[arg-type]
        assert first.status.code == 0
        sent = _headers(first.ok_response.response_headers_to_add)
        assert sent["x-ratelimit-limit"] == "2, 2;w=60" and sent["x-ratelimit-remaining"] == "1"
        assert 1 <= int(sent["x-ratelimit-reset"]) <= 60
        assert (await check.Check(request, None)).status.code == 0  # type: ignore[arg-type]
        refused = await check.Check(request, None)  # type: ignore[arg-type]
        assert refused.status.code == 8  # RESOURCE_EXHAUSTED
        assert refused.denied_response.status.code == 429
        headers = _headers(refused.denied_response.headers)
        assert headers["grpc-status"] == "8" and headers["x-ratelimit-remaining"] == "0"
        assert "grpc-status-details-bin" in headers
    finally:
        await limiter.close()


@pytest.mark.parametrize("fail_closed", [False, True])
async def test_unreachable_counters_fail_open_unless_configured(
    domain: AuthDomain, mesh: TestMesh, fail_closed: bool
) -> None:
    dead = ServiceCache(f"redis://127.0.0.1:{free_port()}/0", "usage", socket_timeout=0.25)
    limiter = GatewayLimiter(Counters(mesh.settings, dead), fail_closed)
    try:
        check = AuthorizationServicer(domain, limiter)
        reply = await check.Check(await _jwt_check(domain), None)  # type: ignore[arg-type]
        if fail_closed:
            assert reply.status.code == 14 and reply.denied_response.status.code == 503
        else:
            assert reply.status.code == 0
            assert not reply.ok_response.response_headers_to_add  # nothing was counted
    finally:
        await limiter.close()
