"""Accounts made through the gateway's public JSON API (sign-up, API keys), for tests of
every area that goes through Envoy."""

from __future__ import annotations

import asyncio
import base64
import uuid
from dataclasses import dataclass

import httpx
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

from tests.support.mesh import TestMesh


@dataclass
class Account:
    email: str
    password: str
    access_token: str
    refresh_token: str
    org: str  # "organizations/<id>"
    user: str  # "users/<id>"

    @property
    def org_id(self) -> str:
        return self.org.split("/", 1)[1]

    @property
    def bearer(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.access_token}"}


async def sign_up(http: httpx.AsyncClient, org_name: str = "Acme") -> Account:
    email = f"user-{uuid.uuid4().hex[:12]}@example.com"
    password = "correct horse battery staple"
    reply = await http.post("/v1/auth:signUp", json={
        "email": email, "password": password, "displayName": "Test User",
        "organizationDisplayName": org_name,
    })
    assert reply.status_code == 200, reply.text
    body = reply.json()
    return Account(email, password, body["accessToken"], body["refreshToken"],
                   body["organization"], body["user"])


async def create_key(http: httpx.AsyncClient, account: Account, **fields: object) -> dict[str, str]:
    reply = await http.post(f"/v1/{account.org}/apiKeys", headers=account.bearer,
                            json={"displayName": "test", **fields})
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


async def login(http: httpx.AsyncClient, email: str, password: str, org: str) -> Account:
    reply = await http.post("/v1/auth:login", json={
        "email": email, "password": password, "organization": org})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    return Account(email, password, body["accessToken"], body["refreshToken"],
                   body["organization"], body["user"])


async def add_member(http: httpx.AsyncClient, owner: Account, role: str) -> tuple[Account, str]:
    """A new user who joins `owner`'s organization with `role` ("ROLE_VIEWER", ...), signed in
    there; and the membership's resource name."""
    someone = await sign_up(http, "Elsewhere")
    reply = await http.post(f"/v1/{owner.org}/memberships", headers=owner.bearer,
                            json={"email": someone.email, "role": role})
    assert reply.status_code == 200, reply.text
    return await login(http, someone.email, someone.password, owner.org), reply.json()["name"]


async def upload_document(http: httpx.AsyncClient, account: Account, display_name: str,
                          text: str) -> str:
    """A text document uploaded through the gateway and ingested: its name, once READY."""
    reply = await http.post("/v1/documents", headers=account.bearer, json={
        "document": {"displayName": display_name, "mimeType": "text/plain"},
        "content": base64.b64encode(text.encode()).decode()})
    assert reply.status_code == 200, reply.text
    name = str(reply.json()["name"])
    # Polled ever more slowly (to 2 s), so a slow ingestion on a loaded machine does not spend
    # the new organization's per-minute request quota on polls.
    delay, waited = 0.2, 0.0
    while True:
        got = await http.get(f"/v1/{name}", headers=account.bearer)
        assert got.status_code == 200, got.text
        state = got.json()["state"]
        if state != "STATE_PROCESSING" or waited > 180:
            break
        await asyncio.sleep(delay)
        waited += delay
        delay = min(delay * 1.5, 2.0)
    assert state == "STATE_READY", state
    return name


async def set_rate_limits(mesh: TestMesh, account: Account, org_rpm: int, key_rpm: int) -> None:
    """The organization's per-minute limits (its own and each API key's), set as Billing sets
    them on a plan change (Usage is called directly, not through the gateway)."""
    usage = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="billing"))
    await usage.SetRateLimitPolicy(usage_pb2.SetRateLimitPolicyRequest(
        policy=usage_pb2.RateLimitPolicy(
            name=f"{account.org}/rateLimitPolicy", organization_requests_per_minute=org_rpm,
            api_key_requests_per_minute=key_rpm, plan="test")), timeout=5)
