"""Fuzzing every public route through the real gateway with generated bad input (issue 12).

Routes come from the descriptor set (gen/descriptor.binpb): every RPC the gateway routes
(scripts/gateway.py is_public), over JSON/HTTP from its google.api.http rules and over gRPC.
Inputs are generated from each request message's fields with a fixed seed: wrong JSON types,
NUL characters, invalid UTF-8 (raw JSON bytes, path segments, protobuf wire bytes), huge
strings and numbers, negative numbers, unknown fields, malformed resource names, malformed
JSON and protobuf bytes, out-of-range timestamps. The caller is a real owner of a real
organization, so requests pass authentication and reach the services' validation.

Asserted for every case: no 5xx over HTTP and a JSON google.rpc.Status body on every error; no
UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS or DEADLINE_EXCEEDED (a hang) over gRPC; and no
Python traceback added to any service log. The number of cases is bounded (MAX_CASES_PER_ROUTE,
one seed) so the test runs in CI in about a minute.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import descriptor_pb2, message_factory
from google.protobuf import descriptor_pool as _pool

from scripts import gateway as gw
from services.common.config import SERVICES
from tests.support.accounts import Account, sign_up
from tests.support.mesh import TestMesh

SEED = 12
MAX_CASES_PER_ROUTE = 14
CONCURRENCY = 6
CLIENT_TIMEOUT = 20.0
FD = _descriptor.FieldDescriptor
BAD_GRPC_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
                  grpc.StatusCode.DATA_LOSS, grpc.StatusCode.DEADLINE_EXCEEDED}
SEGMENT_VALUES = ("%00", "%FF%FE", "a" * 3000, "-1", "..", "%20x", "x%2Fy", "\u00e9t\u00e9")
HUGE_STRING = "x" * 70_000
_INT_TYPES = {FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_SINT32, FD.TYPE_SINT64, FD.TYPE_SFIXED32,
              FD.TYPE_SFIXED64, FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_FIXED32, FD.TYPE_FIXED64}


@dataclass(frozen=True)
class Route:
    rpc: gw.Rpc
    method: _descriptor.MethodDescriptor
    verb: str
    template: str
    body: str


@dataclass
class Case:
    route: str
    description: str
    send: Callable[[], Awaitable[str | None]]  # None when acceptable, else what went wrong
    outcome: str = ""  # the status it got (HTTP code or gRPC code name), for the summary


# --- what to fuzz ---------------------------------------------------------------------------

def _pool_from_descriptor() -> _pool.DescriptorPool:
    pool = _pool.DescriptorPool()
    fds = descriptor_pb2.FileDescriptorSet.FromString(gw.DESCRIPTOR.read_bytes())
    for file in fds.file:
        pool.Add(file)
    return pool


def _public_methods() -> list[tuple[gw.Rpc, _descriptor.MethodDescriptor]]:
    pool = _pool_from_descriptor()
    out = []
    for rpc in gw.load_rpcs():
        if gw.is_public(rpc):
            out.append((rpc, pool.FindMethodByName(f"{rpc.full_service}.{rpc.method}")))
    return out


def _http_routes(methods: list[tuple[gw.Rpc, _descriptor.MethodDescriptor]]) -> list[Route]:
    routes = []
    for rpc, method in methods:
        options = descriptor_pb2.MethodOptions.FromString(method.GetOptions().SerializeToString())
        raw = options.Extensions[annotations_pb2.http]
        rule = http_pb2.HttpRule.FromString(raw.SerializeToString())
        for binding in [rule, *rule.additional_bindings]:
            verb = binding.WhichOneof("pattern")
            if verb is None or verb == "custom":
                continue
            routes.append(Route(rpc, method, verb.upper(), getattr(binding, verb), binding.body))
    return routes


# --- input generation -----------------------------------------------------------------------

def _bad_json_values(field: _descriptor.FieldDescriptor) -> list[Any]:
    if field.is_repeated and not _is_map(field):
        return ["not a list", [None], [HUGE_STRING] * 3]
    if _is_map(field):
        return [{"\u0000": "v"}, {"k": {"nested": True}}, ["not", "a", "map"]]
    if field.type == FD.TYPE_STRING:
        return ["nul\u0000inside", HUGE_STRING, 12345, {"an": "object"}, "\ud800"]
    if field.type in _INT_TYPES:
        return [-1, 2**70, "abc", 1.5, -(2**63)]
    if field.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return ["NaN", -1e308, "abc"]
    if field.type == FD.TYPE_BOOL:
        return ["maybe", 2]
    if field.type == FD.TYPE_ENUM:
        return ["NO_SUCH_VALUE", 99999, -5]
    if field.type == FD.TYPE_BYTES:
        return ["!!!not base64!!!", 5]
    name = field.message_type.full_name
    if name == "google.protobuf.Timestamp":
        return ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "yesterday", 5]
    if name == "google.protobuf.Duration":
        return ["-315576000000s", "forever", "1e9s"]
    if name == "google.protobuf.FieldMask":
        return ["no_such_field", "name,\u0000", 7]
    if name in ("google.protobuf.Struct", "google.protobuf.Value"):
        return [{"k": "nul\u0000"}, {"deep": [[[[{"x": HUGE_STRING}]]]]}]
    nested = {f.json_name: _bad_json_values(f)[0] for f in list(field.message_type.fields)[:4]}
    return ["not an object", {"zzzUnknownField": 1}, nested]


def _is_map(field: _descriptor.FieldDescriptor) -> bool:
    return field.type == FD.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _fill_template(template: str, org_id: str, value: str) -> tuple[str, set[str]]:
    """The path with every variable's `*` replaced (the org segment by the caller's own org,
    so requests pass authorization), and the names of the fields bound by the path."""
    bound: set[str] = set()

    def variable(match: re.Match[str]) -> str:
        name, _, pattern = match.group(1).partition("=")
        bound.add(name.split(".")[0])
        pattern = pattern or "*"
        parts = pattern.split("/")
        filled = []
        for index, part in enumerate(parts):
            if part in ("*", "**"):
                previous = parts[index - 1] if index else ""
                filled.append(f"o_{org_id.removeprefix('o_')}" if previous == "organizations" else value)
            else:
                filled.append(part)
        return "/".join(filled)

    return re.sub(r"\{([^}]+)\}", variable, template), bound


def _http_cases(route: Route, http: httpx.AsyncClient, account: Account, rng: random.Random) -> list[Case]:
    request_type = route.method.input_type
    base_path, bound = _fill_template(route.template, account.org_id, "fuzz")
    label = f"{route.verb} {route.template}"
    variants: list[tuple[str, str, dict[str, str], bytes | None]] = []

    for value in SEGMENT_VALUES:
        path, _ = _fill_template(route.template, account.org_id, value)
        if path != base_path:
            variants.append((f"path segment {value[:12]!r}", path, {}, b"{}" if route.body else None))
    if route.body:
        body_type = request_type if route.body == "*" else request_type.fields_by_name[route.body].message_type
        fields = [f for f in body_type.fields if route.body != "*" or f.name not in bound]
        for field in fields:
            for value in _bad_json_values(field):
                payload = json.dumps({field.json_name: value}).encode()
                variants.append((f"body {field.json_name}={str(value)[:24]!r}", base_path, {}, payload))
        variants += [
            ("body unknown field", base_path, {}, b'{"zzzUnknownField": 1}'),
            ("body malformed JSON", base_path, {}, b'{"a": '),
            ("body invalid UTF-8", base_path, {}, b'{"x": "\xff\xfe"}'),
            ("body JSON array", base_path, {}, b"[1, 2, 3]"),
            ("body huge number", base_path, {}, b'{"pageSize": 1e999}'),
        ]
    else:
        for field in request_type.fields:
            if field.name in bound or field.type == FD.TYPE_MESSAGE or field.is_repeated:
                continue
            for value in _bad_json_values(field)[:3]:
                text = (value if isinstance(value, str) else json.dumps(value))[:8000]  # URL limit
                variants.append((f"query {field.json_name}={text[:16]!r}", base_path, {field.json_name: text}, None))
        variants.append(("unknown query parameter", base_path, {"zzzUnknown": "1"}, None))
    rng.shuffle(variants)

    def case(description: str, path: str, params: dict[str, str], body: bytes | None) -> Case:
        async def send() -> str | None:
            url = path + ("?" + urllib.parse.urlencode(params) if params else "")
            headers = {**account.bearer}
            if body is not None:
                headers["content-type"] = "application/json"
            try:
                reply = await http.request(route.verb, url, content=body, headers=headers,
                                           timeout=CLIENT_TIMEOUT)
            except httpx.TimeoutException:
                return "no answer (hang)"
            this.outcome = f"HTTP {reply.status_code}"
            if reply.status_code >= 500:
                return f"HTTP {reply.status_code}: {reply.text[:300]}"
            if reply.status_code >= 400:
                try:
                    status = reply.json()
                except ValueError:
                    return f"HTTP {reply.status_code} with a non-JSON body: {reply.text[:200]!r}"
                if not isinstance(status, dict) or not isinstance(status.get("code"), int):
                    return f"HTTP {reply.status_code} body is no google.rpc.Status: {reply.text[:200]}"
                if "<class" in reply.text or "Traceback" in reply.text:
                    return f"HTTP {reply.status_code} leaks internals: {reply.text[:200]}"
            return None

        this = Case(label, description, send)
        return this

    return [case(*v) for v in variants[:MAX_CASES_PER_ROUTE]]


def _grpc_payloads(message_class: Any, rng: random.Random) -> list[tuple[str, bytes]]:
    descriptor = message_class.DESCRIPTOR
    payloads = [
        ("random bytes", bytes(rng.randrange(256) for _ in range(64))),
        ("truncated varint", b"\x08\xff\xff\xff"),
        ("length past the end", b"\x0a\x7f" + b"x" * 3),
        ("unknown field numbers", b"\xf8\xff\xff\x01\x01" + b"\x82\x7f\x02hi"),
    ]
    for field in descriptor.fields:
        if field.type == FD.TYPE_STRING and not field.is_repeated and field.containing_oneof is None:
            marker = "\u00a7" * 4  # 8 bytes in UTF-8, replaced by invalid UTF-8 on the wire
            payloads.append((f"{field.name} holds NUL", message_class(**{field.name: "a\x00b"}).SerializeToString()))
            wire = message_class(**{field.name: marker}).SerializeToString()
            payloads.append((f"{field.name} invalid UTF-8", wire.replace(marker.encode(), b"\xff\xfe" * 4)))
            payloads.append((f"{field.name} huge", message_class(**{field.name: HUGE_STRING}).SerializeToString()))
        elif field.type in _INT_TYPES and not field.is_repeated:
            low = -1 if field.type not in (FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_FIXED32, FD.TYPE_FIXED64) else 0
            high = 2**31 - 1 if field.type in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32) else (
                2**32 - 1 if field.type in (FD.TYPE_UINT32, FD.TYPE_FIXED32) else 2**63 - 1)
            payloads.append((f"{field.name}={low}", message_class(**{field.name: low}).SerializeToString()))
            payloads.append((f"{field.name}={high}", message_class(**{field.name: high}).SerializeToString()))
        elif field.type == FD.TYPE_MESSAGE and field.message_type.full_name == "google.protobuf.Timestamp" \
                and not field.is_repeated:
            message = message_class()
            getattr(message, field.name).seconds = -(10**15)
            payloads.append((f"{field.name} out of range", message.SerializeToString()))
    rng.shuffle(payloads)
    return payloads[:MAX_CASES_PER_ROUTE]


def _grpc_cases(rpc: gw.Rpc, method: _descriptor.MethodDescriptor, channel: grpc.aio.Channel,
                account: Account, rng: random.Random) -> list[Case]:
    message_class = message_factory.GetMessageClass(method.input_type)
    metadata = (("authorization", f"Bearer {account.access_token}"),)
    client_streaming, server_streaming = method.client_streaming, method.server_streaming

    def case(description: str, payload: bytes) -> Case:
        async def send() -> str | None:
            try:
                if client_streaming:
                    async def requests() -> AsyncIterator[bytes]:
                        yield payload

                    call = channel.stream_stream(rpc.path, request_serializer=None, response_deserializer=None)
                    async for _ in call(requests(), metadata=metadata, timeout=CLIENT_TIMEOUT):
                        pass
                elif server_streaming:
                    stream = channel.unary_stream(rpc.path, request_serializer=None, response_deserializer=None)
                    async for _ in stream(payload, metadata=metadata, timeout=CLIENT_TIMEOUT):
                        pass
                else:
                    unary = channel.unary_unary(rpc.path, request_serializer=None, response_deserializer=None)
                    await unary(payload, metadata=metadata, timeout=CLIENT_TIMEOUT)
                this.outcome = "OK"
            except grpc.aio.AioRpcError as error:
                this.outcome = error.code().name
                details = error.details() or ""
                if error.code() in BAD_GRPC_CODES:
                    return f"{error.code().name}: {details[:300]}"
                if "<class" in details or "Traceback" in details:
                    return f"{error.code().name} leaks internals: {details[:200]}"
            return None

        this = Case(f"gRPC {rpc.path}", description, send)
        return this

    return [case(d, p) for d, p in _grpc_payloads(message_class, rng)]


# --- the test -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
async def full_mesh(mesh: TestMesh, gateway: str) -> TestMesh:
    mesh.ensure_triton()
    mesh.ensure(*SERVICES, timeout=180)
    return mesh


def _log_sizes(mesh: TestMesh) -> dict[Path, int]:
    return {p: p.stat().st_size for p in Path(mesh.stack.log_dir).glob("*.log")}


def _new_tracebacks(mesh: TestMesh, before: dict[Path, int]) -> dict[str, str]:
    found = {}
    for path in Path(mesh.stack.log_dir).glob("*.log"):
        with path.open("rb") as handle:
            handle.seek(before.get(path, 0))
            added = handle.read().decode(errors="replace")
        if "Traceback" in added:
            index = added.index("Traceback")
            found[path.name] = added[max(0, index - 600):index + 2400]
    return found


async def test_every_public_route_survives_generated_bad_input(
    full_mesh: TestMesh, http: httpx.AsyncClient, gateway_channel: grpc.aio.Channel
) -> None:
    account = await sign_up(http, "Fuzz Inc")
    # Hundreds of requests from one organization: lift its rate limit as Billing would — after
    # Billing has created the subscription, which sets the plan's limits.
    assert (await http.get("/v1/subscription", headers=account.bearer)).status_code == 200
    usage = usage_pb2_grpc.UsageServiceStub(full_mesh.channel("usage", identity="billing"))
    await usage.SetRateLimitPolicy(usage_pb2.SetRateLimitPolicyRequest(policy=usage_pb2.RateLimitPolicy(
        name=f"{account.org}/rateLimitPolicy", organization_requests_per_minute=100_000,
        api_key_requests_per_minute=100_000, plan="fuzz")), timeout=10)

    rng = random.Random(SEED)
    methods = _public_methods()
    routes = _http_routes(methods)
    assert len(routes) >= 40 and len(methods) >= 45, (len(routes), len(methods))
    cases: list[Case] = []
    for route in routes:
        cases += _http_cases(route, http, account, rng)
    for rpc, method in methods:
        cases += _grpc_cases(rpc, method, gateway_channel, account, rng)

    before = _log_sizes(full_mesh)
    limit = asyncio.Semaphore(CONCURRENCY)

    async def run(case: Case) -> tuple[Case, str | None]:
        async with limit:
            return case, await case.send()

    results = await asyncio.gather(*[run(c) for c in cases])
    failures = [f"{c.route} [{c.description}]: {problem}" for c, problem in results if problem]
    outcomes = collections.Counter(c.outcome for c in cases)
    print(f"\nfuzz: {len(cases)} cases over {len(routes)} HTTP routes and {len(methods)} gRPC methods, "
          f"{len(failures)} failures; outcomes {dict(sorted(outcomes.items()))}")
    assert not failures, "\n".join(failures[:60])
    # Services log handled errors as one JSON line; a traceback means something escaped.
    await asyncio.sleep(0.5)
    tracebacks = _new_tracebacks(full_mesh, before)
    assert not tracebacks, json.dumps(tracebacks, indent=1)[:6000]
