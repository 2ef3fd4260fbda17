"""services/common/gateway_jwt.py without servers: how the mirrored deny list decides, and the
identity a verified payload gives (the end-to-end proof through Envoy is
tests/integration/gateway/test_revocation.py and test_jwt_without_check.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import grpc
import pytest

from services.common import identity
from services.common.cache import ServiceCache
from services.common.errors import ServiceError
from services.common.gateway_jwt import GatewayCallerInterceptor, RevokedTokens
from services.common.identity import HEADER_JWT_PAYLOAD, Role, identity_from_metadata


def _payload(**claims: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")


TOKEN = _payload(org="o_1", sub="u_1", roles=["admin"], scope="platform:admin", sid="s_1")


@pytest.fixture
def tokens() -> Iterator[RevokedTokens]:
    mirror = RevokedTokens(ServiceCache("redis://127.0.0.1:1/0", "auth"))  # never connected
    mirror.live = True
    identity.set_role_source(mirror.role_now)
    yield mirror
    identity._role_now = None  # as in a process without the mirror


async def _refusal(tokens: RevokedTokens, payload: str = TOKEN) -> tuple[grpc.StatusCode, str]:
    try:
        GatewayCallerInterceptor(tokens, None).admit_token(payload)
    except ServiceError as exc:
        return exc.code, exc.reason
    return grpc.StatusCode.OK, ""


async def test_a_token_is_admitted_until_its_session_ends(tokens: RevokedTokens) -> None:
    assert await _refusal(tokens) == (grpc.StatusCode.OK, "")
    tokens.apply("auth:session-ended:s_other", b"1", 60_000)
    assert await _refusal(tokens) == (grpc.StatusCode.OK, "")
    tokens.apply("auth:session-ended:s_1", b"1", 60_000)
    assert await _refusal(tokens) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")
    tokens.apply("auth:session-ended:s_1", None, 0)  # the entry expired in Redis
    assert await _refusal(tokens) == (grpc.StatusCode.OK, "")


async def test_a_changed_role_overrides_the_tokens_and_an_ended_membership_refuses(
    tokens: RevokedTokens,
) -> None:
    caller = identity_from_metadata({HEADER_JWT_PAYLOAD: TOKEN})
    assert caller is not None and caller.roles == {Role.ADMIN} and caller.is_platform_admin
    assert caller.subject == "users/u_1" and caller.org == "o_1" and caller.key_id is None
    tokens.apply("auth:member:o_1:u_1", b"viewer", 60_000)
    demoted = identity_from_metadata({HEADER_JWT_PAYLOAD: TOKEN})
    assert demoted is not None and demoted.roles == {Role.VIEWER}
    tokens.apply("auth:member:o_1:u_1", b"-", 60_000)
    assert identity_from_metadata({HEADER_JWT_PAYLOAD: TOKEN}) is None
    assert await _refusal(tokens) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")


async def test_no_mirror_no_admission_and_bad_payloads_are_refused(tokens: RevokedTokens) -> None:
    tokens.live = False  # not subscribed: it may be missing revocations
    assert await _refusal(tokens) == (grpc.StatusCode.UNAVAILABLE, "REVOCATIONS_UNAVAILABLE")
    tokens.live = True
    for bad in ("%%%", _payload(sub="u_1"), _payload(org="o_1"), base64.b64encode(b"[1]").decode()):
        assert await _refusal(tokens, bad) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
        assert identity_from_metadata({HEADER_JWT_PAYLOAD: bad}) is None


def test_a_process_without_the_mirror_ignores_payloads() -> None:
    # The edge (HTTP) runs no JWT interceptor: Check admits its callers and removes the payload.
    assert identity_from_metadata({HEADER_JWT_PAYLOAD: TOKEN}) is None


def test_gateway_identity_headers_win_over_a_payload() -> None:
    # Check (API keys, the edge) sets the identity headers and removes the payload; if both came,
    # the headers Envoy set after authentication are the caller.
    caller = identity_from_metadata({"x-aimesh-org": "o_2", "x-aimesh-subject": "apiKeys/k",
                                     HEADER_JWT_PAYLOAD: TOKEN})
    assert caller is not None and caller.org == "o_2"
