"""Contract rules from docs/CONVENTIONS.md, checked on gen/descriptor.binpb (no network)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.api import annotations_pb2, field_behavior_pb2, resource_pb2
from google.protobuf import descriptor_pb2 as dpb
from google.protobuf import json_format

Methods = list[tuple[str, dpb.MethodDescriptorProto]]

EXPECTED_SERVICES = {
    "aimesh.auth.v1.AuthService",
    "aimesh.conversation.v1.ConversationService",
    "aimesh.orchestrator.v1.OrchestratorService",
    "aimesh.knowledge.v1.KnowledgeService",
    "aimesh.speech.v1.SpeechService",
    "aimesh.billing.v1.BillingService",
    "aimesh.usage.v1.UsageService",
    "envoy.service.auth.v3.Authorization",
    "envoy.service.ratelimit.v3.RateLimitService",
}

# Packages this contract set owns outright; stricter checks (field_behavior on every field)
# apply to them.
STRICT_PACKAGES = ("aimesh.auth.v1", "aimesh.usage.v1", "aimesh.billing.v1")

SAFE_LEVELS = (
    dpb.MethodOptions.NO_SIDE_EFFECTS,
    dpb.MethodOptions.IDEMPOTENT,
)

# Paths in SourceCodeInfo (field numbers of the descriptor protos).
FILE_MESSAGE_TYPE, FILE_ENUM_TYPE, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED_TYPE, MESSAGE_ENUM_TYPE = 2, 3, 4
ENUM_VALUE, SERVICE_METHOD = 2, 2


def _is_client_streaming(m: dpb.MethodDescriptorProto) -> bool:
    return m.client_streaming


def _http_rule_pattern(m: dpb.MethodDescriptorProto) -> str:
    rule = m.options.Extensions[annotations_pb2.http]
    kind = rule.WhichOneof("pattern")
    if kind is None:
        return ""
    if kind == "custom":
        return rule.custom.path
    return str(getattr(rule, kind))


def test_all_services_present(fds: dpb.FileDescriptorSet) -> None:
    found = {f"{f.package}.{s.name}" for f in fds.file for s in f.service}
    missing = EXPECTED_SERVICES - found
    assert not missing, f"services missing from gen/descriptor.binpb: {sorted(missing)}"


def test_unary_and_server_streaming_rpcs_have_http_rules(aimesh_methods: Methods) -> None:
    bad = [
        f"{svc}/{m.name}"
        for svc, m in aimesh_methods
        if not _is_client_streaming(m) and not m.options.HasExtension(annotations_pb2.http)
    ]
    assert not bad, f"unary/server-streaming RPCs without google.api.http: {bad}"


def test_http_rules_are_under_v1(aimesh_methods: Methods) -> None:
    bad = [
        f"{svc}/{m.name}: {_http_rule_pattern(m)!r}"
        for svc, m in aimesh_methods
        if m.options.HasExtension(annotations_pb2.http)
        and not _http_rule_pattern(m).startswith("/v1/")
    ]
    assert not bad, f"google.api.http rules must live under /v1/: {bad}"


def test_client_and_bidi_streams_have_no_http_rule(aimesh_methods: Methods) -> None:
    bad = [
        f"{svc}/{m.name}"
        for svc, m in aimesh_methods
        if _is_client_streaming(m) and m.options.HasExtension(annotations_pb2.http)
    ]
    assert not bad, f"client/bidi-streaming RPCs must not have google.api.http: {bad}"


def test_unsafe_rpcs_take_request_id(
    aimesh_methods: Methods, messages: dict[str, dpb.DescriptorProto]
) -> None:
    bad: list[str] = []
    for svc, m in aimesh_methods:
        if _is_client_streaming(m) or m.options.idempotency_level in SAFE_LEVELS:
            continue
        req = messages[m.input_type.lstrip(".")]
        fields = {f.name: f for f in req.field}
        f = fields.get("request_id")
        if (
            f is None
            or f.type != dpb.FieldDescriptorProto.TYPE_STRING
            or f.label == f.LABEL_REPEATED
        ):
            bad.append(f"{svc}/{m.name} ({req.name})")
    assert not bad, (
        "RPCs that are neither NO_SIDE_EFFECTS nor IDEMPOTENT need `string request_id` in "
        f"their request: {bad}"
    )


def _declarations(f: dpb.FileDescriptorProto) -> Iterator[tuple[tuple[int, ...], str]]:
    """(source path, description) of every service, RPC, message, field, enum and value."""

    def enum(
        path: tuple[int, ...], name: str, e: dpb.EnumDescriptorProto
    ) -> Iterator[tuple[tuple[int, ...], str]]:
        yield path, f"enum {name}"
        for i, v in enumerate(e.value):
            yield (*path, ENUM_VALUE, i), f"enum value {name}.{v.name}"

    def message(
        path: tuple[int, ...], name: str, m: dpb.DescriptorProto
    ) -> Iterator[tuple[tuple[int, ...], str]]:
        if m.options.map_entry:  # synthetic map<K, V> entry: nothing to document
            return
        yield path, f"message {name}"
        for i, fld in enumerate(m.field):
            yield (*path, MESSAGE_FIELD, i), f"field {name}.{fld.name}"
        for i, n in enumerate(m.nested_type):
            yield from message((*path, MESSAGE_NESTED_TYPE, i), f"{name}.{n.name}", n)
        for i, e in enumerate(m.enum_type):
            yield from enum((*path, MESSAGE_ENUM_TYPE, i), f"{name}.{e.name}", e)

    for i, s in enumerate(f.service):
        yield (FILE_SERVICE, i), f"service {s.name}"
        for j, m in enumerate(s.method):
            yield (FILE_SERVICE, i, SERVICE_METHOD, j), f"rpc {s.name}.{m.name}"
    for i, m in enumerate(f.message_type):
        yield from message((FILE_MESSAGE_TYPE, i), m.name, m)
    for i, e in enumerate(f.enum_type):
        yield from enum((FILE_ENUM_TYPE, i), e.name, e)


def test_everything_has_a_leading_comment(aimesh_files: list[dpb.FileDescriptorProto]) -> None:
    bad: list[str] = []
    for f in aimesh_files:
        assert f.source_code_info.location, f"{f.name}: no source info (--include_source_info)"
        comments = {
            tuple(loc.path): loc.leading_comments.strip() for loc in f.source_code_info.location
        }
        bad += [f"{f.name}: {what}" for path, what in _declarations(f) if not comments.get(path)]
    assert not bad, "declarations without a leading comment:\n  " + "\n  ".join(bad)


def test_strict_packages_have_field_behavior_everywhere(
    aimesh_files: list[dpb.FileDescriptorProto],
) -> None:
    bad: list[str] = []

    def walk(name: str, m: dpb.DescriptorProto) -> None:
        if m.options.map_entry:
            return
        for fld in m.field:
            if not fld.options.Extensions[field_behavior_pb2.field_behavior]:
                bad.append(f"{name}.{fld.name}")
        for n in m.nested_type:
            walk(f"{name}.{n.name}", n)

    files = [f for f in aimesh_files if f.package in STRICT_PACKAGES]
    assert {f.package for f in files} == set(STRICT_PACKAGES)
    for f in files:
        for m in f.message_type:
            walk(f"{f.package}.{m.name}", m)
    assert not bad, f"fields without google.api.field_behavior: {bad}"


def test_resources_declare_a_pattern(aimesh_files: list[dpb.FileDescriptorProto]) -> None:
    bad: list[str] = []
    count = 0
    for f in aimesh_files:
        for m in f.message_type:
            if m.options.HasExtension(resource_pb2.resource):
                count += 1
                res = m.options.Extensions[resource_pb2.resource]
                if not res.pattern or not res.type:
                    bad.append(f"{f.package}.{m.name}")
                elif "name" not in {fld.name for fld in m.field}:
                    bad.append(f"{f.package}.{m.name} (no `name` field)")
    assert count > 0
    assert not bad, f"resources need google.api.resource type + pattern and a name: {bad}"


@pytest.mark.parametrize(
    ("rpc", "level"),
    [
        ("aimesh.auth.v1.AuthService/RevokeApiKey", dpb.MethodOptions.IDEMPOTENT),
        ("aimesh.auth.v1.AuthService/GetJwks", dpb.MethodOptions.NO_SIDE_EFFECTS),
        ("aimesh.usage.v1.UsageService/ReleaseReservation", dpb.MethodOptions.IDEMPOTENT),
        ("aimesh.usage.v1.UsageService/SetRateLimitPolicy", dpb.MethodOptions.IDEMPOTENT),
        ("aimesh.usage.v1.UsageService/ExportUsageRecords", dpb.MethodOptions.NO_SIDE_EFFECTS),
        ("aimesh.billing.v1.BillingService/GenerateInvoice", dpb.MethodOptions.IDEMPOTENT),
    ],
)
def test_declared_idempotency(aimesh_methods: Methods, rpc: str, level: int) -> None:
    by_name = {f"{svc}/{m.name}": m for svc, m in aimesh_methods}
    assert by_name[rpc].options.idempotency_level == level


def test_export_and_render_return_http_body(aimesh_methods: Methods) -> None:
    by_name = {f"{svc}/{m.name}": m for svc, m in aimesh_methods}
    export = by_name["aimesh.usage.v1.UsageService/ExportUsageRecords"]
    assert export.server_streaming and export.output_type == ".google.api.HttpBody"
    render = by_name["aimesh.billing.v1.BillingService/RenderInvoice"]
    assert not render.server_streaming and render.output_type == ".google.api.HttpBody"


def test_billing_reuses_usage_resource_type(messages: dict[str, dpb.DescriptorProto]) -> None:
    price = {f.name: f for f in messages["aimesh.billing.v1.PlanPrice"].field}
    assert price["resource_type"].type_name == ".aimesh.usage.v1.ResourceType"


def test_jwks_json_is_rfc7517_shape() -> None:
    from aimesh.auth.v1 import auth_pb2

    jwks = auth_pb2.Jwks(
        keys=[auth_pb2.Jwk(kty="RSA", kid="k1", use="sig", alg="RS256", n="AQAB-n", e="AQAB")]
    )
    as_json = json_format.MessageToDict(jwks)  # same JSON mapping the transcoder uses
    assert as_json == {
        "keys": [
            {"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": "AQAB-n", "e": "AQAB"}
        ]
    }
    # Round trip from a JWKS document as jwt_authn and other RFC 7517 consumers produce it.
    parsed = json_format.ParseDict(as_json, auth_pb2.Jwks())
    assert parsed == jwks


def test_api_key_secret_is_output_only(messages: dict[str, dpb.DescriptorProto]) -> None:
    fields = {f.name: f for f in messages["aimesh.auth.v1.ApiKey"].field}
    for name in ("secret", "prefix"):
        behaviors = list(fields[name].options.Extensions[field_behavior_pb2.field_behavior])
        assert field_behavior_pb2.OUTPUT_ONLY in behaviors, name
