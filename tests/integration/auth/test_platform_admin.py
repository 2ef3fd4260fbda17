"""Platform admins (AIMESH_AUTH_PLATFORM_ADMINS) get the `platform:admin` scope in their access
tokens; Check forwards it as x-aimesh-scopes, which Billing and Usage read via Identity."""

from __future__ import annotations

import uuid

import jwt
from aimesh.auth.v1 import auth_pb2, auth_pb2_grpc

from services.common.identity import PLATFORM_ADMIN_SCOPE
from tests.support.mesh import PLATFORM_ADMIN_EMAIL, TestMesh


async def _sign_up(mesh: TestMesh, email: str) -> dict[str, object]:
    stub = auth_pb2_grpc.AuthServiceStub(mesh.channel("auth"))
    reply = await stub.SignUp(
        auth_pb2.SignUpRequest(
            email=email,
            password="correct horse battery staple",
            organization_display_name="Ops",
            request_id=str(uuid.uuid4()),
        ),
        timeout=30,
    )
    return jwt.decode(reply.access_token, options={"verify_signature": False})


async def test_platform_admin_token_carries_the_scope(mesh: TestMesh) -> None:
    mesh.ensure("auth")
    # The configured admin may already exist from an earlier run against the same database.
    stub = auth_pb2_grpc.AuthServiceStub(mesh.channel("auth"))
    try:
        claims = await _sign_up(mesh, PLATFORM_ADMIN_EMAIL)
    except Exception:
        reply = await stub.Login(
            auth_pb2.LoginRequest(email=PLATFORM_ADMIN_EMAIL, password="correct horse battery staple"),
            timeout=30,
        )
        claims = jwt.decode(reply.access_token, options={"verify_signature": False})
    assert PLATFORM_ADMIN_SCOPE in str(claims.get("scope", "")).split()


async def test_ordinary_user_token_has_no_admin_scope(mesh: TestMesh) -> None:
    mesh.ensure("auth")
    claims = await _sign_up(mesh, f"user-{uuid.uuid4().hex[:10]}@example.com")
    assert PLATFORM_ADMIN_SCOPE not in str(claims.get("scope", "")).split()
