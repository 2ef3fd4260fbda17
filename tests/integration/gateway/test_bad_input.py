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
