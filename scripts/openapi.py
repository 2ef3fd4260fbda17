"""OpenAPI 3.1 document of the gateway's JSON/HTTP surface, generated from the descriptor set.

    python -m scripts.openapi [--descriptor gen/descriptor.binpb] [--out FILE]

scripts/gen writes it to gen/openapi.json; the gateway serves it at GET /v1/openapi.json and
the console renders it as the API reference. Sources, all in the descriptor:

* paths and verbs: each public RPC's `google.api.http` rule (and additional_bindings);
  `{name=organizations/*/apiKeys/*}` becomes the segments `organizations/{organization}/
  apiKeys/{apiKey}` (OpenAPI path parameters cannot hold "/"), each documented as a part of
  the request field it fills;
* request: `body: "*"` → the request message (minus path fields); `body: "field"` → that
  field's message; no body → query parameters for the remaining scalar, enum, repeated-scalar
  and well-known-type fields (what Envoy's transcoder accepts);
* response: the response message as JSON; server streams as `text/event-stream` (the gateway's
  SSE-style delimited output), google.api.HttpBody as raw bytes; errors as google.rpc.Status;
* schemas: proto3 JSON mapping (lowerCamel json names, 64-bit integers as strings or numbers,
  bytes as base64, enums as names, Timestamp/Duration as strings);
* text: the .proto comments (the user documentation), field_behavior as required / readOnly /
  writeOnly.

Only RPCs the mesh policy lets the gateway call are listed (the others are 404 at the edge).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR = ROOT / "gen" / "descriptor.binpb"
TITLE = "aimesh API"
VERSION = "v1"

F = descriptor_pb2.FieldDescriptorProto
_INT32 = {F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32, F.TYPE_UINT32, F.TYPE_FIXED32}
_INT64 = {F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64, F.TYPE_UINT64, F.TYPE_FIXED64}
# Well-known types have their own JSON forms (proto3 JSON mapping).
_WKT: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time",
                                  "description": "RFC 3339 timestamp, e.g. 2025-01-31T12:00:00Z"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
                                 "description": "Duration in seconds with an s suffix, e.g. 1.5s"},
    "google.protobuf.FieldMask": {"type": "string",
                                  "description": "Comma-separated lowerCamel field paths"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}},
                            "required": ["@type"]},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.Int32Value": {"type": "integer"},
    "google.protobuf.DoubleValue": {"type": "number"},
}
_HTTP_BODY = "google.api.HttpBody"
_PUBLIC_DEFAULT = {"SignUp", "Login", "RefreshToken", "Logout", "GetJwks"}
_VERBS = ("get", "put", "post", "delete", "patch")


class Descriptors:
    """Messages, enums and comments of a FileDescriptorSet, by full name."""

    def __init__(self, fds: descriptor_pb2.FileDescriptorSet) -> None:
        self.files = list(fds.file)
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.comments: dict[str, str] = {}  # full name (or "svc.Method") -> leading comment
        for f in self.files:
            where = {tuple(loc.path): loc.leading_comments for loc in f.source_code_info.location}
            for i, m in enumerate(f.message_type):
                self._message(f.package, m, (4, i), where)
            for i, e in enumerate(f.enum_type):
                self._enum(f.package, e, (5, i), where)
            for i, s in enumerate(f.service):
                name = f"{f.package}.{s.name}"
                self.comments[name] = where.get((6, i), "")
                for j, m in enumerate(s.method):
                    self.comments[f"{name}.{m.name}"] = where.get((6, i, 2, j), "")

    def _message(self, scope: str, m: descriptor_pb2.DescriptorProto, path: tuple[int, ...],
                 where: dict[tuple[int, ...], str]) -> None:
        name = f"{scope}.{m.name}"
        self.messages[name] = m
        self.comments[name] = where.get(path, "")
        for i, f in enumerate(m.field):
            self.comments[f"{name}.{f.name}"] = where.get((*path, 2, i), "")
        for i, nested in enumerate(m.nested_type):
            self._message(name, nested, (*path, 3, i), where)
        for i, e in enumerate(m.enum_type):
            self._enum(name, e, (*path, 4, i), where)

    def _enum(self, scope: str, e: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...],
              where: dict[tuple[int, ...], str]) -> None:
        name = f"{scope}.{e.name}"
        self.enums[name] = e
        self.comments[name] = where.get(path, "")


def _text(comment: str) -> str:
    """A .proto comment as prose: common indentation removed, trailing space trimmed."""
    lines = [line.removeprefix(" ") for line in comment.strip("\n").split("\n")]
    return "\n".join(line.rstrip() for line in lines).strip()


def _summary(comment: str) -> str:
    text = " ".join(_text(comment).split("\n\n")[0].split())
    match = re.match(r"(.+?\.)(\s|$)", text)
    return (match.group(1) if match else text)[:200]


def json_name(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.json_name:
        return field.json_name
    head, *rest = field.name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _behaviors(field: descriptor_pb2.FieldDescriptorProto) -> list[int]:
    return list(field.options.Extensions[field_behavior_pb2.field_behavior])


def template_to_path(template: str) -> tuple[str, list[tuple[str, str, str]]]:
    """'/v1/{name=organizations/*/apiKeys/*}:revoke' -> ('/v1/organizations/{organization}/
    apiKeys/{apiKey}:revoke', [(parameter, field path, its part in the field value)]).

    A bare '{field}' is one segment named after the field. A '*' segment is named after the
    collection before it, singular (organizations -> organization)."""
    params: list[tuple[str, str, str]] = []
    used: set[str] = set()

    def expand(match: re.Match[str]) -> str:
        field_path, _, pattern = match.group(1).partition("=")
        if not pattern:
            name = _camel(field_path.split(".")[-1])
            params.append((name, field_path, "{" + name + "}"))
            return "{" + name + "}"
        out: list[str] = []
        previous = ""
        for segment in pattern.split("/"):
            if segment in ("*", "**"):
                name = _camel(previous[:-1] if previous.endswith("s") else previous or "id")
                while name in used:
                    name += "Id"
                used.add(name)
                params.append((name, field_path, pattern))
                out.append("{" + name + "}")
            else:
                out.append(segment)
            previous = segment
        return "/".join(out)

    return re.sub(r"\{([^}]+)\}", expand, template), params


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


class Generator:
    def __init__(self, descriptors: Descriptors, public: set[str] | None = None) -> None:
        self.d = descriptors
        self.public = public  # RPC paths the gateway routes; None = every RPC
        self.schemas: dict[str, Any] = {}

    # --- schemas ---------------------------------------------------------------------------
    def ref(self, type_name: str) -> dict[str, Any]:
        name = type_name.lstrip(".")
        if name in _WKT:
            return dict(_WKT[name])
        if name in self.d.enums:
            self._enum_schema(name)
        else:
            self._message_schema(name)
        return {"$ref": f"#/components/schemas/{name}"}

    def _enum_schema(self, name: str) -> None:
        if name in self.schemas:
            return
        enum = self.d.enums[name]
        values = [v.name for v in enum.value]
        self.schemas[name] = {
            "description": _text(self.d.comments.get(name, "")),
            # The transcoder accepts the value names and their numbers.
            "anyOf": [{"type": "string", "enum": values},
                      {"type": "integer", "enum": [v.number for v in enum.value]}],
        }

    def _message_schema(self, name: str) -> None:
        if name in self.schemas:
            return
        message = self.d.messages.get(name)
        if message is None:
            raise KeyError(f"message {name} is not in the descriptor set")
        schema: dict[str, Any] = {"type": "object", "properties": {}}
        self.schemas[name] = schema  # before recursing: messages may refer to themselves
        description = _text(self.d.comments.get(name, ""))
        if description:
            schema["description"] = description
        required: list[str] = []
        for f in message.field:
            prop = self.field_schema(f)
            doc = _text(self.d.comments.get(f"{name}.{f.name}", ""))
            behaviors = _behaviors(f)
            if doc:
                prop = {**prop, "description": doc} if "$ref" not in prop else {
                    "allOf": [prop], "description": doc}
            if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                prop["readOnly"] = True
            if field_behavior_pb2.INPUT_ONLY in behaviors:
                prop["writeOnly"] = True
            if field_behavior_pb2.REQUIRED in behaviors:
                required.append(json_name(f))
            schema["properties"][json_name(f)] = prop
        if required:
            schema["required"] = required

    def field_schema(self, f: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        if f.type == F.TYPE_MESSAGE:
            entry = self.d.messages.get(f.type_name.lstrip("."))
            if entry is not None and entry.options.map_entry:
                value = next(x for x in entry.field if x.name == "value")
                return {"type": "object", "additionalProperties": self.field_schema(value)}
        item = self._single(f)
        if f.label == F.LABEL_REPEATED:
            return {"type": "array", "items": item}
        return item

    def _single(self, f: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        if f.type in (F.TYPE_MESSAGE, F.TYPE_ENUM):
            return self.ref(f.type_name)
        if f.type in _INT32:
            return {"type": "integer", "format": "int32"}
        if f.type in _INT64:
            # proto3 JSON prints 64-bit integers as strings and accepts either form.
            return {"type": ["string", "integer"], "format": "int64",
                    "pattern": "^-?[0-9]+$"}
        if f.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            return {"type": "number"}
        if f.type == F.TYPE_BOOL:
            return {"type": "boolean"}
        if f.type == F.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        return {"type": "string"}

    # --- operations ------------------------------------------------------------------------
    def operations(self) -> dict[str, dict[str, Any]]:
        paths: dict[str, dict[str, Any]] = {}
        for f in self.d.files:
            if not f.package.startswith("aimesh."):
                continue
            for svc in f.service:
                full = f"{f.package}.{svc.name}"
                for m in svc.method:
                    if m.client_streaming:
                        continue  # gRPC only: the gateway cannot transcode client streams
                    if self.public is not None and f"/{full}/{m.name}" not in self.public:
                        continue
                    if not m.options.HasExtension(annotations_pb2.http):
                        continue
                    rule = m.options.Extensions[annotations_pb2.http]
                    for index, binding in enumerate([rule, *rule.additional_bindings]):
                        verb, template = _verb(binding)
                        path, params = template_to_path(template)
                        operation = self.operation(full, svc.name, m, binding, params)
                        if index:  # operationIds are unique: number the extra bindings
                            operation["operationId"] += f"_{index + 1}"
                        if path in paths and verb in paths[path]:
                            raise ValueError(f"two RPCs bind {verb.upper()} {path}")
                        paths.setdefault(path, {})[verb] = operation
        return dict(sorted(paths.items()))

    def operation(self, full: str, service: str, m: descriptor_pb2.MethodDescriptorProto,
                  rule: http_pb2.HttpRule, params: list[tuple[str, str, str]]) -> dict[str, Any]:
        comment = self.d.comments.get(f"{full}.{m.name}", "")
        request_name = m.input_type.lstrip(".")
        request = self.d.messages[request_name]
        bound = {p[1].split(".")[0] for p in params}
        op: dict[str, Any] = {
            "operationId": f"{service}_{m.name}",
            "tags": [service],
            "summary": _summary(comment),
            "description": _text(comment),
            "x-grpc-method": f"/{full}/{m.name}",
        }
        parameters: list[dict[str, Any]] = []
        for name, field_path, pattern in params:
            parameters.append({
                "name": name, "in": "path", "required": True,
                "schema": {"type": "string", "pattern": "^[^/]+$"},
                "description": f"Part of `{field_path}` (pattern `{pattern}`).",
            })
        if rule.body == "*":
            body_schema = self._request_body_schema(request_name, exclude=bound)
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": body_schema}}}
        elif rule.body:
            body_field = next(f for f in request.field if f.name == rule.body)
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": self.field_schema(body_field)}}}
            bound.add(rule.body)
        if rule.body != "*":
            parameters += self._query_parameters(request_name, request, bound)
        if parameters:
            op["parameters"] = parameters
        op["responses"] = {
            "200": self._success(m),
            "default": {"description": "Error: google.rpc.Status with ErrorInfo{reason, domain "
                        "\"aimesh.dev\"} and, for bad input, BadRequest field violations.",
                        "content": {"application/json": {
                            "schema": self.ref(".google.rpc.Status")}}},
        }
        public = m.name in _PUBLIC_DEFAULT and full.startswith("aimesh.auth.")
        op["security"] = [] if public else [{"bearer": []}, {"apiKey": []}]
        return op

    def _request_body_schema(self, request_name: str, exclude: set[str]) -> dict[str, Any]:
        schema_ref = self.ref("." + request_name)
        if not exclude:
            return schema_ref
        # The path carries these fields: the body schema is the message without them.
        base = self.schemas[request_name]
        names = {json_name(f) for f in self.d.messages[request_name].field if f.name in exclude}
        schema: dict[str, Any] = {
            "type": "object", "description": base.get("description", ""),
            "properties": {k: v for k, v in base["properties"].items() if k not in names},
        }
        required = [r for r in base.get("required", []) if r not in names]
        if required:
            schema["required"] = required
        return schema

    def _query_parameters(self, request_name: str, request: descriptor_pb2.DescriptorProto,
                          bound: set[str]) -> list[dict[str, Any]]:
        out = []
        for f in request.field:
            if f.name in bound:
                continue
            schema = self.field_schema(f)
            if f.type == F.TYPE_MESSAGE and f.type_name.lstrip(".") not in _WKT:
                continue  # nested messages are not query parameters
            if schema.get("type") == "object":
                continue  # maps neither
            out.append({
                "name": json_name(f), "in": "query",
                "required": field_behavior_pb2.REQUIRED in _behaviors(f),
                "schema": schema,
                "description": _text(self.d.comments.get(f"{request_name}.{f.name}", "")),
                **({"explode": True} if f.label == F.LABEL_REPEATED else {}),
            })
        return out

    def _success(self, m: descriptor_pb2.MethodDescriptorProto) -> dict[str, Any]:
        output = m.output_type.lstrip(".")
        if output == _HTTP_BODY:
            return {"description": "Raw bytes; the media type is the body's content_type.",
                    "content": {"*/*": {"schema": {
                        "type": "string", "contentMediaType": "application/octet-stream"}}}}
        schema = self.ref(m.output_type)
        if m.server_streaming:
            return {
                "description": "A stream of messages as server-sent events: each `data:` "
                "line holds one JSON message of this schema; a failure ends the stream "
                "with a google.rpc.Status event.",
                "content": {
                    "text/event-stream": {
                        "x-item-schema": schema,
                        "schema": {
                            "type": "string",
                            "description": "SSE frames (see x-item-schema)",
                        },
                    }
                },
            }
        return {"description": "OK", "content": {"application/json": {"schema": schema}}}

    def document(self) -> dict[str, Any]:
        paths = self.operations()
        # Error details the transcoder renders (types of google.rpc.Status.details).
        for name in ("google.rpc.ErrorInfo", "google.rpc.BadRequest", "google.rpc.RetryInfo"):
            if name in self.d.messages:
                self.ref("." + name)
        tags = []
        for f in self.d.files:
            for svc in f.service:
                if f.package.startswith("aimesh.") and any(
                    svc.name in op["tags"] for ops in paths.values() for op in ops.values()
                ):
                    tags.append(
                        {
                            "name": svc.name,
                            "description": _text(
                                self.d.comments.get(f"{f.package}.{svc.name}", "")
                            ),
                        }
                    )
        return {
            "openapi": "3.1.0",
            "info": {
                "title": TITLE,
                "version": VERSION,
                "description": "JSON/HTTP surface of the aimesh gateway, transcoded by Envoy to "
                "the gRPC services of the same contract (proto/aimesh/<svc>/v1). gRPC and "
                "gRPC-Web reach the same methods on the same port; client- and bidi-streaming "
                "methods (UploadDocument, StreamingRecognize, Converse) are gRPC only.",
            },
            "servers": [{"url": "/", "description": "this gateway"}],
            "tags": sorted(tags, key=lambda t: t["name"]),
            "paths": paths,
            "components": {
                "securitySchemes": {
                    "bearer": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "An access token (JWT) from auth:signUp, "
                        "auth:login or auth:refreshToken, or an API key secret.",
                    },
                    "apiKey": {
                        "type": "apiKey",
                        "in": "header",
                        "name": "x-api-key",
                        "description": "An API key secret (amk_...).",
                    },
                },
                "schemas": dict(sorted(self.schemas.items())),
            },
        }


def _verb(rule: http_pb2.HttpRule) -> tuple[str, str]:
    for verb in _VERBS:
        template = getattr(rule, verb)
        if template:
            return verb, template
    if rule.HasField("custom"):
        return rule.custom.kind.lower(), rule.custom.path
    raise ValueError("HttpRule without a pattern")


def gateway_methods(descriptor: Path) -> set[str]:
    """RPC paths the gateway routes (its own rule: the mesh policy's public methods)."""
    from scripts import gateway

    return {r.path for r in gateway.load_rpcs(descriptor) if gateway.is_public(r)}


def build(descriptor: Path = DESCRIPTOR, public: set[str] | None = None) -> dict[str, Any]:
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes())
    return Generator(Descriptors(fds), public).document()


def render(descriptor: Path = DESCRIPTOR) -> str:
    """The document as written to gen/openapi.json (stable bytes for the freshness check)."""
    doc = build(descriptor, gateway_methods(descriptor))
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts.openapi",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--descriptor", type=Path, default=DESCRIPTOR)
    parser.add_argument("--out", type=Path, help="default: print to stdout")
    args = parser.parse_args(argv)
    text = render(args.descriptor)
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
