"""services/common/request_checks: NUL characters and undecodable bytes are INVALID_ARGUMENT
naming the field, found at any depth (issue 12 items 5 and 6)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from aimesh.conversation.v1 import conversation_pb2
from google.protobuf import struct_pb2

from services.common.errors import ServiceError
from services.common.request_checks import (
    Undecodable,
    check_request,
    checked_deserializer,
    is_idempotent_read,
    method_descriptor,
    nul_fields,
)

GET = "/aimesh.conversation.v1.ConversationService/GetConversation"
CREATE = "/aimesh.conversation.v1.ConversationService/CreateConversation"


def _violated_fields(request: object) -> list[str]:
    with pytest.raises(ServiceError) as caught:
        check_request(request)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return [field for field, _ in caught.value.violations]


def test_nul_in_top_level_nested_map_and_struct_fields_is_named() -> None:
    assert _violated_fields(conversation_pb2.GetConversationRequest(name="conversations/a\x00b")) == ["name"]
    request = conversation_pb2.CreateConversationRequest(
        conversation=conversation_pb2.Conversation(title="t\x00", metadata={"k\x00": "v", "ok": "\x00"}),
        request_id="fine",
    )
    assert sorted(_violated_fields(request)) == sorted(
        ["conversation.title", "conversation.metadata['k\\x00']", "conversation.metadata['ok']"])
    nested = struct_pb2.Struct()
    nested.update({"outer": {"inner": ["x", "y\x00"]}})
    assert nul_fields(nested) == ["fields['outer'].struct_value.fields['inner'].list_value.values[1].string_value"]


def test_clean_requests_pass_unchanged() -> None:
    request = conversation_pb2.CreateConversationRequest(
        conversation=conversation_pb2.Conversation(title="héllo ✓", metadata={"a": "b"}))
    assert check_request(request) is request


def test_undecodable_bytes_name_the_invalid_utf8_field_without_class_names() -> None:
    described = method_descriptor(GET)
    assert described is not None
    deserialize = checked_deserializer(conversation_pb2.GetConversationRequest.FromString,
                                       described.input_type)
    assert deserialize is not None
    # What the gateway forwards for /v1/conversations/%FF%FE: field 1 holding invalid UTF-8.
    bad = b"\x0a\x10conversations/\xff\xfe"
    result = deserialize(bad)
    assert isinstance(result, Undecodable)
    assert _violated_fields(result) == ["name"]
    assert "class" not in result.error.message and "Error" not in result.error.message

    nested = checked_deserializer(conversation_pb2.CreateConversationRequest.FromString,
                                  method_descriptor(CREATE).input_type)  # type: ignore[union-attr]
    title = b"\x12\x03\xc3\x28x"  # Conversation.title = invalid 2-byte sequence
    result = nested(b"\x0a" + bytes([len(title)]) + title)  # type: ignore[misc]
    assert isinstance(result, Undecodable) and _violated_fields(result) == ["conversation.title"]

    garbage = deserialize(b"\xff\xff\xff\xff")
    assert isinstance(garbage, Undecodable)
    assert garbage.error.reason == "MALFORMED_REQUEST"
    assert "aimesh.conversation.v1.GetConversationRequest" in garbage.error.message
    assert deserialize(conversation_pb2.GetConversationRequest(name="x").SerializeToString()).name == "x"


def test_idempotency_comes_from_the_proto() -> None:
    assert is_idempotent_read(method_descriptor(GET))
    assert not is_idempotent_read(method_descriptor(CREATE))
    assert method_descriptor("/no.such.Service/Method") is None


def test_out_of_range_timestamps_and_durations_are_named() -> None:
    from aimesh.billing.v1 import billing_pb2
    from google.protobuf import duration_pb2, timestamp_pb2

    request = billing_pb2.GenerateInvoiceRequest(
        period_start_time=timestamp_pb2.Timestamp(seconds=-10**15))
    assert _violated_fields(request) == ["period_start_time"]
    fine = billing_pb2.GenerateInvoiceRequest(period_start_time=timestamp_pb2.Timestamp(seconds=0))
    assert check_request(fine) is fine
    with pytest.raises(ServiceError):
        check_request(duration_pb2.Duration(seconds=1, nanos=-5))


def test_errors_quoting_huge_values_stay_small_enough_for_headers() -> None:
    from services.common.errors import invalid_argument

    huge = "x" * 70_000
    error = invalid_argument(f"language_code {huge!r} is not a tag", [("language_code", huge)])
    assert len(error.message) <= 1024
    assert len(error.to_status().SerializeToString()) < 4096


class _Context:
    """The two ServicerContext calls the error interceptor makes on a unary call."""

    def time_remaining(self) -> None:
        return None

    async def abort(self, code: grpc.StatusCode, message: str, **_: object) -> None:
        raise ServiceError(code, message)


async def test_envoy_check_skips_the_field_walk_but_aimesh_methods_do_not() -> None:
    """Envoy's CheckRequest (sent only by the gateway) skips the NUL walk; a client's request to
    an aimesh method with the same NUL is still refused, and undecodable bytes still are."""
    from envoy_api.service.auth.v3 import external_auth_pb2

    from services.common.server import ErrorInterceptor

    async def echo(request: object, context: object) -> object:
        return request

    def served(method: str, request_type: Any) -> grpc.RpcMethodHandler:
        handler = grpc.unary_unary_rpc_method_handler(
            echo, request_deserializer=request_type.FromString)
        return ErrorInterceptor().wrap(handler, method)

    check = served("/envoy.service.auth.v3.Authorization/Check", external_auth_pb2.CheckRequest)
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.headers["x-odd"] = "a\x00b"
    assert await check.unary_unary(request, _Context()) is request
    broken = check.request_deserializer(b"\xff\xff\xff")
    with pytest.raises(ServiceError) as caught:
        await check.unary_unary(broken, _Context())
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT

    create = served(CREATE, conversation_pb2.CreateConversationRequest)
    nul = conversation_pb2.CreateConversationRequest()
    nul.conversation.title = "a\x00b"
    with pytest.raises(ServiceError) as caught:
        await create.unary_unary(nul, _Context())
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
