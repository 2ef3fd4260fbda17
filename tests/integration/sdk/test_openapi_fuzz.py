"""The OpenAPI document drives schemathesis against the real gateway: every JSON operation is
called with generated (valid and invalid) requests as a signed-in user, and no answer may be a
server error, and every answer must match the document (status codes, content types,
response schemas)."""

from __future__ import annotations

import uuid

import httpx
import pytest
import schemathesis
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import checks

from tests.support.mesh import TestMesh

MAX_EXAMPLES = 3  # per operation: a smoke fuzz that keeps the suite quick
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance]


@pytest.fixture
async def token(platform: str, mesh: TestMesh) -> str:
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"http://{platform}/v1/auth:signUp", json={
            "email": f"fuzz-{uuid.uuid4().hex[:8]}@example.com",
            "password": "correct horse battery staple", "organizationDisplayName": "fuzz"})
    assert reply.status_code == 200, reply.text
    # A plan with room for the fuzzer's burst (as Billing sets it), so operations late in the
    # run are exercised rather than rate limited.
    usage = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="billing"))
    await usage.SetRateLimitPolicy(usage_pb2.SetRateLimitPolicyRequest(
        policy=usage_pb2.RateLimitPolicy(
            name=f"{reply.json()['organization']}/rateLimitPolicy", plan="fuzz",
            organization_requests_per_minute=100_000, api_key_requests_per_minute=100_000)),
        timeout=10)
    return str(reply.json()["accessToken"])


async def test_every_json_route_conforms(platform: str, token: str) -> None:
    schema = schemathesis.openapi.from_url(f"http://{platform}/v1/openapi.json")
    headers = {"authorization": f"Bearer {token}"}
    failures: dict[str, str] = {}
    statuses: list[int] = []
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate])
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            response = case.call_and_validate(headers=headers, timeout=30, checks=CHECKS)
            statuses.append(response.status_code)

        try:
            run()
        except Exception as exc:  # noqa: BLE001 - collected, reported together below
            failures[operation.label] = str(exc)[:600]
        tested += 1
    print(f"{tested} operations, {len(statuses)} requests, statuses {sorted(set(statuses))}")
    assert tested >= 60, f"only {tested} operations in the document"
    # Real calls happened, and both accepted and refused requests were among them.
    assert statuses.count(200) >= 5 and any(400 <= s < 500 for s in statuses), statuses
    assert not failures, "\n\n".join(f"{k}: {v}" for k, v in failures.items())
