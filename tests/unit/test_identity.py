"""Identity from the gateway's headers (services/common/identity.py)."""

from __future__ import annotations

import pytest

from services.common.errors import ServiceError
from services.common.identity import (
    PLATFORM_ADMIN_SCOPE,
    Role,
    identity_from_metadata,
    require_identity,
)


def test_bare_and_resource_name_org_are_the_same_org() -> None:
    bare = identity_from_metadata([("x-aimesh-org", "o_1"), ("x-aimesh-subject", "users/u")])
    named = identity_from_metadata(
        [("x-aimesh-org", "organizations/o_1"), ("x-aimesh-subject", "users/u")]
    )
    assert bare is not None and named is not None and bare.org == named.org == "o_1"


def test_roles_scopes_and_key() -> None:
    identity = identity_from_metadata(
        {
            "x-aimesh-org": "o_1",
            "x-aimesh-subject": "apiKeys/key_1",
            "x-aimesh-roles": "viewer, ADMIN, nonsense",
            "x-aimesh-key-id": "key_1",
            "x-aimesh-scopes": f"chat,{PLATFORM_ADMIN_SCOPE}",
        }
    )
    assert identity is not None
    assert identity.roles == frozenset({Role.VIEWER, Role.ADMIN})
    assert identity.has_role(Role.MEMBER) and not identity.has_role(Role.OWNER)
    assert identity.key_id == "key_1" and identity.is_platform_admin
    with pytest.raises(ServiceError) as caught:
        identity.require_role(Role.OWNER, "deleting the organization")
    assert caught.value.reason == "ROLE_REQUIRED"


def test_missing_identity_is_unauthenticated() -> None:
    assert identity_from_metadata([("x-aimesh-org", "o_1")]) is None
    with pytest.raises(ServiceError) as caught:
        require_identity([])
    assert caught.value.code.name == "UNAUTHENTICATED"
