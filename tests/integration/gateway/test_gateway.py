"""End to end through the real Envoy gateway: JSON/HTTP (httpx, as curl would) and gRPC (grpcio;
grpcurl is not installable here, see conftest). Every request passes the real filter chain:
transcoder → jwt_authn → ext_authz (Auth: credential + rate limit) → router."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
import psycopg
import pytest
from aimesh.auth.v1 import auth_pb2, auth_pb2_grpc
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

from scripts import gateway as gw
from services.auth import crypto
from services.common.errors import error_info, status_from_rpc_error
from tests.support.accounts import Account, create_key, set_rate_limits, sign_up
from tests.support.mesh import TestMesh


def _status(reply: httpx.Response) -> tuple[int, str]:
    """(google.rpc code, ErrorInfo reason) of a JSON error body; fails if it is not one."""
    assert reply.headers["content-type"].startswith("application/json"), reply.text
    body = reply.json()
    reasons = [d.get("reason") for d in body.get("details", [])
               if d.get("@type", "").endswith("google.rpc.ErrorInfo")]
    assert isinstance(body["code"], int) and body["message"], body
    return body["code"], reasons[0] if reasons else ""


# --- configuration ---------------------------------------------------------------------------

def test_rendered_config_passes_envoy_validate(mesh: TestMesh, tmp_path: Path) -> None:
    config, _ = gw.write_config(mesh.settings, tmp_path)
    result = gw.validate(config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_routes_cover_every_rpc_and_streams_have_no_timeout(mesh: TestMesh) -> None:
    rendered = gw.render(mesh.settings)
    hcm = rendered["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]
    routes = {r["match"].get("path"): r for r in hcm["route_config"]["virtual_hosts"][0]["routes"]}
    rpcs = [r for r in gw.load_rpcs() if gw.is_public(r)]
    assert rpcs and all(r.path in routes for r in rpcs)
    # Service-to-service RPCs (mesh policy) are not reachable through the gateway at all.
    internal = "/aimesh.usage.v1.UsageService/SetRateLimitPolicy"
    assert internal not in routes and internal in [r.path for r in gw.load_rpcs()]
    for rpc in rpcs:
        action = routes[rpc.path]["route"]
        assert action["cluster"] == rpc.service
        assert action["timeout"] == ("0s" if rpc.streaming else gw.UNARY_TIMEOUT), rpc.path
        assert ("retry_policy" in action) == (rpc.is_read and not rpc.streaming), rpc.path
    streams = [r.path for r in rpcs if r.streaming]
    assert "/aimesh.conversation.v1.ConversationService/SendMessage" in streams
    names = [f["name"] for f in hcm["http_filters"]]
    assert names.index("envoy.filters.http.grpc_json_transcoder") < names.index(
        "envoy.filters.http.jwt_authn") < names.index("envoy.filters.http.ext_authz") < names.index(
        "envoy.filters.http.router")
    # Check counts the rate limit in the same hop: no second hop to Usage per request.
    assert "envoy.filters.http.ratelimit" not in names


# --- the happy path --------------------------------------------------------------------------

async def test_signup_login_key_and_calls_with_key_and_jwt(http: httpx.AsyncClient) -> None:
    account = await sign_up(http)
    login = await http.post("/v1/auth:login",
                            json={"email": account.email.upper(), "password": account.password})
    assert login.status_code == 200, login.text
    tokens = login.json()
    assert tokens["tokenType"] == "Bearer" and tokens["organization"] == account.org

    me = await http.get("/v1/users/me", headers={"authorization": f"Bearer {tokens['accessToken']}"})
    assert me.status_code == 200, me.text
    assert me.json()["email"] == account.email and me.json()["roles"] == ["ROLE_OWNER"]

    key = await create_key(http, account)
    assert key["secret"].startswith(key["prefix"] + "_") and key["state"] == "STATE_ACTIVE"
    for headers in ({"x-api-key": key["secret"]}, {"authorization": f"Bearer {key['secret']}"},
                    account.bearer):
        org = await http.get(f"/v1/{account.org}", headers=headers)
        assert org.status_code == 200, org.text
        assert org.json()["name"] == account.org and org.json()["displayName"] == "Acme"

    listed = await http.get(f"/v1/{account.org}/apiKeys", headers={"x-api-key": key["secret"]})
    assert listed.status_code == 200
    assert [k["name"] for k in listed.json()["apiKeys"]] == [key["name"]]
    assert "secret" not in listed.json()["apiKeys"][0]  # shown once, never again


async def test_refresh_rotates_and_reuse_revokes_the_family(http: httpx.AsyncClient) -> None:
    account = await sign_up(http)
    first = await http.post("/v1/auth:refreshToken", json={"refreshToken": account.refresh_token})
    assert first.status_code == 200, first.text
    second_token = first.json()["refreshToken"]
    assert second_token != account.refresh_token
    reuse = await http.post("/v1/auth:refreshToken", json={"refreshToken": account.refresh_token})
    assert reuse.status_code == 401 and _status(reuse) == (16, "REFRESH_TOKEN_REUSED")
    # The theft response revoked the whole family, including the token issued in between.
    after = await http.post("/v1/auth:refreshToken", json={"refreshToken": second_token})
    assert after.status_code == 401 and _status(after)[1] == "REFRESH_TOKEN_REVOKED"


async def test_jwks_is_public_and_lists_the_signing_key(http: httpx.AsyncClient) -> None:
    account = await sign_up(http)
    jwks = (await http.get("/.well-known/jwks.json")).json()
    header = json.loads(crypto.b64url_decode(account.access_token.split(".")[0]))
    assert header["alg"] == "RS256"
    assert header["kid"] in [k["kid"] for k in jwks["keys"]]


async def test_grpc_through_gateway_with_key_and_jwt(
    http: httpx.AsyncClient, gateway_channel: grpc.aio.Channel
) -> None:
    account = await sign_up(http)
    key = await create_key(http, account)
    stub = auth_pb2_grpc.AuthServiceStub(gateway_channel)
    org = await stub.GetOrganization(auth_pb2.GetOrganizationRequest(name=account.org),
                                     metadata=(("x-api-key", key["secret"]),), timeout=5)
    assert org.name == account.org
    me = await stub.GetCurrentUser(auth_pb2.GetCurrentUserRequest(),
                                   metadata=(("authorization", f"Bearer {account.access_token}"),),
                                   timeout=5)
    assert me.name == account.user

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetOrganization(auth_pb2.GetOrganizationRequest(name=account.org), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    status = status_from_rpc_error(caught.value)
    assert status is not None and error_info(status).reason == "CREDENTIALS_MISSING"  # type: ignore[union-attr]

    # Rich errors from the service come through too (field violations).
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.GetOrganization(auth_pb2.GetOrganizationRequest(name="nope"),
                                   metadata=(("x-api-key", key["secret"]),), timeout=5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_grpc_web_through_gateway(http: httpx.AsyncClient) -> None:
    account = await sign_up(http)
    message = auth_pb2.GetOrganizationRequest(name=account.org).SerializeToString()
    frame = b"\x00" + len(message).to_bytes(4, "big") + message
    reply = await http.post(
        "/aimesh.auth.v1.AuthService/GetOrganization", content=frame,
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1",
                 **account.bearer})
    assert reply.status_code == 200
    body = reply.content
    length = int.from_bytes(body[1:5], "big")
    assert body[0] == 0 and auth_pb2.Organization.FromString(body[5:5 + length]).name == account.org
    assert b"grpc-status:0" in body[5 + length:].replace(b" ", b"")


# --- failures --------------------------------------------------------------------------------

async def test_missing_and_malformed_credentials_are_401(http: httpx.AsyncClient,
                                                         account: Account) -> None:
    path = f"/v1/{account.org}"
    cases = {
        "CREDENTIALS_MISSING": {},
        "CREDENTIALS_MALFORMED": {"authorization": "Basic dXNlcjpwYXNz"},
        "API_KEY_INVALID": {"x-api-key": "amk_00000000_" + "x" * 43},
        "TOKEN_INVALID": {"authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"},
    }
    for reason, headers in cases.items():
        reply = await http.get(path, headers=headers)
        assert reply.status_code == 401, (reason, reply.text)
        assert _status(reply) == (16, reason)
        assert reply.headers["www-authenticate"].startswith("Bearer")


async def test_tampered_and_expired_jwts_are_401(mesh: TestMesh, http: httpx.AsyncClient,
                                                 account: Account) -> None:
    header, payload, signature = account.access_token.split(".")
    claims = json.loads(crypto.b64url_decode(payload))
    other_org = {**claims, "org": "o_someoneelse"}
    tampered = ".".join([header, crypto.b64url(json.dumps(other_org).encode()), signature])
    reply = await http.get(f"/v1/{account.org}", headers={"authorization": f"Bearer {tampered}"})
    assert reply.status_code == 401 and _status(reply)[0] == 16

    # An expired token correctly signed with the live key: read the key as Auth would.
    async with await psycopg.AsyncConnection.connect(mesh.settings.database_url) as conn:
        row = await (await conn.execute(
            "SELECT kid, private_key_enc FROM auth.signing_keys WHERE state = 'active'")).fetchone()
    assert row is not None
    kid, blob = row
    pem = crypto.Secrets(mesh.settings.auth_secret).decrypt(bytes(blob), kid.encode())
    expired, _ = crypto.sign_access_token(pem, kid, claims["sub"], claims["org"], ["owner"],
                                          ttl_seconds=60, now=time.time() - 3600)
    reply = await http.get(f"/v1/{account.org}", headers={"authorization": f"Bearer {expired}"})
    assert reply.status_code == 401 and _status(reply) == (16, "TOKEN_EXPIRED")
    # The same key signing a fresh token is accepted: the rejection above was the expiry.
    fresh, _ = crypto.sign_access_token(pem, kid, claims["sub"], claims["org"], ["owner"], 60)
    ok = await http.get(f"/v1/{account.org}", headers={"authorization": f"Bearer {fresh}"})
    assert ok.status_code == 200, ok.text


async def test_client_identity_headers_are_stripped_before_auth(http: httpx.AsyncClient,
                                                                account: Account) -> None:
    spoof = {"x-aimesh-org": account.org_id, "x-aimesh-subject": account.user,
             "x-aimesh-roles": "owner", "x-aimesh-jwt-payload": crypto.b64url(json.dumps(
                 {"sub": account.user[6:], "org": account.org_id, "roles": ["owner"]}).encode())}
    reply = await http.get(f"/v1/{account.org}", headers=spoof)
    assert reply.status_code == 401 and _status(reply) == (16, "CREDENTIALS_MISSING")

    # With a real key, a spoofed org header does not change whose org is read.
    key = await create_key(http, account)
    victim = await sign_up(http, "Victim")
    reply = await http.get(f"/v1/{victim.org}",
                           headers={"x-api-key": key["secret"], "x-aimesh-org": victim.org_id})
    assert reply.status_code == 404


async def test_role_and_scope_failures_are_403(http: httpx.AsyncClient, account: Account) -> None:
    key = await create_key(http, account)
    # An API key acts as MEMBER: creating keys needs ADMIN.
    reply = await http.post(f"/v1/{account.org}/apiKeys", headers={"x-api-key": key["secret"]},
                            json={"displayName": "escalate"})
    assert reply.status_code == 403 and _status(reply) == (7, "ROLE_REQUIRED")

    scoped = await create_key(http, account, scopes=["knowledge.read"])
    reply = await http.get(f"/v1/{account.org}/apiKeys", headers={"x-api-key": scoped["secret"]})
    assert reply.status_code == 403 and _status(reply) == (7, "SCOPE_REQUIRED")


async def test_unknown_path_404_and_malformed_json_400(http: httpx.AsyncClient,
                                                       account: Account) -> None:
    reply = await http.get("/v1/no/such/thing")
    assert reply.status_code == 404 and _status(reply)[0] == 5
    # An internal RPC (SetRateLimitPolicy: Billing only) has an HTTP rule but no gateway route.
    reply = await http.put(f"/v1/{account.org}/rateLimitPolicy", headers=account.bearer,
                           json={"organizationRequestsPerMinute": 10_000_000,
                                 "apiKeyRequestsPerMinute": 10_000_000})
    assert reply.status_code == 404 and _status(reply)[0] == 5

    reply = await http.post("/v1/auth:login", content=b'{"email": 5, "password": "x"}',
                            headers={"content-type": "application/json"})
    assert reply.status_code == 400 and _status(reply)[0] == 3
    assert "email" in reply.json()["message"]

    reply = await http.post("/v1/auth:signUp", json={"email": "not-an-email", "password": "short",
                                                     "organizationDisplayName": ""})
    assert reply.status_code == 400
    details = reply.json()["details"]
    fields = {v["field"] for d in details for v in d.get("fieldViolations", [])}
    assert fields == {"email", "password", "organization_display_name"}


async def test_revocation_is_effective_on_the_next_request(http: httpx.AsyncClient,
                                                           account: Account) -> None:
    key = await create_key(http, account)
    headers = {"x-api-key": key["secret"]}
    for _ in range(3):  # warm Auth's Redis cache with the active key
        assert (await http.get(f"/v1/{account.org}", headers=headers)).status_code == 200
    revoked = await http.post(f"/v1/{key['name']}:revoke", headers=account.bearer, json={})
    assert revoked.status_code == 200 and revoked.json()["state"] == "STATE_REVOKED"
    started = time.monotonic()
    reply = await http.get(f"/v1/{account.org}", headers=headers)
    # Not "within the TTL": the very next request after RevokeApiKey returns is refused.
    assert reply.status_code == 401 and _status(reply) == (16, "API_KEY_REVOKED")
    assert time.monotonic() - started < 1.0


async def test_one_orgs_key_cannot_read_another_orgs_resources(http: httpx.AsyncClient) -> None:
    alice, bob = await sign_up(http, "Alice Inc"), await sign_up(http, "Bob Ltd")
    alice_key, bob_key = await create_key(http, alice), await create_key(http, bob)
    headers = {"x-api-key": alice_key["secret"]}
    for path in (f"/v1/{bob.org}", f"/v1/{bob.org}/apiKeys", f"/v1/{bob_key['name']}",
                 f"/v1/{bob.org}/memberships"):
        reply = await http.get(path, headers=headers)
        assert reply.status_code == 404, (path, reply.text)
    reply = await http.post(f"/v1/{bob_key['name']}:revoke", headers=alice.bearer, json={})
    assert reply.status_code == 404
    still = await http.get(f"/v1/{bob.org}", headers={"x-api-key": bob_key["secret"]})
    assert still.status_code == 200


# --- rate limits (Usage's limiter, run by Auth's ext_authz Check on Usage's counters) ---------

async def _wait_for_fresh_window(margin: float = 8.0) -> None:
    # Windows are UTC minutes: do not let one burst straddle two of them.
    second = datetime.now(UTC).second + datetime.now(UTC).microsecond / 1e6
    if second > 60 - margin:
        await asyncio.sleep(60 - second + 0.2)


async def test_rate_limit_allows_exactly_the_limit_under_concurrency(
    mesh: TestMesh, http: httpx.AsyncClient, gateway_channel: grpc.aio.Channel
) -> None:
    account = await sign_up(http)
    key = await create_key(http, account)
    limit = 12
    await set_rate_limits(mesh, account, org_rpm=1000, key_rpm=limit)
    await _wait_for_fresh_window()
    headers = {"x-api-key": key["secret"]}
    replies = await asyncio.gather(*[http.get(f"/v1/{account.org}", headers=headers)
                                     for _ in range(3 * limit)])
    codes = [r.status_code for r in replies]
    assert abs(codes.count(200) - limit) <= 1, codes
    assert set(codes) <= {200, 429}, codes
    served = next(r for r in replies if r.status_code == 200)  # every counted reply says so
    assert served.headers["x-ratelimit-limit"].startswith(f"{limit}, ") and int(
        served.headers["x-ratelimit-remaining"]) < limit
    limited = next(r for r in replies if r.status_code == 429)
    # Refused by the service (or by Auth's Check it asked), not by the gateway itself.
    assert _status(limited) == (8, "RATE_LIMITED")
    assert "x-ratelimit-limit" in limited.headers
    retry = [d for d in limited.json()["details"] if d["@type"].endswith("google.rpc.RetryInfo")]
    assert retry and retry[0]["retryDelay"] == f"{limited.headers['x-ratelimit-reset']}s"

    # gRPC callers get RESOURCE_EXHAUSTED (not UNAVAILABLE, which clients would retry).
    stub = auth_pb2_grpc.AuthServiceStub(gateway_channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetOrganization(auth_pb2.GetOrganizationRequest(name=account.org),
                                   metadata=(("x-api-key", key["secret"]),), timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # The org's JWT users are counted per org, not per key: still allowed.
    assert (await http.get(f"/v1/{account.org}", headers=account.bearer)).status_code == 200


def test_gateway_ready_and_admin_on_loopback(mesh: TestMesh) -> None:
    admin_file = Path(mesh.settings.var_dir) / "envoy" / "admin-address.txt"
    address = gw.admin_address(admin_file)
    assert address is not None and address.startswith("127.0.0.1:")
    assert gw.is_ready(admin_file)
    health = httpx.get(f"http://{mesh.settings.gateway_addr}/healthz", timeout=5)
    assert health.status_code == 200




async def test_rate_limit_service_down_fails_open_but_auth_down_fails_closed(
    mesh: TestMesh, http: httpx.AsyncClient
) -> None:
    """The documented choice (envoy/README.md): without Usage the gateway still serves
    (authenticated) requests, since Check counts the limits on Usage's Redis keys itself;
    without Auth it refuses them (503), never lets them through."""
    account = await sign_up(http)
    key = await create_key(http, account)
    headers = {"x-api-key": key["secret"]}
    mesh.stop("usage")
    try:
        reply = await http.get(f"/v1/{account.org}", headers=headers)
        assert reply.status_code == 200, reply.text
        assert (await http.get(f"/v1/{account.org}")).status_code == 401  # auth still enforced
    finally:
        mesh.ensure("usage")
    mesh.stop("auth")
    try:
        reply = await http.get(f"/v1/{account.org}", headers=headers)
        assert reply.status_code == 503 and _status(reply)[0] == 14
    finally:
        mesh.ensure("auth")
    assert (await http.get(f"/v1/{account.org}", headers=headers)).status_code == 200


async def test_server_stream_through_gateway_json_and_grpc(
    http: httpx.AsyncClient, gateway_channel: grpc.aio.Channel
) -> None:
    """A server-streaming route (no 15 s route timeout) end to end: Usage's CSV export, as
    HttpBody chunks over JSON/HTTP and as a gRPC stream."""
    account = await sign_up(http)
    key = await create_key(http, account)
    params = {"startTime": "2020-01-01T00:00:00Z", "endTime": "2020-12-31T00:00:00Z"}
    reply = await http.get("/v1/usageRecords:export", params=params,
                           headers={"x-api-key": key["secret"]})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/csv")
    assert reply.text.startswith("occur_time,resource_type,model")

    stub = usage_pb2_grpc.UsageServiceStub(gateway_channel)
    request = usage_pb2.ExportUsageRecordsRequest()
    request.start_time.FromJsonString(params["startTime"])
    request.end_time.FromJsonString(params["endTime"])
    chunks = [c async for c in stub.ExportUsageRecords(
        request, metadata=(("x-api-key", key["secret"]),), timeout=10)]
    assert chunks and chunks[0].data.startswith(b"occur_time,")


async def test_cors_preflight_is_answered_without_credentials(http: httpx.AsyncClient) -> None:
    reply = await http.options("/v1/users/me", headers={
        "origin": "https://app.example.com", "access-control-request-method": "GET",
        "access-control-request-headers": "authorization"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "authorization" in reply.headers["access-control-allow-headers"]


async def test_logout_revokes_the_refresh_family(http: httpx.AsyncClient) -> None:
    account = await sign_up(http)
    for _ in range(2):  # idempotent
        assert (await http.post("/v1/auth:logout",
                                json={"refreshToken": account.refresh_token})).status_code == 200
    reply = await http.post("/v1/auth:refreshToken", json={"refreshToken": account.refresh_token})
    assert reply.status_code == 401 and _status(reply) == (16, "REFRESH_TOKEN_REVOKED")


async def _logged_status(mesh: TestMesh, key_prefix: str, path: str, timeout: float = 10.0) -> int:
    """The status the gateway's access log (the stack's gateway.log) records for `path` called
    with the API key of lookup prefix `key_prefix` (the log's key_prefix: the service admits
    the key, Envoy never learns its id); waits for Envoy to write the line."""
    log = Path(mesh.var_dir) / "log" / "gateway.log"
    deadline = time.monotonic() + timeout
    while True:
        for line in reversed(log.read_text(errors="replace").splitlines()):
            if line.startswith("{") and f'"key_prefix":"{key_prefix}"' in line:
                entry = json.loads(line)
                if entry.get("path") == path:
                    return int(entry["status"])
        assert time.monotonic() < deadline, f"no access log line for {path} with {key_id}"
        await asyncio.sleep(0.2)


async def test_body_limit_fits_base64_uploads(mesh: TestMesh, http: httpx.AsyncClient) -> None:
    """Recognize takes up to 10 MiB of audio, ~13.4 MiB as base64 JSON: the gateway must pass it
    on to Speech (whatever Speech then answers, or 503 when it is not running), never 413."""
    import base64

    account = await sign_up(http)
    key = await create_key(http, account)
    headers = {"x-api-key": key["secret"], "content-type": "application/json"}
    audio = base64.b64encode(b"\x00" * (10 * 1024 * 1024)).decode()
    body = json.dumps({"config": {"languageCode": "en-US"}, "content": audio}).encode()
    try:
        reply = await http.post("/v1/speech:recognize", content=body, headers=headers, timeout=60)
    except httpx.ReadError:
        # Without a Speech upstream Envoy may answer 503 before the whole body is sent, then
        # close the connection under the client's upload; its access log still says what it
        # answered (a 413 would be logged as 413 too).
        status = await _logged_status(mesh, key["prefix"], "/v1/speech:recognize")
        assert status not in (0, 413), status
        return
    assert reply.status_code != 413, reply.text[:300]
    assert reply.headers["content-type"].startswith("application/json")


async def test_password_guessing_is_throttled_per_email(http: httpx.AsyncClient) -> None:
    account = await sign_up(http)
    for _ in range(10):
        reply = await http.post("/v1/auth:login",
                                json={"email": account.email, "password": "wrong password!"})
        assert reply.status_code == 401
    reply = await http.post("/v1/auth:login",
                            json={"email": account.email, "password": account.password})
    assert reply.status_code == 429 and _status(reply) == (8, "LOGIN_THROTTLED")
    retry = [d for d in reply.json()["details"] if d["@type"].endswith("google.rpc.RetryInfo")]
    assert retry and float(retry[0]["retryDelay"].rstrip("s")) > 0
