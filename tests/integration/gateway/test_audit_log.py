"""The audit log through the real gateway: each security-relevant action, done once (one of them
retried with the same request_id), leaves exactly one entry with who, what, from where and the
request id; an organization cannot read another's log, and a viewer cannot read its own.
(Signing-key rotation is checked in tests/integration/auth/test_auth.py, on its own Auth
process: rotating twice in one session would outrun the gateway's cached JWKS.)"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter

import httpx

from tests.support.accounts import Account, add_member, sign_up
from tests.support.mesh import TestMesh

PASSWORD = "correct horse battery staple"


async def _events(http: httpx.AsyncClient, account: Account) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    token = ""
    while True:
        reply = await http.get(f"/v1/{account.org}/auditEvents", headers=account.bearer,
                               params={"pageSize": 7, "pageToken": token})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        events.extend(body.get("auditEvents", []))
        token = body.get("nextPageToken", "")
        if not token:
            return events


async def _ok(reply: httpx.Response) -> dict[str, object]:
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


async def test_each_action_is_recorded_once(mesh: TestMesh, http: httpx.AsyncClient) -> None:
    mesh.ensure("billing")
    owner = await sign_up(http, "Audited")
    wrong = await http.post("/v1/auth:login", json={"email": owner.email, "password": "nope-nope-nope"})
    assert wrong.status_code == 401

    request_id = str(uuid.uuid4())
    for _ in range(2):  # a retry of the same request is one action
        key = await _ok(await http.post(f"/v1/{owner.org}/apiKeys", headers=owner.bearer,
                                        json={"displayName": "ci"},
                                        params={"requestId": request_id}))
    await _ok(await http.post(f"/v1/{key['name']}:revoke", headers=owner.bearer, json={}))

    _, membership = await add_member(http, owner, "ROLE_MEMBER")
    await _ok(await http.patch(f"/v1/{membership}", headers=owner.bearer,
                               json={"role": "ROLE_ADMIN"}, params={"updateMask": "role"}))
    await _ok(await http.delete(f"/v1/{membership}", headers=owner.bearer))

    budget = await _ok(await http.post("/v1/budgets", headers=owner.bearer, json={
        "scope": "SCOPE_ORGANIZATION", "displayName": "cap", "monthlyTokenLimit": "1000"}))
    await _ok(await http.patch(f"/v1/{budget['name']}", headers=owner.bearer,
                               json={"displayName": "cap 2"}, params={"updateMask": "display_name"}))
    await _ok(await http.delete(f"/v1/{budget['name']}", headers=owner.bearer))

    await _ok(await http.post("/v1/subscription:changePlan", headers=owner.bearer,
                              json={"plan": "plans/pro"}))
    this_month = dt.datetime.now(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_month = (this_month - dt.timedelta(days=1)).replace(day=1)
    invoice = await _ok(await http.post("/v1/invoices:generate", headers=owner.bearer, json={
        "periodStartTime": last_month.isoformat().replace("+00:00", "Z")}))
    await _ok(await http.post(f"/v1/{invoice['name']}:finalize", headers=owner.bearer, json={}))
    await _ok(await http.post(f"/v1/{invoice['name']}:void", headers=owner.bearer,
                              json={"reason": "test"}))

    events = await _events(http, owner)
    counts = Counter(str(e["action"]) for e in events)
    assert counts == Counter({
        "auth.SignUp": 1, "auth.Login.failed": 1, "auth.CreateApiKey": 1, "auth.RevokeApiKey": 1,
        "auth.CreateMembership": 1, "auth.UpdateMembership": 1, "auth.DeleteMembership": 1,
        "usage.CreateBudget": 1, "usage.UpdateBudget": 1, "usage.DeleteBudget": 1,
        "billing.ChangePlan": 1, "billing.GenerateInvoice": 1, "billing.FinalizeInvoice": 1,
        "billing.VoidInvoice": 1,
    }), counts
    by_action = {str(e["action"]): e for e in events}
    created = by_action["auth.CreateApiKey"]
    assert created["actor"] == owner.user and created["resource"] == key["name"]
    assert created["peerAddress"] == "127.0.0.1"  # as the gateway saw this client
    assert created["requestId"]  # the gateway's x-request-id
    assert by_action["auth.Login.failed"]["actor"] == f"email:{owner.email}"
    assert by_action["auth.UpdateMembership"]["resource"] == membership
    assert by_action["usage.CreateBudget"]["resource"] == budget["name"]
    assert by_action["billing.VoidInvoice"]["resource"] == invoice["name"]
    assert by_action["billing.VoidInvoice"]["peerAddress"] == "127.0.0.1"
    # Newest first.
    assert [e["createTime"] for e in events] == sorted((e["createTime"] for e in events), reverse=True)



async def test_other_orgs_and_viewers_cannot_read_the_log(http: httpx.AsyncClient) -> None:
    owner = await sign_up(http, "Private")
    stranger = await sign_up(http, "Other")
    viewer, _ = await add_member(http, owner, "ROLE_VIEWER")
    foreign = await http.get(f"/v1/{owner.org}/auditEvents", headers=stranger.bearer)
    assert foreign.status_code == 404, foreign.text
    assert owner.email not in foreign.text
    refused = await http.get(f"/v1/{owner.org}/auditEvents", headers=viewer.bearer)
    assert refused.status_code == 403, refused.text
    # The stranger's own log holds only its own sign-up.
    assert [e["action"] for e in await _events(http, stranger)] == ["auth.SignUp"]
