"""The role × method matrix (services/common/access.py), tried whole through the real gateway.

For every RPC a gateway caller can reach, over gRPC and (where it has an HTTP rule) over JSON:
the role just below the method's minimum is refused with PERMISSION_DENIED (HTTP 403 with a
JSON google.rpc.Status, reason ROLE_REQUIRED), and the minimum role gets past authorization
(whatever the service then says about the deliberately empty request). Platform-admin methods
are tried by an org owner (refused) and the platform admin (passes). Then the cases the
security campaign reported, with real resources.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor as descriptor_mod
from google.protobuf import descriptor_pool, duration_pb2, message_factory

from services.common import mesh_policy
from services.common.access import METHOD_ACCESS, Access
from services.common.channels import service_descriptors
from services.common.errors import error_info, status_from_rpc_error
from services.common.identity import Role
from tests.support.accounts import Account, add_member, login, sign_up
from tests.support.mesh import PLATFORM_ADMIN_EMAIL, TestMesh

ALL_SERVICES = ("auth", "usage", "billing", "conversation", "orchestrator", "knowledge", "speech")
DENIED_REASONS = {"ROLE_REQUIRED", "PLATFORM_ADMIN_REQUIRED"}
# A fresh organization every few methods keeps each under the free plan's rate limit.
METHODS_PER_ORG = 8
ROLE_ENUM = {Role.VIEWER: "ROLE_VIEWER", Role.MEMBER: "ROLE_MEMBER", Role.ADMIN: "ROLE_ADMIN"}
PASSWORD = "correct horse battery staple"


def _gateway_methods() -> list[str]:
    out = []
    for path, access in METHOD_ACCESS.items():
        if access.kind in ("public", "service"):
            continue
        callee = path[1:].split(".")[1]
        if mesh_policy.is_allowed(callee, mesh_policy.GATEWAY, path):
            out.append(path)
    return sorted(out)


GATEWAY_METHODS = _gateway_methods()


def _descriptor(path: str) -> descriptor_mod.MethodDescriptor:
    for service in ALL_SERVICES:
        service_descriptors(service)  # registers the module in the default pool
    service_name, method = path[1:].split("/")
    pool = descriptor_pool.Default()
    return pool.FindServiceByName(service_name).FindMethodByName(method)


@dataclass
class RoleSet:
    owner: Account
    by_role: dict[Role, Account]


class Orgs:
    """Hands out organizations with a user in each role, a new one every METHODS_PER_ORG."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.current: RoleSet | None = None
        self.used = 0
        self.platform_admin: Account | None = None

    async def next(self) -> RoleSet:
        if self.current is None or self.used >= METHODS_PER_ORG:
            owner = await sign_up(self.http, "Matrix")
            by_role = {Role.OWNER: owner}
            for role, enum in ROLE_ENUM.items():
                by_role[role], _ = await add_member(self.http, owner, enum)
            self.current, self.used = RoleSet(owner, by_role), 0
        self.used += 1
        return self.current

    async def admin(self) -> Account:
        if self.platform_admin is None:
            reply = await self.http.post("/v1/auth:signUp", json={
                "email": PLATFORM_ADMIN_EMAIL, "password": PASSWORD,
                "organizationDisplayName": "Ops"})
            if reply.status_code == 200:
                body = reply.json()
                self.platform_admin = Account(PLATFORM_ADMIN_EMAIL, PASSWORD, body["accessToken"],
                                              body["refreshToken"], body["organization"],
                                              body["user"])
            else:  # registered by an earlier test or run on this database
                reply = await self.http.post("/v1/auth:login", json={
                    "email": PLATFORM_ADMIN_EMAIL, "password": PASSWORD})
                assert reply.status_code == 200, reply.text
                self.platform_admin = await login(self.http, PLATFORM_ADMIN_EMAIL, PASSWORD,
                                                  reply.json()["organization"])
        return self.platform_admin


