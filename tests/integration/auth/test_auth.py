"""The Auth service called directly over gRPC (identity headers set as the gateway would):
credentials at rest, idempotency, memberships, the ext_authz Check with and without Redis, and
signing-key rotation."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import httpx
import psycopg
import pytest
from aimesh.auth.v1 import auth_pb2, auth_pb2_grpc
from envoy_api.service.auth.v3 import (
    attribute_context_pb2,
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis

from services.auth import crypto, signing_keys
from services.common.channels import open_channel
from services.common.errors import error_info, field_violations, status_from_rpc_error
from services.common.identity import PLATFORM_ADMIN_SCOPE
from tests.support.mesh import TestMesh, free_port

PASSWORD = "correct horse battery staple"


def _email() -> str:
    return f"auth-{uuid.uuid4().hex[:12]}@example.com"


def _identity(pair: auth_pb2.TokenPair, role: str = "owner") -> tuple[tuple[str, str], ...]:
    return (("x-aimesh-org", pair.organization.split("/")[1]), ("x-aimesh-subject", pair.user),
            ("x-aimesh-roles", role))


async def _sign_up(stub: auth_pb2_grpc.AuthServiceStub, email: str | None = None,
                   request_id: str = "") -> auth_pb2.TokenPair:
    return await stub.SignUp(auth_pb2.SignUpRequest(
        email=email or _email(), password=PASSWORD, organization_display_name="Org",
        request_id=request_id), timeout=10)


def _check_request(headers: dict[str, str], path: str = "/aimesh.auth.v1.AuthService/GetOrganization"
                   ) -> external_auth_pb2.CheckRequest:
    http = attribute_context_pb2.AttributeContext.HttpRequest(method="POST", path=path,
                                                              headers=headers)
    return external_auth_pb2.CheckRequest(attributes=attribute_context_pb2.AttributeContext(
        request=attribute_context_pb2.AttributeContext.Request(http=http)))


@pytest.fixture
async def stub(mesh: TestMesh) -> auth_pb2_grpc.AuthServiceStub:
    mesh.ensure("auth")
    return auth_pb2_grpc.AuthServiceStub(mesh.channel("auth"))


async def test_credentials_at_rest_are_hashes(mesh: TestMesh,
                                              stub: auth_pb2_grpc.AuthServiceStub) -> None:
    email = _email()
    pair = await _sign_up(stub, email)
    key = await stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(
        parent=pair.organization, api_key=auth_pb2.ApiKey(display_name="k")),
        metadata=_identity(pair), timeout=5)
    async with await psycopg.AsyncConnection.connect(mesh.settings.database_url) as conn:
        user = await (await conn.execute("SELECT password_hash FROM auth.users WHERE email = %s",
                                         (email,))).fetchone()
        stored = await (await conn.execute(
            "SELECT secret_hash, prefix FROM auth.api_keys WHERE prefix = %s", (key.prefix,)
        )).fetchone()
        private = await (await conn.execute(
            "SELECT private_key_enc FROM auth.signing_keys LIMIT 1")).fetchone()
    assert user is not None and user[0].startswith("$argon2id$") and PASSWORD not in user[0]
    assert stored is not None and key.secret.encode() not in bytes(stored[0])
    assert len(bytes(stored[0])) == 32  # HMAC-SHA256
    assert private is not None and b"PRIVATE KEY" not in bytes(private[0])  # encrypted at rest


async def test_login_failures_do_not_reveal_which_part_was_wrong(
    stub: auth_pb2_grpc.AuthServiceStub,
) -> None:
    email = _email()
    await _sign_up(stub, email)
    for mail, password in ((email, "wrong password!!"), (_email(), PASSWORD)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Login(auth_pb2.LoginRequest(email=mail, password=password), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert caught.value.details() == "wrong e-mail or password"
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await stub.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD,
                                               organization="organizations/o_notmine"), timeout=10)
    assert other.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_sign_up_is_idempotent_by_request_id(stub: auth_pb2_grpc.AuthServiceStub) -> None:
    email, request_id = _email(), str(uuid.uuid4())
    first = await _sign_up(stub, email, request_id)
    again = await _sign_up(stub, email, request_id)
    assert again == first
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _sign_up(stub, email)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    status = status_from_rpc_error(caught.value)
    assert status is not None and error_info(status).reason == "EMAIL_TAKEN"  # type: ignore[union-attr]


async def test_bad_input_names_every_field(stub: auth_pb2_grpc.AuthServiceStub) -> None:
    pair = await _sign_up(stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(
            parent=pair.organization, api_key=auth_pb2.ApiKey(
                display_name="x" * 101, scopes=["root"],
                expire_time={"seconds": int(time.time()) - 10})),
            metadata=_identity(pair), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_from_rpc_error(caught.value)
    assert status is not None
    assert {f for f, _ in field_violations(status)} == {
        "api_key.display_name", "api_key.scopes", "api_key.expire_time"}


async def test_memberships_roles_and_last_owner(stub: auth_pb2_grpc.AuthServiceStub) -> None:
    owner = await _sign_up(stub)
    invited_email = _email()
    invited = await stub.CreateMembership(auth_pb2.CreateMembershipRequest(
        parent=owner.organization, membership=auth_pb2.Membership(
            email=invited_email, role=auth_pb2.ROLE_MEMBER)), metadata=_identity(owner), timeout=5)
    assert invited.state == auth_pb2.Membership.STATE_INVITED
    # Signing up activates the invitation; the new user can log in to that org.
    await _sign_up(stub, invited_email)
    member_pair = await stub.Login(auth_pb2.LoginRequest(
        email=invited_email, password=PASSWORD, organization=owner.organization), timeout=10)
    assert member_pair.organization == owner.organization

    listed = await stub.ListMemberships(auth_pb2.ListMembershipsRequest(
        parent=owner.organization, page_size=1), metadata=_identity(owner), timeout=5)
    assert listed.total_size == 2 and len(listed.memberships) == 1 and listed.next_page_token
    rest = await stub.ListMemberships(auth_pb2.ListMembershipsRequest(
        parent=owner.organization, page_size=1, page_token=listed.next_page_token),
        metadata=_identity(owner), timeout=5)
    assert rest.memberships[0].email == invited_email
    assert rest.memberships[0].state == auth_pb2.Membership.STATE_ACTIVE

    # A member (role re-read from the database, not the token) cannot create keys.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(
            parent=owner.organization, api_key=auth_pb2.ApiKey()),
            metadata=_identity(member_pair, role="owner"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    owner_membership = listed.memberships[0]
    with pytest.raises(grpc.aio.AioRpcError) as last:
        await stub.UpdateMembership(auth_pb2.UpdateMembershipRequest(
            membership=auth_pb2.Membership(name=owner_membership.name, role=auth_pb2.ROLE_ADMIN)),
            metadata=_identity(owner), timeout=5)
    assert last.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    promoted = await stub.UpdateMembership(auth_pb2.UpdateMembershipRequest(
        membership=auth_pb2.Membership(name=rest.memberships[0].name, role=auth_pb2.ROLE_ADMIN,
                                       etag=rest.memberships[0].etag)),
        metadata=_identity(owner), timeout=5)
    assert promoted.role == auth_pb2.ROLE_ADMIN
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await stub.UpdateMembership(auth_pb2.UpdateMembershipRequest(
            membership=auth_pb2.Membership(name=rest.memberships[0].name,
                                           role=auth_pb2.ROLE_VIEWER,
                                           etag=rest.memberships[0].etag)),
            metadata=_identity(owner), timeout=5)
    assert stale.value.code() == grpc.StatusCode.ABORTED
    await stub.DeleteMembership(auth_pb2.DeleteMembershipRequest(name=promoted.name),
                                metadata=_identity(owner), timeout=5)
    await stub.DeleteMembership(auth_pb2.DeleteMembershipRequest(
        name=promoted.name, allow_missing=True), metadata=_identity(owner), timeout=5)


async def test_check_caches_keys_and_revocation_overwrites_the_entry(
    mesh: TestMesh, stub: auth_pb2_grpc.AuthServiceStub
) -> None:
    pair = await _sign_up(stub)
    key = await stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(
        parent=pair.organization, api_key=auth_pb2.ApiKey(scopes=["inference"])),
        metadata=_identity(pair), timeout=5)
    check = external_auth_pb2_grpc.AuthorizationStub(mesh.channel("auth"))
    reply = await check.Check(_check_request(
        {"x-api-key": key.secret},
        path="/aimesh.orchestrator.v1.OrchestratorService/ListModels"), timeout=5)
    assert reply.status.code == 0
    added = {h.header.key: h.header.value for h in reply.ok_response.headers}
    assert added["x-aimesh-org"] == pair.organization.split("/")[1]
    assert added["x-aimesh-key-id"] == key.name.rsplit("/", 1)[1]
    assert added["x-aimesh-scopes"] == "inference"
    assert all(h.append.value is False for h in reply.ok_response.headers)
    assert {"authorization", "x-api-key"} <= set(reply.ok_response.headers_to_remove)

    redis = Redis.from_url(mesh.settings.redis_url)
    try:
        cached = json.loads(await redis.get(f"auth:apikey:{key.prefix}"))
        assert cached["revoked"] is False and key.secret not in json.dumps(cached)
        await stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(name=key.name),
                                metadata=_identity(pair), timeout=5)
        cached = json.loads(await redis.get(f"auth:apikey:{key.prefix}"))
        assert cached["revoked"] is True
    finally:
        await redis.aclose()
    denied = await check.Check(_check_request({"authorization": f"Bearer {key.secret}"}),
                               timeout=5)
    assert denied.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert denied.denied_response.status.code == 401
    assert json.loads(denied.denied_response.body)["details"][0]["reason"] == "API_KEY_REVOKED"

    if mesh.mtls_only("ext_authz Check refused to workloads other than the gateway and services"):
        # Envoy asks ext_authz, and services ask it about the API keys the gateway sends them
        # (services/common/gateway_keys.py); no other workload can probe keys through it.
        service = external_auth_pb2_grpc.AuthorizationStub(mesh.channel("auth", identity="usage"))
        asked = await service.Check(_check_request({"x-api-key": key.secret}), timeout=5)
        assert asked.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]  # still revoked
        for identity in ("edge", "operator"):
            other = external_auth_pb2_grpc.AuthorizationStub(mesh.channel("auth", identity=identity))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await other.Check(_check_request({"x-api-key": key.secret}), timeout=5)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, identity


def _start_auth(mesh: TestMesh, name: str, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """A second Auth process on its own port, same database, with `env` overrides."""
    address = f"127.0.0.1:{free_port()}"
    with (mesh.var_dir / "log" / f"{name}.log").open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "services.auth"],
                                   env={**mesh.env, "AIMESH_AUTH_ADDR": address, **env},
                                   stdout=log, stderr=subprocess.STDOUT)
    return process, address


def _channel(mesh: TestMesh, address: str, identity: str = "gateway") -> grpc.aio.Channel:
    """A channel to a second Auth process at `address`, as mesh `identity` (mTLS when the
    mesh runs it)."""
    settings = dataclasses.replace(
        mesh.settings, service_addrs={**mesh.settings.service_addrs, "auth": address})
    return open_channel(settings, "auth", caller=identity)


async def _wait_serving(mesh: TestMesh, process: subprocess.Popen[bytes], address: str) -> None:
    async with _channel(mesh, address, "operator") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            assert process.poll() is None, f"auth at {address} exited"
            await asyncio.sleep(0.1)
    raise AssertionError(f"auth at {address} never became SERVING")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=15)


@pytest.fixture
async def auth_without_redis(mesh: TestMesh) -> AsyncIterator[str]:
    """A second Auth process whose Redis address is dead: API keys must still check out."""
    process, address = _start_auth(mesh, "auth-no-redis",
                                   AIMESH_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    try:
        await _wait_serving(mesh, process, address)
        yield address
    finally:
        _stop(process)


async def test_check_falls_back_to_postgres_without_redis(
    mesh: TestMesh, auth_without_redis: str, stub: auth_pb2_grpc.AuthServiceStub
) -> None:
    pair = await _sign_up(stub)
    key = await stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(
        parent=pair.organization, api_key=auth_pb2.ApiKey()), metadata=_identity(pair), timeout=5)
    async with _channel(mesh, auth_without_redis) as channel:
        check = external_auth_pb2_grpc.AuthorizationStub(channel)
        for _ in range(2):  # second call: Redis marked down, straight to PostgreSQL
            ok = await check.Check(_check_request({"x-api-key": key.secret}), timeout=5)
            assert ok.status.code == 0
        await stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(name=key.name),
                                metadata=_identity(pair), timeout=5)
        denied = await check.Check(_check_request({"x-api-key": key.secret}), timeout=5)
        assert denied.denied_response.status.code == 401


async def test_a_service_without_redis_asks_check_about_every_api_key(
    mesh: TestMesh, auth_without_redis: str, stub: auth_pb2_grpc.AuthServiceStub
) -> None:
    """The service side of the same failure (services/common/gateway_keys.py): a process that
    cannot subscribe to Auth's changes holds no verdict, so every API-key request it serves asks
    Check (here its own, answering from PostgreSQL) and a key revoked elsewhere is refused on
    the very next request, though its revocation message never reached this process."""
    pair = await _sign_up(stub)
    key = await stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(
        parent=pair.organization, api_key=auth_pb2.ApiKey()), metadata=_identity(pair), timeout=5)
    request = auth_pb2.GetOrganizationRequest(name=pair.organization)
    presented = (("x-api-key", key.secret),)
    async with _channel(mesh, auth_without_redis) as channel:  # as the gateway forwards a key
        api = auth_pb2_grpc.AuthServiceStub(channel)
        for _ in range(3):
            assert (await api.GetOrganization(request, metadata=presented, timeout=5)
                    ).name == pair.organization
        await stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(name=key.name),
                                metadata=_identity(pair), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.GetOrganization(request, metadata=presented, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _refusal_reason(caught.value) == "API_KEY_REVOKED"


async def _rotate(admin: auth_pb2_grpc.AuthServiceStub, metadata: tuple[tuple[str, str], ...]
                  ) -> auth_pb2.SigningKey:
    """Rotate, waiting out NEXT_KEY_NOT_PUBLISHED (the keys were created moments ago)."""
    while True:
        try:
            return await admin.RotateSigningKey(auth_pb2.RotateSigningKeyRequest(
                request_id=str(uuid.uuid4())), metadata=metadata, timeout=30)
        except grpc.aio.AioRpcError as refused:
            if _refusal_reason(refused) != "NEXT_KEY_NOT_PUBLISHED":
                raise
            await asyncio.sleep(_retry_delay(refused) + 0.5)


def _refusal_reason(error: grpc.aio.AioRpcError) -> str:
    status = status_from_rpc_error(error)
    info = error_info(status) if status is not None else None
    return info.reason if info is not None else ""


def _retry_delay(error: grpc.aio.AioRpcError) -> float:
    status = status_from_rpc_error(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    raise AssertionError("no RetryInfo in the refusal")


async def _verifies_at_gateway(http: httpx.AsyncClient, token: str, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        reply = await http.get("/v1/users/me", headers={"authorization": f"Bearer {token}"})
        if reply.status_code == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert reply.status_code == 200, reply.text


async def test_rotation_keeps_old_tokens_valid_and_new_key_was_prepublished(
    mesh: TestMesh,
) -> None:
    """Signing keys are global: this rotates twice, with the default grace, so tokens of the
    previous keys keep verifying everywhere. Runs a second Auth with this user as platform admin.
    The gateway caches the JWKS and never refetches on an unknown kid, so every key must be
    published before it signs: a rotation right after another is refused (it once activated a
    key the gateway did not know, and its tokens failed there for a minute)."""
    mesh.ensure("auth", "usage")
    gateway = mesh.ensure_gateway()
    email = _email()
    process, address = _start_auth(mesh, "auth-admin", AIMESH_AUTH_PLATFORM_ADMINS=email)
    try:
        await _wait_serving(mesh, process, address)
        async with _channel(mesh, address) as channel, \
                httpx.AsyncClient(base_url=f"http://{gateway}", timeout=10) as http:
            admin = auth_pb2_grpc.AuthServiceStub(channel)
            old = await _sign_up(admin, email)
            before = (await http.get("/.well-known/jwks.json")).json()["keys"]
            old_kid = json.loads(crypto.b64url_decode(old.access_token.split(".")[0]))["kid"]
            # What the gateway forwards for this token: its platform:admin scope included.
            as_admin = (*_identity(old), ("x-aimesh-scopes", PLATFORM_ADMIN_SCOPE))

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await admin.RotateSigningKey(auth_pb2.RotateSigningKeyRequest(
                    previous_key_grace=duration_pb2.Duration(seconds=-1)),
                    metadata=as_admin, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            rotated = await _rotate(admin, as_admin)
            assert rotated.kid != old_kid
            # Usually the new key was already published as "next" before the rotation (a fresh
            # CI run once read a JWKS without it; then the gateway may take one cache period).
            prepublished = rotated.kid in [k["kid"] for k in before]
            # The rotation is in the audit log, once (the refused attempts are not).
            log = await admin.ListAuditEvents(auth_pb2.ListAuditEventsRequest(
                parent=old.organization, action="auth.RotateSigningKey"), metadata=as_admin,
                timeout=10)
            assert [e.resource for e in log.audit_events] == [f"signingKeys/{rotated.kid}"]
            assert log.audit_events[0].actor == old.user
            after = [k["kid"] for k in (await http.get("/.well-known/jwks.json")).json()["keys"]]
            assert after[0] == rotated.kid and old_kid in after  # old key kept for its tokens

            # At once again: refused, with how long to wait.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await admin.RotateSigningKey(auth_pb2.RotateSigningKeyRequest(
                    request_id=str(uuid.uuid4())), metadata=as_admin, timeout=30)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert _refusal_reason(caught.value) == "NEXT_KEY_NOT_PUBLISHED"
            assert 0 < _retry_delay(caught.value) <= signing_keys.MIN_PUBLISHED_SECONDS

            second = await _rotate(admin, as_admin)
            assert second.kid not in (old_kid, rotated.kid)
            new = await admin.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD),
                                    timeout=10)
            assert json.loads(crypto.b64url_decode(new.access_token.split(".")[0]))[
                "kid"] == second.kid
            # The new key was in the gateway's cached JWKS before it signed: no waiting.
            for token in (old.access_token, new.access_token):
                await _verifies_at_gateway(
                    http, token, within=5 if prepublished else signing_keys.JWKS_CACHE_SECONDS + 10)
    finally:
        _stop(process)


async def test_expired_api_key_is_refused_even_when_cached(
    mesh: TestMesh, stub: auth_pb2_grpc.AuthServiceStub
) -> None:
    pair = await _sign_up(stub)
    key = await stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(
        parent=pair.organization, api_key=auth_pb2.ApiKey(
            expire_time={"seconds": int(time.time()) + 2})),
        metadata=_identity(pair), timeout=5)
    check = external_auth_pb2_grpc.AuthorizationStub(mesh.channel("auth"))
    assert (await check.Check(_check_request({"x-api-key": key.secret}), timeout=5)).status.code == 0
    await asyncio.sleep(max(0.0, key.expire_time.seconds - time.time()) + 0.1)
    denied = await check.Check(_check_request({"x-api-key": key.secret}), timeout=5)
    assert json.loads(denied.denied_response.body)["details"][0]["reason"] == "API_KEY_EXPIRED"
    listed = await stub.ListApiKeys(auth_pb2.ListApiKeysRequest(
        parent=pair.organization, show_inactive=True), metadata=_identity(pair), timeout=5)
    assert [k.state for k in listed.api_keys] == [auth_pb2.ApiKey.STATE_EXPIRED]
    assert listed.api_keys[0].last_use_time.seconds > 0  # the successful check was recorded
