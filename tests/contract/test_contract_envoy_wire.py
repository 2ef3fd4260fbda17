"""Our Envoy API subsets must stay wire-compatible with Envoy's real protos.

The table below was taken from envoyproxy/envoy api/ (external_auth.proto,
attribute_context.proto, rls.proto, extensions/common/ratelimit/v3/ratelimit.proto,
config/core/v3/base.proto, type/v3/http_status.proto): full message name -> field -> (number,
type or message type). A field we keep must have exactly Envoy's number and type.
"""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2

D = descriptor_pb2.FieldDescriptorProto
STRING, BYTES, BOOL = D.TYPE_STRING, D.TYPE_BYTES, D.TYPE_BOOL
INT64, UINT32, ENUM = D.TYPE_INT64, D.TYPE_UINT32, D.TYPE_ENUM

# (number, scalar type) or (number, ".full.MessageOrEnumName").
Field = tuple[int, int | str]

ENVOY_FIELDS: dict[str, dict[str, Field]] = {
    "envoy.service.auth.v3.CheckRequest": {
        "attributes": (1, ".envoy.service.auth.v3.AttributeContext"),
    },
    "envoy.service.auth.v3.AttributeContext": {
        "source": (1, ".envoy.service.auth.v3.AttributeContext.Peer"),
        "destination": (2, ".envoy.service.auth.v3.AttributeContext.Peer"),
        "request": (4, ".envoy.service.auth.v3.AttributeContext.Request"),
        "context_extensions": (
            10,
            ".envoy.service.auth.v3.AttributeContext.ContextExtensionsEntry",
        ),
    },
    "envoy.service.auth.v3.AttributeContext.Peer": {
        "service": (2, STRING),
        "principal": (4, STRING),
    },
    "envoy.service.auth.v3.AttributeContext.Request": {
        "time": (1, ".google.protobuf.Timestamp"),
        "http": (2, ".envoy.service.auth.v3.AttributeContext.HttpRequest"),
    },
    "envoy.service.auth.v3.AttributeContext.HttpRequest": {
        "id": (1, STRING),
        "method": (2, STRING),
        "headers": (3, ".envoy.service.auth.v3.AttributeContext.HttpRequest.HeadersEntry"),
        "path": (4, STRING),
        "host": (5, STRING),
        "scheme": (6, STRING),
        "size": (9, INT64),
        "protocol": (10, STRING),
        "body": (11, STRING),
        "raw_body": (12, BYTES),
    },
    "envoy.service.auth.v3.CheckResponse": {
        "status": (1, ".google.rpc.Status"),
        "denied_response": (2, ".envoy.service.auth.v3.DeniedHttpResponse"),
        "ok_response": (3, ".envoy.service.auth.v3.OkHttpResponse"),
    },
    "envoy.service.auth.v3.DeniedHttpResponse": {
        "status": (1, ".envoy.type.v3.HttpStatus"),
        "headers": (2, ".envoy.config.core.v3.HeaderValueOption"),
        "body": (3, STRING),
    },
    "envoy.service.auth.v3.OkHttpResponse": {
        "headers": (2, ".envoy.config.core.v3.HeaderValueOption"),
        "headers_to_remove": (5, STRING),
        "response_headers_to_add": (6, ".envoy.config.core.v3.HeaderValueOption"),
    },
    "envoy.config.core.v3.HeaderValue": {
        "key": (1, STRING),
        "value": (2, STRING),
        "raw_value": (3, BYTES),
    },
    "envoy.config.core.v3.HeaderValueOption": {
        "header": (1, ".envoy.config.core.v3.HeaderValue"),
        "append": (2, ".google.protobuf.BoolValue"),
        "append_action": (3, ".envoy.config.core.v3.HeaderValueOption.HeaderAppendAction"),
        "keep_empty_value": (4, BOOL),
    },
    "envoy.type.v3.HttpStatus": {
        "code": (1, ".envoy.type.v3.StatusCode"),
    },
    "envoy.service.ratelimit.v3.RateLimitRequest": {
        "domain": (1, STRING),
        "descriptors": (2, ".envoy.extensions.common.ratelimit.v3.RateLimitDescriptor"),
        "hits_addend": (3, UINT32),
    },
    "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor": {
        "entries": (1, ".envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry"),
    },
    "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry": {
        "key": (1, STRING),
        "value": (2, STRING),
    },
    "envoy.service.ratelimit.v3.RateLimitResponse": {
        "overall_code": (1, ".envoy.service.ratelimit.v3.RateLimitResponse.Code"),
        "statuses": (2, ".envoy.service.ratelimit.v3.RateLimitResponse.DescriptorStatus"),
        "response_headers_to_add": (3, ".envoy.config.core.v3.HeaderValue"),
        "request_headers_to_add": (4, ".envoy.config.core.v3.HeaderValue"),
    },
    "envoy.service.ratelimit.v3.RateLimitResponse.DescriptorStatus": {
        "code": (1, ".envoy.service.ratelimit.v3.RateLimitResponse.Code"),
        "current_limit": (2, ".envoy.service.ratelimit.v3.RateLimitResponse.RateLimit"),
        "limit_remaining": (3, UINT32),
        "duration_until_reset": (4, ".google.protobuf.Duration"),
    },
    "envoy.service.ratelimit.v3.RateLimitResponse.RateLimit": {
        "name": (3, STRING),
        "requests_per_unit": (1, UINT32),
        "unit": (2, ".envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit"),
    },
}

