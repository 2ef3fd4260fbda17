"""Auth's in-process mirror of the entries Check reads (services/auth/mirror.py): a revoked API
key, an ended session and a changed role reach another Auth process's copy at once through
Redis pub/sub, not after the copy expires. Two AuthDomains stand for two Auth replicas; real
PostgreSQL and Redis, the invalidation listeners running as a server runs them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import jwt
import pytest

from services.auth.domain import AuthDomain
from services.auth.errors import BadCredentials
from services.auth.mirror import MISSING
from services.auth.principal import Principal
from services.common.identity import Role
from tests.integration.auth.domains import open_domain
from tests.support.mesh import TestMesh

PASSWORD = "correct horse battery staple"
PROMPT_SECONDS = 0.5  # well inside the 1 s the gateway has; a copy would live 10 s


@pytest.fixture
async def replicas(mesh: TestMesh) -> AsyncIterator[tuple[AuthDomain, AuthDomain]]:
    async with open_domain(mesh, mesh.settings.redis_url, run_background=True) as one, \
            open_domain(mesh, mesh.settings.redis_url, run_background=True) as two:
        deadline = time.monotonic() + 5
        while not (one.mirror.usable and two.mirror.usable) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert one.mirror.usable and two.mirror.usable, "mirrors never subscribed"
        yield one, two


def _principal(access_token: str) -> Principal:
    claims = jwt.decode(access_token, options={"verify_signature": False})
    return Principal(org_id=claims["org"], subject=f"users/{claims['sub']}",
                     roles=tuple(claims["roles"]), session_id=claims.get("sid"))


def _email() -> str:
    return f"mirror-{uuid.uuid4().hex[:10]}@example.com"


async def _refused_soon(check: object) -> bool:
    deadline = time.monotonic() + PROMPT_SECONDS
    while time.monotonic() < deadline:
        try:
            await check()  # type: ignore[operator]
        except BadCredentials:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_revoked_key_leaves_the_other_replicas_copy(
    replicas: tuple[AuthDomain, AuthDomain]
) -> None:
    checker, admin = replicas
    owner = await admin.sessions.sign_up(_email(), PASSWORD, "", "Mirror", "")
    row, secret = await admin.api_keys.create(_principal(owner.access_token), "k", [], None, "")
    await checker.api_keys.authenticate(secret)  # fills Redis from PostgreSQL
    await checker.api_keys.authenticate(secret)  # ... and this replica's copy from Redis
    key = checker.redis.key("apikey", row["prefix"])
    assert checker.mirror.get(key) is not MISSING  # the copy exists: Redis is not asked now

    await admin.api_keys.revoke(_principal(owner.access_token), row["id"])
    assert await _refused_soon(lambda: checker.api_keys.authenticate(secret))


async def test_ended_session_and_role_change_leave_the_copies(
    replicas: tuple[AuthDomain, AuthDomain]
) -> None:
    checker, admin = replicas
    owner, member_email = await admin.sessions.sign_up(_email(), PASSWORD, "", "Mirror", ""), _email()
    await admin.sessions.sign_up(member_email, PASSWORD, "", "Own", "")
    owner_principal = _principal(owner.access_token)
    row = await admin.create_membership(owner_principal, member_email, Role.ADMIN, "")
    member = _principal((await admin.sessions.login(member_email, PASSWORD, owner.org_id,
                                                    "")).access_token)
    for _ in range(2):  # the second admission is answered from the copies
        assert (await checker.revocations.admit(member)).roles == ("admin",)
    demoted = await admin.update_membership(owner_principal, row["id"], Role.VIEWER, "")
    assert demoted["role"] == "viewer"
    deadline = time.monotonic() + PROMPT_SECONDS
    while (await checker.revocations.admit(member)).roles != ("viewer",):
        assert time.monotonic() < deadline, "the role change did not reach the other replica"
        await asyncio.sleep(0.01)

    assert (await checker.revocations.admit(owner_principal)).roles == ("owner",)
    await admin.sessions.logout(owner.refresh_token)
    assert await _refused_soon(lambda: checker.revocations.admit(owner_principal))