@pytest.fixture(scope="module")
async def full_gateway(mesh: TestMesh, gateway: str) -> str:
    mesh.ensure_triton()
    mesh.ensure(*ALL_SERVICES, timeout=240)
    return gateway


@pytest.fixture(scope="module")
async def orgs(full_gateway: str) -> AsyncIterator[Orgs]:
    async with httpx.AsyncClient(base_url=full_gateway, timeout=30) as client:
        yield Orgs(client)


# Requests that would do something irreversible for the allowed caller are made harmless
# (refused after authorization) instead of empty.
def _grpc_request(path: str, cls: Any) -> Any:
    if path.endswith("/RotateSigningKey"):
        return cls(previous_key_grace=duration_pb2.Duration(seconds=-1))
    return cls()


def _json_body(path: str) -> dict[str, Any]:
    if path.endswith("/RotateSigningKey"):
        return {"previousKeyGrace": "-1s"}
    return {}


async def _grpc_call(channel: grpc.aio.Channel, path: str, token: str) -> tuple[grpc.StatusCode, str]:
    method = _descriptor(path)
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    kw = {"request_serializer": request_cls.SerializeToString,
          "response_deserializer": response_cls.FromString}
    metadata = (("authorization", f"Bearer {token}"),)
    request = _grpc_request(path, request_cls)
    try:
        if method.client_streaming:
            async def one() -> AsyncIterator[Any]:
                yield request

            if method.server_streaming:
                call = channel.stream_stream(path, **kw)(one(), metadata=metadata, timeout=10)
                async for _ in call:
                    pass
            else:
                await channel.stream_unary(path, **kw)(one(), metadata=metadata, timeout=10)
        elif method.server_streaming:
            async for _ in channel.unary_stream(path, **kw)(request, metadata=metadata, timeout=10):
                pass
        else:
            await channel.unary_unary(path, **kw)(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        status = status_from_rpc_error(exc)
        info = error_info(status) if status is not None else None
        return exc.code(), info.reason if info else ""
    return grpc.StatusCode.OK, ""


def _http_rule(path: str) -> tuple[str, str, bool] | None:
    """(verb, URL template, has body) of the method's google.api.http rule."""
    options = _descriptor(path).GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return None
    rule = options.Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    return verb, getattr(rule, verb), bool(rule.body)


def _fill(template: str, org_id: str) -> str:
    """A concrete URL for a template: organizations/* is the caller's org, other ids made up."""
    out, rest = "", template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        var, _, rest = tail.partition("}")
        _, _, pattern = var.partition("=")
        segments = (pattern or "*").split("/")
        filled = []
        for i, seg in enumerate(segments):
            if seg in ("*", "**"):
                filled.append(org_id if i and segments[i - 1] == "organizations" else "x1")
            else:
                filled.append(seg)
        out += head + "/".join(filled)
    return out + rest


async def _json_call(http: httpx.AsyncClient, path: str, account: Account) -> tuple[int, str]:
    rule = _http_rule(path)
    assert rule is not None
    verb, template, has_body = rule
    reply = await http.request(verb.upper(), _fill(template, account.org_id),
                               headers=account.bearer,
                               json=_json_body(path) if has_body else None)
    reason = ""
    if reply.headers.get("content-type", "").startswith("application/json"):
        try:
            body = reply.json()
            for detail in body.get("details", []) if isinstance(body, dict) else []:
                reason = detail.get("reason", reason)
        except ValueError:
            pass
    return reply.status_code, reason


async def _callers(orgs: Orgs, access: Access) -> tuple[Account | None, Account]:
    """(the caller just below what the method needs, or None; the least caller it allows)."""
    roles = await orgs.next()
    if access.kind == "platform":
        return roles.owner, await orgs.admin()
    assert access.role is not None
    lesser = Role(access.role - 1) if access.role > Role.VIEWER else None
    return (roles.by_role[lesser] if lesser else None), roles.by_role[access.role]


@pytest.mark.parametrize("path", GATEWAY_METHODS)
async def test_lesser_role_refused_allowed_role_passes(
    path: str, orgs: Orgs, gateway_channel: grpc.aio.Channel
) -> None:
    access = METHOD_ACCESS[path]
    lesser, allowed = await _callers(orgs, access)
    unusable = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED}
    if lesser is not None:
        code, reason = await _grpc_call(gateway_channel, path, lesser.access_token)
        assert (code, reason in DENIED_REASONS) == (grpc.StatusCode.PERMISSION_DENIED, True), \
            f"{path}: a caller below {access} got {code.name} {reason}"
    code, reason = await _grpc_call(gateway_channel, path, allowed.access_token)
    assert reason not in DENIED_REASONS and code not in unusable, \
        f"{path}: the allowed caller got {code.name} {reason}"
    if _http_rule(path) is None:
        return  # client and bidi streams are gRPC only
    if lesser is not None:
        status, reason = await _json_call(orgs.http, path, lesser)
        assert (status, reason in DENIED_REASONS) == (403, True), \
            f"{path}: JSON caller below {access} got {status} {reason}"
    status, reason = await _json_call(orgs.http, path, allowed)
    assert reason not in DENIED_REASONS and status not in (501, 503), \
        f"{path}: allowed JSON caller got {status} {reason}"


