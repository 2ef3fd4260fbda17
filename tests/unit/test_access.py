"""The role × method matrix covers every RPC exactly, and its refusal rules."""

from __future__ import annotations

from services.common import mesh_policy
from services.common.access import METHOD_ACCESS, PLATFORM, PUBLIC, SERVICE, refusal
from services.common.identity import PLATFORM_ADMIN_SCOPE, Identity, Role


def test_matrix_lists_every_rpc_of_every_service_exactly() -> None:
    methods = {p for p in mesh_policy.load_methods() if p.startswith(("/aimesh.", "/envoy."))}
    assert methods, "gen/descriptor.binpb is missing"
    assert set(METHOD_ACCESS) == methods


def test_service_only_methods_are_unreachable_from_the_gateway() -> None:
    for path, access in METHOD_ACCESS.items():
        callee = path[1:].split(".")[1] if path.startswith("/aimesh.") else None
        if access is SERVICE and callee:
            assert not mesh_policy.is_allowed(callee, mesh_policy.GATEWAY, path), path


def _who(role: Role, *scopes: str) -> Identity:
    return Identity(org="o_1", subject="users/u_1", roles=frozenset({role}),
                    scopes=frozenset(scopes))


def test_refusals() -> None:
    send = METHOD_ACCESS["/aimesh.conversation.v1.ConversationService/SendMessage"]
    assert refusal(send, _who(Role.VIEWER), "m") == "requires the member role or higher"
    assert refusal(send, _who(Role.MEMBER), "m") is None
    assert refusal(send, _who(Role.OWNER), "m") is None
    assert refusal(PLATFORM, _who(Role.OWNER), "m") == "requires a platform admin"
    assert refusal(PLATFORM, _who(Role.VIEWER, PLATFORM_ADMIN_SCOPE), "m") is None
    void = METHOD_ACCESS["/aimesh.billing.v1.BillingService/VoidInvoice"]
    assert refusal(void, _who(Role.ADMIN), "m") is not None
    assert refusal(void, _who(Role.VIEWER, PLATFORM_ADMIN_SCOPE), "m") is None
    assert refusal(PUBLIC, _who(Role.VIEWER), "m") is None
    assert refusal(None, _who(Role.OWNER), "/x.Y/Z") is not None  # not in the matrix: refused
    # No identity at all: the servicer answers (UNAUTHENTICATED where one is needed).
    assert refusal(send, None, "m") is None
