"""API-key callers through the real Envoy without its ext_authz hop (issue 15): the service admits
the key from its cache of Auth's verdicts, or asks Auth's Check itself on a miss
(services/common/gateway_keys.py). Whatever answers, the caller sees what Check would have said:
revoked keys refused within a second even while a verdict is held, scopes enforced, bad and
expired keys refused with the same reasons, x-ratelimit-* on every counted reply, 429 /
RESOURCE_EXHAUSTED over the limit on reads and writes.

The keys are used on Usage's and Auth's routes (the gateway fixture runs those two services), so
the verdicts live in the Usage and Auth processes of the test mesh.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import pytest
from aimesh.auth.v1 import auth_pb2, auth_pb2_grpc
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

from services.common.cache import ServiceCache
from services.common.errors import error_info, status_from_rpc_error
from services.common.gateway_jwt import API_KEY, AUTH_PREFIX, CHANNEL, RevokedTokens
from services.common.gateway_keys import KeyVerdicts
from services.common.identity import Identity, Role
from tests.integration.gateway.test_gateway import _status, _wait_for_fresh_window
from tests.support.accounts import Account, create_key, set_rate_limits, sign_up
from tests.support.mesh import TestMesh

REVOCATION_SECONDS = 1.0  # the requirement (issue 12), not a speed target


def _key_headers(key: dict[str, str]) -> dict[str, str]:
    return {"x-api-key": key["secret"]}


async def _grpc_refusal(call: object) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """(code, ErrorInfo reason, ErrorInfo metadata but the trace id) of a gRPC call that must
    fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    status = status_from_rpc_error(caught.value)
    info = error_info(status) if status else None
    metadata = {k: v for k, v in (info.metadata if info else {}).items() if k != "trace_id"}
    return caught.value.code(), info.reason if info else "", metadata


async def test_revoked_key_is_refused_within_a_second_while_its_verdict_is_held(
    http: httpx.AsyncClient, gateway_channel: grpc.aio.Channel, account: Account
) -> None:
    key = await create_key(http, account)
    headers = _key_headers(key)
    usage = usage_pb2_grpc.UsageServiceStub(gateway_channel)
    metadata = (("x-api-key", key["secret"]),)
    # The first request asks Auth; the next ones are admitted from the verdict Usage now holds.
    for _ in range(3):
        assert (await http.get("/v1/budgets", headers=headers)).status_code == 200
        await usage.ListBudgets(usage_pb2.ListBudgetsRequest(), metadata=metadata, timeout=5)
    revoked = await http.post(f"/v1/{key['name']}:revoke", headers=account.bearer, json={})
    assert revoked.status_code == 200, revoked.text
    deadline = time.monotonic() + REVOCATION_SECONDS
    while True:
        reply = await http.get("/v1/budgets", headers=headers)
        if reply.status_code == 401 or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    assert reply.status_code == 401, "a revoked key was still served after 1 s"
    assert _status(reply) == (16, "API_KEY_REVOKED")
    code, reason, _ = await _grpc_refusal(
        usage.ListBudgets(usage_pb2.ListBudgetsRequest(), metadata=metadata, timeout=5))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")


async def test_another_secret_under_a_held_keys_prefix_is_refused(
    http: httpx.AsyncClient, account: Account
) -> None:
    key = await create_key(http, account)
    assert (await http.get("/v1/budgets", headers=_key_headers(key))).status_code == 200
    # Same lookup prefix, another secret: the held verdict must not answer for it.
    forged = key["secret"][:-4] + ("AAAA" if not key["secret"].endswith("AAAA") else "BBBB")
    reply = await http.get("/v1/budgets", headers={"x-api-key": forged})
    assert reply.status_code == 401 and _status(reply) == (16, "API_KEY_INVALID")
    assert reply.headers["www-authenticate"].startswith("Bearer")
    # A bearer that only looks like a key skips ext_authz too, and Auth still words the refusal.
    reply = await http.get("/v1/budgets", headers={"authorization": "Bearer amk_not-a-key"})
    assert reply.status_code == 401 and _status(reply) == (16, "API_KEY_INVALID")
    assert (await http.get("/v1/budgets", headers=_key_headers(key))).status_code == 200
    # Public methods take no credential: a bad key sent along is ignored, as at the gateway.
    login = await http.post("/v1/auth:login", headers={"x-api-key": forged},
                            json={"email": account.email, "password": account.password})
    assert login.status_code == 200, login.text


