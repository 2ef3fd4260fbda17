"""Issue 12 item 8's paging cases as clients send them: JSON/HTTP through the real Envoy gateway.
`pageSize=-1` on ListConversations and ListMessages and a bit-flipped ListApiKeys `pageToken`
are 400 with a JSON google.rpc.Status naming the field; a page token survives the query string.
(tests/integration/test_pagination.py covers every List method over gRPC.)"""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.support.accounts import Account, create_key
from tests.support.mesh import TestMesh


@pytest.fixture(scope="module")
def conversations(mesh: TestMesh, gateway: str) -> None:
    mesh.ensure("conversation")


def _violations(reply: httpx.Response) -> dict[str, str]:
    assert reply.status_code == 400, (reply.status_code, reply.text)
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert body["code"] == 3, body  # INVALID_ARGUMENT
    return {v["field"]: v["description"] for d in body.get("details", []) for v in d.get("fieldViolations", [])}


def _flip_first_byte(token: str) -> str:
    body, mac = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[0] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=") + "." + mac


async def test_negative_page_size_on_conversations_and_messages_is_400(
    http: httpx.AsyncClient, account: Account, conversations: None
) -> None:
    reply = await http.get("/v1/conversations", params={"pageSize": -1}, headers=account.bearer)
    assert "page_size" in _violations(reply)
    created = await http.post("/v1/conversations", json={"title": "paging"}, headers=account.bearer)
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    reply = await http.get(f"/v1/{name}/messages", params={"pageSize": -1}, headers=account.bearer)
    assert "page_size" in _violations(reply)
    ok = await http.get(f"/v1/{name}/messages", params={"pageSize": 5000}, headers=account.bearer)
    assert ok.status_code == 200, ok.text  # above the maximum: coerced, not refused


async def test_bit_flipped_api_key_page_token_is_400(http: httpx.AsyncClient, account: Account) -> None:
    for i in range(3):
        await create_key(http, account, displayName=f"pager {i}")
    path = f"/v1/{account.org}/apiKeys"
    first = await http.get(path, params={"pageSize": 1}, headers=account.bearer)
    assert first.status_code == 200, first.text
    token = first.json()["nextPageToken"]
    seen = [k["name"] for k in first.json()["apiKeys"]]
    while token:  # the token round-trips through the query string unchanged
        page = await http.get(path, params={"pageSize": 1, "pageToken": token}, headers=account.bearer)
        assert page.status_code == 200, page.text
        seen += [k["name"] for k in page.json()["apiKeys"]]
        token = page.json().get("nextPageToken", "")
    assert len(seen) == len(set(seen)) == 3
    tampered = _flip_first_byte(first.json()["nextPageToken"])
    reply = await http.get(path, params={"pageSize": 1, "pageToken": tampered}, headers=account.bearer)
    assert "page_token" in _violations(reply)
