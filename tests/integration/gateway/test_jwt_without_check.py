"""JWT and API-key callers through the real Envoy without Auth's ext_authz Check (issue 15): for a
JWT jwt_authn verifies the token and the service admits the caller (services/common/gateway_jwt.py);
an API key on a gRPC/JSON route goes to the service, which admits it from its cache of Auth's
verdicts or asks Check itself (services/common/gateway_keys.py). These tests prove that path is the
one taken (Envoy's ext_authz counters stay still for both; they move for the edge's route and for
requests without a credential), that the rate limit is still counted and enforced for JWT callers,
and that only the gateway may send the verified payload. Revocation and roles on these paths:
test_revocation.py, test_role_matrix.py and test_api_keys_without_check.py, which go through the
same routes."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import grpc
import httpx
import pytest
from aimesh.auth.v1 import auth_pb2, auth_pb2_grpc
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

from scripts import gateway as gw
from services.common.errors import error_info, status_from_rpc_error
from services.common.identity import HEADER_JWT_PAYLOAD
from tests.integration.gateway.test_gateway import _status, _wait_for_fresh_window
from tests.support.accounts import create_key, set_rate_limits, sign_up
from tests.support.mesh import TestMesh


def _ext_authz_calls(mesh: TestMesh) -> int:
    """How many Check calls Envoy has made (admitted or refused), from its admin stats."""
    admin = gw.admin_address(Path(mesh.settings.var_dir) / "envoy" / "admin-address.txt")
    text = httpx.get(f"http://{admin}/stats?filter=ext_authz", timeout=5).text
    counts = re.findall(r"^http\.gateway\.ext_authz\.(?:ok|denied|error): (\d+)$", text, re.M)
    assert counts, text
    return sum(int(c) for c in counts)


async def test_jwt_and_api_key_requests_skip_check_but_the_edge_and_no_credential_do_not(
    mesh: TestMesh, http: httpx.AsyncClient, gateway_channel: grpc.aio.Channel
) -> None:
    account = await sign_up(http)
    key = await create_key(http, account)
    stub = auth_pb2_grpc.AuthServiceStub(gateway_channel)
    request = auth_pb2.GetOrganizationRequest(name=account.org)
    before = _ext_authz_calls(mesh)
    for _ in range(3):
        assert (await http.get(f"/v1/{account.org}", headers=account.bearer)).status_code == 200
        reply = await stub.GetOrganization(
            request, metadata=(("authorization", f"Bearer {account.access_token}"),), timeout=5)
        assert reply.name == account.org
    assert _ext_authz_calls(mesh) == before  # six JWT requests, no Check
    for _ in range(3):
        for headers in ({"x-api-key": key["secret"]}, {"authorization": f"Bearer {key['secret']}"},
                        {"authorization": f"bearer {key['secret']}"}):
            assert (await http.get(f"/v1/{account.org}", headers=headers)).status_code == 200
            reply = await stub.GetOrganization(request, metadata=tuple(headers.items()), timeout=5)
            assert reply.name == account.org
    assert _ext_authz_calls(mesh) == before  # eighteen API-key requests, no Check by Envoy
    assert (await http.get(f"/v1/{account.org}")).status_code == 401  # no credential: Check
    assert _ext_authz_calls(mesh) == before + 1
    # The edge's route keeps Check (it strips a key sent as a WebSocket subprotocol); whatever
    # the edge then answers (it need not run here), Check was asked first.
    await http.get("/openai/v1/models", headers={"x-api-key": key["secret"]})
    assert _ext_authz_calls(mesh) == before + 2


async def test_jwt_callers_are_held_to_their_organizations_limit(
    mesh: TestMesh, http: httpx.AsyncClient, gateway_channel: grpc.aio.Channel
) -> None:
    account = await sign_up(http)
    limit = 5
    await set_rate_limits(mesh, account, org_rpm=limit, key_rpm=limit)
    await _wait_for_fresh_window()
    codes = [(await http.get(f"/v1/{account.org}", headers=account.bearer)).status_code
             for _ in range(limit + 3)]
    assert codes == [200] * limit + [429] * 3, codes
    limited = await http.get(f"/v1/{account.org}", headers=account.bearer)
    assert _status(limited) == (8, "RATE_LIMITED")
    retry = [d for d in limited.json()["details"] if d["@type"].endswith("google.rpc.RetryInfo")]
    assert retry and 1 <= float(retry[0]["retryDelay"].rstrip("s")) <= 60
    # Writes are counted before they run (reads alongside): refused the same way.
    write = await http.post(f"/v1/{account.org}/apiKeys", json={}, headers=account.bearer)
    assert write.status_code == 429 and _status(write) == (8, "RATE_LIMITED")
    # gRPC callers get RESOURCE_EXHAUSTED (not UNAVAILABLE, which clients would retry).
    stub = auth_pb2_grpc.AuthServiceStub(gateway_channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetOrganization(auth_pb2.GetOrganizationRequest(name=account.org),
                                   metadata=(("authorization", f"Bearer {account.access_token}"),),
                                   timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _payload(account_org: str, user: str, roles: list[str]) -> str:
    claims = {"org": account_org.split("/", 1)[1], "sub": user.split("/", 1)[1], "roles": roles}
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")


async def test_only_the_gateway_may_send_a_verified_payload(
    mesh: TestMesh, http: httpx.AsyncClient
) -> None:
    if mesh.settings.tls_mode != "mtls":
        pytest.skip("peer identities exist only under mTLS (AIMESH_TLS_MODE is "
                    f"{mesh.settings.tls_mode})")
    account = await sign_up(http)
    request = auth_pb2.GetOrganizationRequest(name=account.org)
    metadata = ((HEADER_JWT_PAYLOAD, _payload(account.org, account.user, ["owner"])),)
    # The Orchestrator may act for a user on Usage's accounting with identity headers (the
    # request then reaches Usage's own checks), never with a token's claims.
    orchestrator = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="orchestrator"))
    identity = (("x-aimesh-org", account.org_id), ("x-aimesh-subject", account.user))
    for sent, refused_by_peer_check in ((metadata, True), (identity, False)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await orchestrator.ReleaseReservation(usage_pb2.ReleaseReservationRequest(),
                                                  metadata=sent, timeout=5)
        assert (caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
                and "may not present" in (caught.value.details() or "")) == refused_by_peer_check
    gateway = auth_pb2_grpc.AuthServiceStub(mesh.channel("auth", identity="gateway"))
    served = await gateway.GetOrganization(request, metadata=metadata, timeout=5)
    assert served.name == account.org
    # A payload without org/sub is refused, not taken for an anonymous caller.
    bad = ((HEADER_JWT_PAYLOAD, base64.urlsafe_b64encode(b'{"sub": "x"}').decode()),)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.GetOrganization(request, metadata=bad, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(status_from_rpc_error(caught.value)).reason == "TOKEN_INVALID"
