"""Bad input through the real gateway (issue 12 items 5–8): every case is a 4xx with a JSON
google.rpc.Status (HTTP) or INVALID_ARGUMENT (gRPC) naming what is wrong — never a 5xx, UNKNOWN,
INTERNAL, a hang or a Python class name."""

from __future__ import annotations

import grpc
import httpx
import pytest
from aimesh.auth.v1 import auth_pb2, auth_pb2_grpc
from aimesh.conversation.v1 import conversation_pb2

from services.common.errors import field_violations, status_from_rpc_error
from tests.support.accounts import Account
from tests.support.mesh import TestMesh

CLASS_NAME_MARKERS = ("<class", "Error:", "Exception", "Traceback")


def _json_status(reply: httpx.Response) -> dict:  # type: ignore[type-arg]
    assert reply.headers.get("content-type", "").startswith("application/json"), (
        reply.status_code, reply.headers, reply.text)
    body = reply.json()
    assert isinstance(body.get("code"), int) and body.get("message"), body
    assert not any(marker in body["message"] for marker in CLASS_NAME_MARKERS), body
    return body  # type: ignore[no-any-return]


def _fields(body: dict) -> set[str]:  # type: ignore[type-arg]
    return {v["field"] for d in body.get("details", []) for v in d.get("fieldViolations", [])}


@pytest.fixture(scope="module")
def conversations(mesh: TestMesh, gateway: str) -> None:
    mesh.ensure("conversation")


async def test_nul_in_path_body_and_query_is_invalid_argument_naming_the_field(
    http: httpx.AsyncClient, account: Account, conversations: None
) -> None:
    """Item 5: a NUL anywhere (path segment, body string, map key) never reaches PostgreSQL."""
    cases = [
        ("GET", f"/v1/{account.org}/apiKeys/%00", None, "name"),
        ("GET", "/v1/conversations/ab%00cd", None, "name"),
        ("POST", "/v1/conversations", {"title": "a\u0000b"}, "conversation.title"),
        ("POST", "/v1/conversations", {"title": "ok", "metadata": {"k": "v\u0000"}},
         "conversation.metadata['k']"),
        ("POST", f"/v1/{account.org}/apiKeys", {"displayName": "key\u0000"}, "api_key.display_name"),
        ("POST", "/v1/auth:login", {"email": "x\u0000@example.com", "password": "p"}, "email"),
    ]
    for method, path, body, field in cases:
        reply = await http.request(method, path, json=body, headers=account.bearer)
        assert reply.status_code == 400, (path, body, reply.status_code, reply.text)
        status = _json_status(reply)
        assert status["code"] == 3 and field in _fields(status), (path, status)


async def test_invalid_utf8_in_the_path_is_invalid_argument(
    http: httpx.AsyncClient, account: Account, conversations: None
) -> None:
    """Item 6: the transcoder forwards the raw bytes; the service names the field."""
    for path in ("/v1/conversations/%FF%FE", f"/v1/{account.org}/apiKeys/%C3%28"):
        reply = await http.get(path, headers=account.bearer)
        assert reply.status_code == 400, (path, reply.status_code, reply.text)
        status = _json_status(reply)
        assert status["code"] == 3 and _fields(status) == {"name"}, status


async def test_malformed_protobuf_over_grpc_is_invalid_argument_without_class_names(
    account: Account, gateway_channel: grpc.aio.Channel, conversations: None
) -> None:
    """Item 6: raw bytes that are no valid request message, sent with a gRPC client."""
    bearer = (("authorization", f"Bearer {account.access_token}"),)
    cases = {
        "/aimesh.auth.v1.AuthService/GetOrganization": b"\xff\xff\xff\xff\xff",  # truncated varint
        "/aimesh.conversation.v1.ConversationService/GetConversation": b"\x0a\x02\xff\xfe",
        "/aimesh.conversation.v1.ConversationService/CreateConversation": b"\x0a\x05\x12\x03\xc3\x28x",
        "/aimesh.auth.v1.AuthService/ListApiKeys": b"\x0a\x7f" + b"x" * 3,  # length past the end
    }
    for method, raw in cases.items():
        call = gateway_channel.unary_unary(method, request_serializer=None,
                                           response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(raw, metadata=bearer, timeout=5)
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, error)
        assert not any(m in (error.details() or "") for m in CLASS_NAME_MARKERS), error.details()
        status = status_from_rpc_error(error)
        assert status is not None and status.code == 3, method
    status = status_from_rpc_error(caught.value)
    assert status is not None


