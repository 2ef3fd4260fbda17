"""The OpenAPI 3.1 document of the JSON surface (scripts/openapi.py → gen/openapi.json): a valid
3.1 document (openapi-spec-validator), complete against the gateway's routes, and faithful to
the http rules, comments and field behaviors of the contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from scripts import gateway, openapi

REPO = Path(__file__).resolve().parents[2]
DOCUMENT = REPO / "gen" / "openapi.json"


@pytest.fixture(scope="module")
def doc() -> dict:  # type: ignore[type-arg]
    return json.loads(DOCUMENT.read_text())


def test_committed_document_is_current() -> None:
    assert DOCUMENT.read_text() == openapi.render(), "gen/openapi.json is stale: run scripts/gen"


def test_document_is_valid_openapi_3_1(doc: dict) -> None:  # type: ignore[type-arg]
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_validator_rejects_a_broken_document(doc: dict) -> None:  # type: ignore[type-arg]
    # The check above can fail: an operation without responses or a bad parameter location.
    broken = json.loads(json.dumps(doc))
    del broken["paths"]["/v1/documents"]["get"]["responses"]
    broken["paths"]["/v1/documents"]["get"]["parameters"][0]["in"] = "body"
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def test_every_routed_http_rule_is_documented(doc: dict) -> None:  # type: ignore[type-arg]
    documented = {op["x-grpc-method"] for ops in doc["paths"].values() for op in ops.values()}
    fds = descriptor_pb2.FileDescriptorSet.FromString(gateway.DESCRIPTOR.read_bytes())
    with_rules = set()
    for f in fds.file:
        for svc in f.service:
            for m in svc.method:
                if m.options.HasExtension(openapi.annotations_pb2.http):
                    with_rules.add(f"/{f.package}.{svc.name}/{m.name}")
    routed = {r.path for r in gateway.load_rpcs() if gateway.is_public(r)}
    assert documented == with_rules & routed
    # Service-to-service methods stay out (the gateway answers 404 for them).
    assert "/aimesh.usage.v1.UsageService/RecordUsage" not in documented


def test_path_templates_become_segment_parameters() -> None:
    path, params = openapi.template_to_path("/v1/{name=organizations/*/apiKeys/*}:revoke")
    assert path == "/v1/organizations/{organization}/apiKeys/{apiKey}:revoke"
    assert [p[0] for p in params] == ["organization", "apiKey"]
    assert {p[1] for p in params} == {"name"}
    path, params = openapi.template_to_path("/v1/{membership.name=organizations/*/memberships/*}")
    assert path == "/v1/organizations/{organization}/memberships/{membership}"
    path, _ = openapi.template_to_path("/v1/{name=organizations/*/rateLimitPolicy}")
    assert path == "/v1/organizations/{organization}/rateLimitPolicy"
    path, params = openapi.template_to_path("/v1/{conversation}")
    assert path == "/v1/{conversation}" and params[0][:2] == ("conversation", "conversation")


def test_operations_follow_the_http_rules(doc: dict) -> None:  # type: ignore[type-arg]
    paths = doc["paths"]
    sign_up = paths["/v1/auth:signUp"]["post"]
    assert sign_up["security"] == []  # public
    body = sign_up["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/aimesh.auth.v1.SignUpRequest"}
    signup_schema = doc["components"]["schemas"]["aimesh.auth.v1.SignUpRequest"]
    assert {"email", "password", "organizationDisplayName"} <= set(signup_schema["required"])

    listing = paths["/v1/documents"]["get"]
    assert listing["security"] == [{"bearer": []}, {"apiKey": []}]
    query = {p["name"]: p for p in listing["parameters"]}
    assert set(query) == {"pageSize", "pageToken", "state"}
    assert query["pageSize"]["schema"] == {"type": "integer", "format": "int32"}
    assert "Maximum documents to return" in query["pageSize"]["description"]

    # body: "api_key" → the ApiKey message; parent comes from the path.
    create_key = paths["/v1/organizations/{organization}/apiKeys"]["post"]
    assert create_key["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/aimesh.auth.v1.ApiKey"}
    assert [p["name"] for p in create_key["parameters"]] == ["organization", "requestId"]

    # Server streams are server-sent events of the response message.
    send = paths["/v1/conversations/{conversation}:sendMessage"]["post"]
    stream = send["responses"]["200"]["content"]["text/event-stream"]
    assert stream["x-item-schema"] == {
        "$ref": "#/components/schemas/aimesh.conversation.v1.SendMessageResponse"}
    send_body = send["requestBody"]["content"]["application/json"]["schema"]
    assert "conversation" not in send_body["properties"]  # bound by the path
    assert "content" in send_body["required"]

    # Timestamps as RFC 3339 strings in query parameters.
    summary = {p["name"]: p for p in paths["/v1/usageRecords:summarize"]["get"]["parameters"]}
    assert summary["startTime"]["schema"]["format"] == "date-time"
    assert summary["startTime"]["required"] is True

    # Errors are google.rpc.Status.
    assert doc["components"]["schemas"]["google.rpc.Status"]["properties"]["details"]["type"] == "array"
    # Client streams are gRPC only.
    assert not any("UploadDocument" in op["operationId"] for ops in paths.values()
                   for op in ops.values())


def test_schemas_follow_proto3_json_and_field_behavior(doc: dict) -> None:  # type: ignore[type-arg]
    document = doc["components"]["schemas"]["aimesh.knowledge.v1.Document"]
    props = document["properties"]
    assert props["sizeBytes"]["type"] == ["string", "integer"]  # int64
    assert props["sizeBytes"]["readOnly"] is True  # OUTPUT_ONLY
    assert props["createTime"]["format"] == "date-time"
    assert props["metadata"]["type"] == "object"  # map<string, string>
    assert "Processing state." in props["state"]["description"]
    assert document["required"] == ["displayName", "mimeType"]
    state = doc["components"]["schemas"]["aimesh.knowledge.v1.Document.State"]
    assert "STATE_READY" in state["anyOf"][0]["enum"]
    create = doc["components"]["schemas"]["aimesh.knowledge.v1.CreateDocumentRequest"]
    assert create["properties"]["content"]["contentEncoding"] == "base64"
    assert create["properties"]["content"]["writeOnly"] is True  # INPUT_ONLY
    jwk = doc["components"]["schemas"]["aimesh.auth.v1.Jwk"]
    assert "kty" in jwk["properties"]  # json_name honoured