def test_every_public_rpc_is_in_the_matrix_test() -> None:
    """Nothing a gateway caller can reach escapes the test above (public methods aside)."""
    reachable = {
        path for path in mesh_policy.load_methods()
        if path.startswith("/aimesh.")
        and mesh_policy.is_allowed(path[1:].split(".")[1], mesh_policy.GATEWAY, path)
        and METHOD_ACCESS[path].kind != "public"
    }
    assert reachable == set(GATEWAY_METHODS)


async def test_reported_viewer_cases_are_refused(orgs: Orgs) -> None:
    """The campaign's findings: a viewer deleted, undeleted and updated another member's
    conversation, created conversations, sent messages and synthesized speech."""
    http = orgs.http
    roles = await orgs.next()
    member, viewer = roles.by_role[Role.MEMBER], roles.by_role[Role.VIEWER]
    created = await http.post("/v1/conversations", headers=member.bearer,
                              json={"title": "member's"})
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    deleted = await http.post("/v1/conversations", headers=member.bearer, json={"title": "gone"})
    gone = deleted.json()["name"]
    assert (await http.delete(f"/v1/{gone}", headers=member.bearer)).status_code == 200

    attempts = {
        "delete": lambda: http.delete(f"/v1/{name}", headers=viewer.bearer),
        "undelete": lambda: http.post(f"/v1/{gone}:undelete", headers=viewer.bearer, json={}),
        "update": lambda: http.patch(f"/v1/{name}", headers=viewer.bearer,
                             json={"title": "viewer's"}, params={"updateMask": "title"}),
        "create": lambda: http.post("/v1/conversations", headers=viewer.bearer, json={"title": "v"}),
        "send": lambda: http.post(f"/v1/{name}:sendMessage", headers=viewer.bearer,
                          json={"content": "hello", "requestId": str(uuid.uuid4())}),
        "synthesize": lambda: http.post("/v1/speech:synthesize", headers=viewer.bearer,
                                json={"text": "hello"}),
    }
    for what, attempt in attempts.items():
        reply = await attempt()
        assert reply.status_code == 403, f"viewer {what}: {reply.status_code} {reply.text}"
        body = reply.json()
        assert body["code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert any(d.get("reason") == "ROLE_REQUIRED" for d in body["details"]), body

    # Nothing changed: the member's conversation keeps its title and the deleted one stays so.
    kept = await http.get(f"/v1/{name}", headers=viewer.bearer)
    assert kept.status_code == 200 and kept.json()["title"] == "member's"
    listed = await http.get("/v1/conversations", headers=member.bearer,
                            params={"showDeleted": "true"})
    states = {c["name"]: c.get("deleteTime") for c in listed.json().get("conversations", [])}
    assert states[gone] is not None and states[name] is None