# Enum values we rely on: full enum name -> value name -> number.
ENVOY_ENUMS: dict[str, dict[str, int]] = {
    "envoy.service.ratelimit.v3.RateLimitResponse.Code": {"UNKNOWN": 0, "OK": 1, "OVER_LIMIT": 2},
    "envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit": {
        "UNKNOWN": 0,
        "SECOND": 1,
        "MINUTE": 2,
        "HOUR": 3,
        "DAY": 4,
        "MONTH": 5,
        "YEAR": 6,
    },
    "envoy.type.v3.StatusCode": {
        "Empty": 0,
        "OK": 200,
        "BadRequest": 400,
        "Unauthorized": 401,
        "Forbidden": 403,
        "NotFound": 404,
        "TooManyRequests": 429,
        "InternalServerError": 500,
        "ServiceUnavailable": 503,
    },
    "envoy.config.core.v3.HeaderValueOption.HeaderAppendAction": {
        "APPEND_IF_EXISTS_OR_ADD": 0,
        "ADD_IF_ABSENT": 1,
        "OVERWRITE_IF_EXISTS_OR_ADD": 2,
        "OVERWRITE_IF_EXISTS": 3,
    },
}

# Full method names Envoy calls (gRPC path /<service>/<method>).
ENVOY_METHODS = {
    "envoy.service.auth.v3.Authorization": ("Check", "CheckRequest", "CheckResponse"),
    "envoy.service.ratelimit.v3.RateLimitService": (
        "ShouldRateLimit",
        "RateLimitRequest",
        "RateLimitResponse",
    ),
}


def _enums(fds: descriptor_pb2.FileDescriptorSet) -> dict[str, descriptor_pb2.EnumDescriptorProto]:
    out: dict[str, descriptor_pb2.EnumDescriptorProto] = {}

    def walk(prefix: str, m: descriptor_pb2.DescriptorProto) -> None:
        for e in m.enum_type:
            out[f"{prefix}.{m.name}.{e.name}"] = e
        for n in m.nested_type:
            walk(f"{prefix}.{m.name}", n)

    for f in fds.file:
        for e in f.enum_type:
            out[f"{f.package}.{e.name}"] = e
        for m in f.message_type:
            walk(f.package, m)
    return out


@pytest.mark.parametrize("message", sorted(ENVOY_FIELDS))
def test_envoy_field_numbers(
    message: str, messages: dict[str, descriptor_pb2.DescriptorProto]
) -> None:
    assert message in messages, f"{message} missing from the descriptor set"
    ours = {f.name: f for f in messages[message].field}
    assert set(ours) == set(ENVOY_FIELDS[message]), (
        f"{message}: fields differ from the checked table (add new fields to the table after "
        "checking Envoy's number)"
    )
    for name, (number, typ) in ENVOY_FIELDS[message].items():
        f = ours[name]
        assert f.number == number, f"{message}.{name}: number {f.number}, Envoy uses {number}"
        actual: int | str = f.type_name if isinstance(typ, str) else f.type
        assert actual == typ, f"{message}.{name}: type {actual!r}, Envoy uses {typ!r}"


@pytest.mark.parametrize("enum", sorted(ENVOY_ENUMS))
def test_envoy_enum_values(enum: str, fds: descriptor_pb2.FileDescriptorSet) -> None:
    enums = _enums(fds)
    assert enum in enums, f"{enum} missing"
    ours = {v.name: v.number for v in enums[enum].value}
    for name, number in ENVOY_ENUMS[enum].items():
        assert ours.get(name) == number, f"{enum}.{name}: {ours.get(name)}, Envoy uses {number}"


def test_envoy_methods(fds: descriptor_pb2.FileDescriptorSet) -> None:
    services = {f"{f.package}.{s.name}": (f.package, s) for f in fds.file for s in f.service}
    for full, (method, req, resp) in ENVOY_METHODS.items():
        assert full in services, full
        pkg, svc = services[full]
        (m,) = [x for x in svc.method if x.name == method]
        assert m.input_type == f".{pkg}.{req}" and m.output_type == f".{pkg}.{resp}"
        assert not m.client_streaming and not m.server_streaming
