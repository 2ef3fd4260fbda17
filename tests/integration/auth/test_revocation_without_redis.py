"""Revocation holds when Redis is away: Auth's admission check (the one ext_authz Check runs for
every JWT caller) then asks PostgreSQL, so an ended session or membership is still refused.
Real PostgreSQL (the mesh's database, migrated by Auth); Redis is an address nothing answers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import jwt
import pytest

from services.auth.domain import AuthDomain
from services.auth.errors import BadCredentials
from services.auth.principal import Principal
from services.common.identity import Role
from tests.integration.auth.domains import open_domain
from tests.support.mesh import TestMesh, free_port

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def domain(mesh: TestMesh) -> AsyncIterator[AuthDomain]:
    async with open_domain(mesh, f"redis://127.0.0.1:{free_port()}/0") as auth:
        yield auth


def _principal(access_token: str) -> Principal:
    claims = jwt.decode(access_token, options={"verify_signature": False})
    return Principal(org_id=claims["org"], subject=f"users/{claims['sub']}",
                     roles=tuple(claims["roles"]), session_id=claims.get("sid"))


def _email() -> str:
    return f"nored-{uuid.uuid4().hex[:10]}@example.com"


async def test_ended_membership_and_session_refused_from_postgres(domain: AuthDomain) -> None:
    owner = await domain.sessions.sign_up(_email(), PASSWORD, "", "Org", "")
    member_email = _email()
    await domain.sessions.sign_up(member_email, PASSWORD, "", "Own", "")
    owner_principal = _principal(owner.access_token)
    row = await domain.create_membership(owner_principal, member_email, Role.VIEWER, "")
    member = await domain.sessions.login(member_email, PASSWORD, owner.org_id, "")
    member_principal = _principal(member.access_token)

    admitted = await domain.revocations.admit(member_principal)
    assert admitted.roles == ("viewer",)
    await domain.delete_membership(owner_principal, row["id"], allow_missing=False)
    with pytest.raises(BadCredentials):
        await domain.revocations.admit(member_principal)

    assert (await domain.revocations.admit(owner_principal)).roles == ("owner",)
    await domain.sessions.logout(owner.refresh_token)
    with pytest.raises(BadCredentials):
        await domain.revocations.admit(owner_principal)