async def test_one_orgs_held_key_never_reaches_another_org(
    http: httpx.AsyncClient, gateway_channel: grpc.aio.Channel
) -> None:
    alice, bob = await sign_up(http, "Alice Inc"), await sign_up(http, "Bob Ltd")
    alice_key, bob_key = await create_key(http, alice), await create_key(http, bob)
    made = await http.post("/v1/budgets", headers=bob.bearer, json={
        "scope": "SCOPE_ORGANIZATION", "displayName": "bob's", "monthlyTokenLimit": "1000"})
    assert made.status_code == 200, made.text
    usage = usage_pb2_grpc.UsageServiceStub(gateway_channel)
    for _ in range(3):  # held verdicts for both keys in the same Usage process
        for key, expected in ((alice_key, 0), (bob_key, 1)):
            listed = await usage.ListBudgets(usage_pb2.ListBudgetsRequest(),
                                             metadata=(("x-api-key", key["secret"]),), timeout=5)
            assert len(listed.budgets) == expected
    budget = made.json()["name"]
    reply = await http.get(f"/v1/{budget}", headers=_key_headers(alice_key))
    assert reply.status_code == 404, reply.text
    assert (await http.get(f"/v1/{budget}", headers=_key_headers(bob_key))).status_code == 200


async def test_scopes_are_enforced_whether_auth_or_the_held_verdict_answers(
    http: httpx.AsyncClient, gateway_channel: grpc.aio.Channel, account: Account
) -> None:
    # A key Auth has never admitted: its Check refuses (miss).
    knowledge_only = await create_key(http, account, scopes=["knowledge.read"])
    reply = await http.get("/v1/budgets", headers=_key_headers(knowledge_only))
    assert reply.status_code == 403 and _status(reply) == (7, "SCOPE_REQUIRED")
    assert reply.json()["details"][0]["metadata"]["required_scope"] == "usage.read"

    # A key whose verdict Usage holds, on a method its scope does not grant (hit).
    reader = await create_key(http, account, scopes=["usage.read"])
    for _ in range(2):
        assert (await http.get("/v1/budgets", headers=_key_headers(reader))).status_code == 200
    body = {"scope": "SCOPE_ORGANIZATION", "displayName": "b"}
    reply = await http.post("/v1/budgets", headers=_key_headers(reader), json=body)
    assert reply.status_code == 403 and _status(reply) == (7, "SCOPE_REQUIRED")
    usage = usage_pb2_grpc.UsageServiceStub(gateway_channel)
    code, reason, metadata = await _grpc_refusal(usage.CreateBudget(
        usage_pb2.CreateBudgetRequest(), metadata=(("x-api-key", reader["secret"]),), timeout=5))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_REQUIRED")
    assert metadata["required_scope"] == "unscoped key"
    # The same refusal Auth gives a key it sees for the first time.
    fresh = await create_key(http, account, scopes=["usage.read"])
    assert await _grpc_refusal(usage.CreateBudget(
        usage_pb2.CreateBudgetRequest(), metadata=(("x-api-key", fresh["secret"]),), timeout=5)
    ) == (code, reason, metadata)
    # Auth's own methods take unscoped keys only.
    auth = auth_pb2_grpc.AuthServiceStub(gateway_channel)
    code, reason, _ = await _grpc_refusal(auth.GetOrganization(
        auth_pb2.GetOrganizationRequest(name=account.org),
        metadata=(("authorization", f"Bearer {reader['secret']}"),), timeout=5))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_REQUIRED")


async def test_an_expiring_key_is_refused_once_expired_though_its_verdict_was_held(
    http: httpx.AsyncClient, account: Account
) -> None:
    expiry = datetime.now(UTC) + timedelta(seconds=3)
    key = await create_key(http, account, expireTime=expiry.isoformat().replace("+00:00", "Z"))
    for _ in range(2):
        assert (await http.get("/v1/budgets", headers=_key_headers(key))).status_code == 200
    await asyncio.sleep(max(0.0, (expiry - datetime.now(UTC)).total_seconds()) + 0.2)
    reply = await http.get("/v1/budgets", headers=_key_headers(key))
    assert reply.status_code == 401 and _status(reply) == (16, "API_KEY_EXPIRED")