async def test_nul_over_grpc_names_nested_field(
    account: Account, gateway_channel: grpc.aio.Channel
) -> None:
    stub = auth_pb2_grpc.AuthServiceStub(gateway_channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(parent=account.org,
                                         api_key=auth_pb2.ApiKey(display_name="a\x00")),
            metadata=(("authorization", f"Bearer {account.access_token}"),), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_from_rpc_error(caught.value)
    assert status is not None and [f for f, _ in field_violations(status)] == ["api_key.display_name"]
    assert conversation_pb2  # the conversation messages are registered for the raw-bytes cases


# --- gRPC-Web framing (item 7) ----------------------------------------------------------------

def _frame(payload: bytes, flags: int = 0, announced: int | None = None) -> bytes:
    length = len(payload) if announced is None else announced
    return bytes([flags]) + length.to_bytes(4, "big") + payload


async def test_malformed_grpc_web_frames_are_refused_at_once(
    gateway: str, account: Account
) -> None:
    """A gRPC-Web request carries exactly one uncompressed (or declared-encoding) data frame.
    Each case is refused by the gateway with INVALID_ARGUMENT in gRPC-Web form, without waiting
    for a route timeout (the client's own 3 s timeout would fail the test)."""
    message = auth_pb2.GetOrganizationRequest(name=account.org).SerializeToString()
    valid = _frame(message)
    cases = {
        "truncated frame": _frame(message[:3], announced=len(message)),
        "truncated header": valid[:3],
        "compressed flag without grpc-encoding": _frame(message, flags=1),
        "client-sent trailer frame": valid + _frame(b"grpc-status: 0\r\n", flags=0x80),
        "trailer frame only": _frame(b"grpc-status: 0\r\n", flags=0x80),
        "two frames on a unary call": valid + valid,
        "empty body": b"",
    }
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", **account.bearer}
    path = "/aimesh.auth.v1.AuthService/GetOrganization"
    async with httpx.AsyncClient(base_url=gateway, timeout=3) as client:
        ok = await client.post(path, content=valid, headers=headers, timeout=15)
        assert ok.status_code == 200 and "grpc-status" not in ok.headers, ok.headers
        outcomes: dict[str, object] = {}
        for case, body in cases.items():
            try:
                reply = await client.post(path, content=body, headers=headers)
            except httpx.TimeoutException:
                outcomes[case] = "no answer within 3 s"
                continue
            outcomes[case] = (reply.status_code, reply.headers.get("content-type"),
                              reply.headers.get("grpc-status"), reply.headers.get("grpc-message"))
        expected_shape = {case: (200, "application/grpc-web+proto", "3") for case in cases}
        assert {case: o[:3] if isinstance(o, tuple) else o for case, o in outcomes.items()} == (
            expected_shape), outcomes
        assert all(isinstance(o, tuple) and o[3] for o in outcomes.values()), outcomes
        # The text (base64) variant is checked after the gateway decodes it.
        import base64

        text = {**headers, "content-type": "application/grpc-web-text"}
        reply = await client.post(path, content=base64.b64encode(valid + valid), headers=text)
        assert reply.headers.get("grpc-status") == "3", reply.headers
        reply = await client.post(path, content=base64.b64encode(valid), headers=text)
        assert reply.status_code == 200 and reply.headers.get("grpc-status") in (None, "0"), reply.headers


# --- item 8: absurd values, Envoy's own replies as JSON ----------------------------------------

async def test_invoice_for_absurd_periods_is_refused(
    mesh: TestMesh, http: httpx.AsyncClient, account: Account
) -> None:
    mesh.ensure("billing")
    for start in ("0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "2000-02-01T00:00:00Z",
                  "9999-12-01T00:00:00Z"):
        reply = await http.post("/v1/invoices:generate", headers=account.bearer,
                                json={"periodStartTime": start})
        assert reply.status_code == 400, (start, reply.status_code, reply.text)
        assert _fields(_json_status(reply)) == {"period_start_time"}, start


async def test_431_and_every_404_are_json_status(http: httpx.AsyncClient, account: Account) -> None:
    replies = {
        "headers too large": await http.get("/v1/users/me", headers={"x-filler": "a" * 70_000}),
        "unknown REST path": await http.get("/v1/no/such/thing"),
        "unknown custom verb": await http.post("/v1/conversations/c1:explode", json={}),
        "wrong HTTP method": await http.delete("/v1/auth:login"),
        "unknown gRPC path over HTTP": await http.post("/aimesh.auth.v1.AuthService/NoSuchMethod",
                                                       content=b"{}"),
        "internal RPC path": await http.post("/aimesh.usage.v1.UsageService/SetRateLimitPolicy",
                                             content=b"", headers={"content-type": "application/json"}),
        "root": await http.get("/"),
        "another org's resource": await http.get("/v1/organizations/o_0123456789abcdef",
                                                 headers=account.bearer),
        "another org's key": await http.get("/v1/organizations/o_0123456789abcdef/apiKeys/k1",
                                            headers=account.bearer),
        "HEAD unknown": await http.head("/v1/no/such/thing"),
        "healthz sibling": await http.get("/healthz/x"),
        "form content type": await http.post("/v1/nothing", content=b"a=b",
                                             headers={"content-type": "application/x-www-form-urlencoded"}),
    }
    shapes = {case: (r.status_code, r.headers.get("content-type")) for case, r in replies.items()}
    assert shapes["headers too large"][0] == 431, shapes
    assert all(status == 404 for case, (status, _) in shapes.items() if case != "headers too large"), shapes
    for case, reply in replies.items():
        if reply.request.method == "HEAD":
            continue  # no body by definition
        status = _json_status(reply)
        assert status["code"] == (3 if reply.status_code == 431 else 5), (case, status)


async def test_unknown_json_fields_are_400_and_output_only_fields_are_ignored(
    http: httpx.AsyncClient, account: Account, conversations: None
) -> None:
    """Item 8, the documented choice (docs/CONVENTIONS.md): a field the message does not define
    is refused at the gateway, naming it; an OUTPUT_ONLY field that exists is ignored (AIP-203)."""
    cases = [
        ("POST", "/v1/auth:login", {"email": "a@example.com", "password": "p", "rememberMe": True},
         "rememberMe"),
        ("POST", "/v1/conversations", {"title": "t", "colour": "red"}, "colour"),
        ("POST", f"/v1/{account.org}/apiKeys", {"displayName": "k", "scopes": [], "owner": "me"}, "owner"),
        ("PATCH", "/v1/conversations/c1?updateMask=title", {"title": "t", "nested": {"x": 1}}, "nested"),
    ]
    for method, path, body, field in cases:
        reply = await http.request(method, path, json=body, headers=account.bearer)
        assert reply.status_code == 400, (path, body, reply.status_code, reply.text)
        status = _json_status(reply)
        assert status["code"] == 3 and _fields(status) == {field}, (path, status)
        assert field in status["message"]

    # Known fields, in either JSON or proto spelling, and nested maps still pass.
    created = await http.post("/v1/conversations", headers=account.bearer, json={
        "title": "fine", "metadata": {"any_key": "v"}, "system_prompt": "be brief",
        # OUTPUT_ONLY: accepted and ignored, never stored as sent.
        "createTime": "2001-01-01T00:00:00Z", "messageCount": 99})
    assert created.status_code == 200, created.text
    conversation = created.json()
    assert conversation["title"] == "fine" and conversation["metadata"] == {"any_key": "v"}
    assert not conversation["createTime"].startswith("2001") and conversation.get("messageCount", 0) == 0