async def test_rate_limit_headers_and_refusals_on_reads_and_writes(
    mesh: TestMesh, http: httpx.AsyncClient, gateway_channel: grpc.aio.Channel
) -> None:
    account = await sign_up(http)
    key = await create_key(http, account)
    limit = 4
    await set_rate_limits(mesh, account, org_rpm=1000, key_rpm=limit)
    await _wait_for_fresh_window()
    # JSON: the first request is counted by Auth's Check, the next by the service (held verdict).
    remaining = []
    for _ in range(limit - 1):
        reply = await http.get("/v1/budgets", headers=_key_headers(key))
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-ratelimit-limit"] == f"{limit}, {limit};w=60"
        assert 1 <= int(reply.headers["x-ratelimit-reset"]) <= 60
        remaining.append(int(reply.headers["x-ratelimit-remaining"]))
    assert remaining == [limit - 1, limit - 2, limit - 3]
    # gRPC: the same headers in the reply's initial metadata.
    stub = usage_pb2_grpc.UsageServiceStub(gateway_channel)
    call = stub.ListBudgets(usage_pb2.ListBudgetsRequest(),
                            metadata=(("x-api-key", key["secret"]),), timeout=5)
    await call
    sent = dict(await call.initial_metadata())
    assert sent["x-ratelimit-remaining"] == "0"
    assert sent["x-ratelimit-limit"].startswith(f"{limit},")

    # Over the limit: reads and writes alike, JSON 429 and gRPC RESOURCE_EXHAUSTED (not
    # UNAVAILABLE, which clients would retry), with RetryInfo and the headers.
    read = await http.get("/v1/budgets", headers=_key_headers(key))
    body = {"scope": "SCOPE_ORGANIZATION", "displayName": "b"}
    write = await http.post("/v1/budgets", headers=_key_headers(key), json=body)
    for reply in (read, write):
        assert reply.status_code == 429 and _status(reply) == (8, "RATE_LIMITED")
        assert reply.headers["x-ratelimit-remaining"] == "0"
        retry = [d for d in reply.json()["details"]
                 if d["@type"].endswith("google.rpc.RetryInfo")]
        assert retry and retry[0]["retryDelay"] == f"{reply.headers['x-ratelimit-reset']}s"
    code, reason, _ = await _grpc_refusal(stub.ListBudgets(
        usage_pb2.ListBudgetsRequest(), metadata=(("x-api-key", key["secret"]),), timeout=5))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    # The organization's JWT users have their own window: still served.
    assert (await http.get("/v1/budgets", headers=account.bearer)).status_code == 200


async def test_the_access_log_names_the_keys_prefix_never_its_secret(
    mesh: TestMesh, http: httpx.AsyncClient, account: Account
) -> None:
    key = await create_key(http, account)
    for headers in (_key_headers(key), {"authorization": f"Bearer {key['secret']}"}):
        assert (await http.get("/v1/budgets", headers=headers)).status_code == 200
    log = Path(mesh.var_dir) / "log" / "gateway.log"
    deadline = time.monotonic() + 10
    while True:  # Envoy writes its access log asynchronously
        text = log.read_text(errors="replace")
        entries = [json.loads(line) for line in text.splitlines()
                   if line.startswith("{") and key["prefix"] in line]
        if len(entries) >= 2 or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.2)
    assert [e["key_prefix"] for e in entries][:1] == [key["prefix"]], entries
    assert entries[-1]["bearer_prefix"] == f"Bearer {key['prefix']}", entries
    assert key["secret"] not in text and key["secret"][len(key["prefix"]):] not in text


async def test_the_listener_drops_a_verdict_when_auth_announces_the_key(mesh: TestMesh) -> None:
    """The wiring itself, on the real Redis: a message on Auth's changed channel naming the key's
    entry empties that verdict (the end-to-end proof is the revocation test above)."""
    verdicts = KeyVerdicts()
    tokens = RevokedTokens(ServiceCache(mesh.settings.redis_url, AUTH_PREFIX), verdicts)
    listening = asyncio.ensure_future(tokens.listen())
    try:
        for _ in range(100):
            if verdicts.live and tokens.live:
                break
            await asyncio.sleep(0.05)
        assert verdicts.live
        secret = "amk_0123abcd_" + "s" * 40
        caller = Identity("o_1", "apiKeys/key_1", frozenset({Role.MEMBER}), key_id="key_1")
        verdicts.keep(secret, caller, None, verdicts.generation())
        assert verdicts.admitted(secret) == caller
        publisher = ServiceCache(mesh.settings.redis_url, AUTH_PREFIX)
        try:
            await publisher.redis.publish(CHANNEL, f"{API_KEY}amk_ffffffff\n{API_KEY}amk_0123abcd")
        finally:
            await publisher.close()
        for _ in range(100):
            if verdicts.admitted(secret) is None:
                break
            await asyncio.sleep(0.01)
        assert verdicts.admitted(secret) is None
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await tokens.cache.close()
    assert not verdicts.live  # no subscription, no verdicts used
