"""Observability end to end, against real components: a mesh of its own (seven services, Envoy,
the HTTP edge, the shared Triton) with a real Prometheus (Debian's package) scraping it and a test OTLP receiver
(the opentelemetry-proto wire format) collecting spans from Envoy and every service.

After a scripted session through the gateway (sign-up, upload, search, streamed chat, a blocked
chat, speech synthesis and a recognition stream, a budget) this checks that every scrape target is
up, that the token series equal the Usage ledger, that every dashboard panel's PromQL returns data,
that one trace follows the chat from the gateway through Conversation, Orchestrator and Knowledge
to Triton with correct parent links, and that no metrics endpoint is reachable through the gateway.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from aimesh.speech.v1 import speech_pb2, speech_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from scripts import prometheus
from scripts.stack import COMPONENTS, Stack
from tests.support.accounts import Account, sign_up, upload_document
from tests.support.mesh import TestMesh, free_port

REPO = Path(__file__).resolve().parents[3]
DASHBOARDS = REPO / "observability" / "grafana" / "dashboards"
BLOCKED = "forbidden phrase"
DOCUMENT = (
    "Harbor Lights operating manual.\n\n"
    "The lighthouse lamp is switched on thirty minutes before sunset. "
    "Spare bulbs are stored in the iron cabinet on the second landing.\n"
)

@dataclass
class SpanSink(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span with its service name."""

    spans: list[tuple[str, object]] = field(default_factory=list)

    async def Export(self, request, context):  # type: ignore[no-untyped-def]
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope in resource_spans.scope_spans:
                self.spans.extend((service, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@dataclass
class Observed:
    stack: Stack
    gateway: str
    prometheus: str
    sink: SpanSink


@pytest.fixture(scope="module")
async def observed(mesh: TestMesh) -> AsyncIterator[Observed]:
    assert prometheus.binary(), "the prometheus binary comes with Debian's package (scripts/setup)"
    mesh.ensure_triton()
    sink = SpanSink()
    receiver = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, receiver)
    otlp_port = receiver.add_insecure_port("127.0.0.1:0")
    await receiver.start()
    var_dir = mesh.var_dir / "observability"
    overrides = dict(mesh.env)
    for service in COMPONENTS:
        overrides[f"AIMESH_{service.upper()}_ADDR"] = f"127.0.0.1:{free_port()}"
        overrides[f"AIMESH_{service.upper()}_METRICS_ADDR"] = f"127.0.0.1:{free_port()}"
    overrides.update({
        "AIMESH_GATEWAY_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_GATEWAY_ADMIN_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_PROMETHEUS_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_OTLP_ENDPOINT": f"127.0.0.1:{otlp_port}",
        "AIMESH_TRACE_SAMPLE_PERCENT": "100",  # every request traced (the default samples 10 %)
        "AIMESH_VAR_DIR": str(var_dir),
        "AIMESH_CERTS_DIR": str(mesh.settings.certs_path),
        "AIMESH_GUARDRAIL_BLOCKLIST": BLOCKED,
    })
    stack = Stack.create(overrides, log_dir=var_dir / "log")
    try:
        for service in COMPONENTS:
            stack.start_service(service)
        stack.start_gateway()
        # Speech is SERVING once its warm-up answered (up to a minute or two on a loaded machine).
        stack.wait_ready(list(stack.processes), timeout=300)
        assert stack.start_prometheus() is not None
        stack.wait_ready(["prometheus"], timeout=60)
        settings = stack.settings
        yield Observed(stack, settings.gateway_addr, settings.prometheus_addr, sink)
    finally:
        stack.stop_all()
        await receiver.stop(None)


async def _query(http: httpx.AsyncClient, prometheus_addr: str, expr: str) -> list[dict]:  # type: ignore[type-arg]
    reply = await http.get(f"http://{prometheus_addr}/api/v1/query", params={"query": expr})
    body = reply.json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]  # type: ignore[no-any-return]


async def _eventually(check, timeout: float = 45.0, interval: float = 1.0):  # type: ignore[no-untyped-def]
    """Poll `check` (async, returns a falsy value while not yet true) until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(interval)


async def _session(http: httpx.AsyncClient, gateway: str) -> Account:
    """What a user does in a first hour, through the public gateway."""
    account = await sign_up(http, "Observed")
    document = await upload_document(http, account, "manual", DOCUMENT)
    for _ in range(2):  # the second search is a cache hit
        reply = await http.post("/v1/documents:search", headers=account.bearer,
                                json={"query": "where are the spare bulbs"})
        assert reply.status_code == 200, reply.text
    conversation = (await http.post("/v1/conversations", headers=account.bearer,
                                    json={"title": "manual"})).json()["name"]
    for content in ("Where are the spare bulbs stored?", f"tell me the {BLOCKED}"):
        async with http.stream("POST", f"/v1/{conversation}:sendMessage", headers=account.bearer,
                               json={"content": content, "retrieval": {"enabled": True}}) as reply:
            assert reply.status_code == 200
            async for _ in reply.aiter_lines():
                pass
    reply = await http.post("/v1/speech:synthesize", headers=account.bearer, json={
        "text": "please turn on the kitchen lights",
        "audioConfig": {"encoding": "AUDIO_ENCODING_LINEAR16", "sampleRateHertz": 16000}})
    assert reply.status_code == 200, reply.text
    pcm = base64.b64decode(reply.json()["audioContent"])
    reply = await http.get("/openai/v1/models", headers=account.bearer)  # the HTTP edge
    assert reply.status_code == 200, reply.text
    await _recognize(gateway, account, pcm)
    reply = await http.post("/v1/budgets", headers=account.bearer, json={
        "displayName": "monthly", "scope": "SCOPE_ORGANIZATION", "monthlyTokenLimit": "1000000"})
    assert reply.status_code == 200, reply.text
    assert (await http.get(f"/v1/{reply.json()['name']}", headers=account.bearer)).status_code == 200
    return account


async def _recognize(gateway: str, account: Account, pcm: bytes) -> None:
    audio = np.concatenate([np.frombuffer(pcm, dtype="<i2"), np.zeros(16000, dtype=np.int16)])
    config = speech_pb2.StreamingRecognitionConfig(config=speech_pb2.RecognitionConfig(
        encoding=speech_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000, language_code="en-US"))

    async def requests() -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
        yield speech_pb2.StreamingRecognizeRequest(streaming_config=config)
        for start in range(0, audio.size, 1600):
            yield speech_pb2.StreamingRecognizeRequest(audio_content=audio[start:start + 1600].tobytes())

    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = speech_pb2_grpc.SpeechServiceStub(channel)
        replies = [r async for r in stub.StreamingRecognize(
            requests(), metadata=tuple(account.bearer.items()), timeout=60)]
    assert replies


async def _true(value: bool) -> bool:
    return value


def _panel_queries() -> list[tuple[str, str, str]]:
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                queries.append((path.stem, panel["title"], target["expr"]))
    return queries


async def _ledger_tokens(http: httpx.AsyncClient, account: Account) -> dict[str, float]:
    totals = {"input": 0.0, "output": 0.0}
    kinds = {"RESOURCE_TYPE_PROMPT_TOKENS": "input", "RESOURCE_TYPE_COMPLETION_TOKENS": "output"}
    token = ""
    while True:
        reply = await http.get("/v1/usageRecords", headers=account.bearer,
                               params={"pageSize": 1000, "pageToken": token})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        for record in body.get("usageRecords", []):
            kind = kinds.get(record.get("resourceType", ""))
            if kind:
                totals[kind] += int(record["quantityMicros"]) / 1_000_000
        token = body.get("nextPageToken", "")
        if not token:
            return totals


async def test_metrics_rules_dashboards_and_one_trace_per_request(observed: Observed) -> None:
    async with httpx.AsyncClient(base_url=f"http://{observed.gateway}", timeout=60) as http:
        account = await _session(http, observed.gateway)

        # Every target is up: seven services, Envoy, Triton and Prometheus itself.
        async def all_up() -> list[dict] | None:  # type: ignore[type-arg]
            reply = await http.get(f"http://{observed.prometheus}/api/v1/targets")
            targets = reply.json()["data"]["activeTargets"]
            if len(targets) == len(COMPONENTS) + 3 and all(t["health"] == "up" for t in targets):
                return targets  # type: ignore[no-any-return]
            return None

        targets = await _eventually(all_up)
        assert targets, (await http.get(f"http://{observed.prometheus}/api/v1/targets")).json()
        assert {t["labels"].get("service") for t in targets} >= {*COMPONENTS, "gateway", "triton"}

        # Tokens in the metrics equal the tokens in Usage's ledger (the outbox drains first).
        org = account.org_id
        ledger: dict[str, float] = {}

        async def tokens_match() -> bool:
            nonlocal ledger
            ledger = await _ledger_tokens(http, account)
            series = await _query(http, observed.prometheus,
                                  f'sum by (gen_ai_token_type) (aimesh_gen_ai_tokens_total{{org="{org}"}})')
            seen = {s["metric"]["gen_ai_token_type"]: float(s["value"][1]) for s in series}
            return ledger["output"] > 0 and seen == ledger

        assert await _eventually(tokens_match), ledger

        # Every dashboard panel's PromQL returns data after this traffic.
        missing: list[str] = []
        for board, title, expr in _panel_queries():
            result = await _eventually(lambda q=expr: _query(http, observed.prometheus, q), timeout=30)
            if not result:
                missing.append(f"{board} / {title}: {expr}")
        assert not missing, "panels without data:\n" + "\n".join(missing)

        # The rules are loaded and evaluated by this Prometheus.
        rules = (await http.get(f"http://{observed.prometheus}/api/v1/rules")).json()["data"]["groups"]
        assert {g["name"] for g in rules} == {"aimesh-rpc", "aimesh-gen-ai", "aimesh-alerts"}
        assert all(r["health"] == "ok" for g in rules for r in g["rules"]), rules

        # An error names its trace: ErrorInfo.metadata.trace_id, a trace the receiver gets.
        reply = await http.get("/v1/documents/00000000-0000-4000-8000-000000000000",
                               headers=account.bearer)
        assert reply.status_code == 404, reply.text
        infos = [d for d in reply.json().get("details", []) if d.get("@type", "").endswith("ErrorInfo")]
        assert infos and len(infos[0]["metadata"]["trace_id"]) == 32, reply.text
        error_trace = bytes.fromhex(infos[0]["metadata"]["trace_id"])

        # A client that walks away from a streamed answer leaves no context-detach errors.
        conversation = (await http.post("/v1/conversations", headers=account.bearer,
                                        json={"title": "left early"})).json()["name"]
        async with http.stream("POST", f"/v1/{conversation}:sendMessage", headers=account.bearer,
                               json={"content": "Where are the spare bulbs stored?",
                                     "retrieval": {"enabled": True}}) as reply:
            async for line in reply.aiter_lines():
                if line.startswith("data:"):
                    break  # hang up after the first event
        await asyncio.sleep(2)

        # No metrics or admin endpoint is reachable through the public gateway.
        for path in ("/metrics", "/stats/prometheus", "/api/v1/targets", "/-/ready"):
            reply = await http.get(path, headers=account.bearer)
            assert reply.status_code == 404, (path, reply.status_code)

    # One trace: gateway → Conversation → Orchestrator → Knowledge → Triton, parents linked.
    async def chat_trace() -> dict[bytes, list[tuple[str, object]]] | None:
        by_trace: dict[bytes, list[tuple[str, object]]] = {}
        for service, span in list(observed.sink.spans):
            by_trace.setdefault(span.trace_id, []).append((service, span))  # type: ignore[attr-defined]
        for spans in by_trace.values():
            names = {s for s, _ in spans}
            if {"aimesh-gateway", "aimesh-conversation", "aimesh-orchestrator",
                    "aimesh-knowledge"} <= names and any(
                    getattr(span, "name", "").startswith("triton ") for _, span in spans):
                return {b"": spans}
        return None

    assert await _eventually(
        lambda: _true(any(span.trace_id == error_trace for _, span in observed.sink.spans)))  # type: ignore[attr-defined]
    logs = "".join(p.read_text(errors="replace") for p in observed.stack.log_dir.glob("*.log"))
    assert "Failed to detach context" not in logs

    found = await _eventually(chat_trace, timeout=30)
    assert found, sorted({(s, getattr(sp, "name", "")) for s, sp in observed.sink.spans})
    spans = found[b""]
    by_id = {span.span_id: (service, span) for service, span in spans}  # type: ignore[attr-defined]
    roots = [span for _, span in spans if not span.parent_span_id]  # type: ignore[attr-defined]
    assert len(roots) == 1 and by_id[roots[0].span_id][0] == "aimesh-gateway"  # type: ignore[attr-defined]
    for service, span in spans:
        if span.parent_span_id:  # type: ignore[attr-defined]
            assert span.parent_span_id in by_id, (service, span.name)  # type: ignore[attr-defined]
    servers = {(service, span.name) for service, span in spans  # type: ignore[attr-defined]
               if span.kind == span.SPAN_KIND_SERVER}  # type: ignore[attr-defined]
    assert ("aimesh-conversation", "aimesh.conversation.v1.ConversationService/SendMessage") in servers
    assert ("aimesh-orchestrator", "aimesh.orchestrator.v1.OrchestratorService/Generate") in servers
    # The Orchestrator's Generate span is a descendant of Conversation's SendMessage span.
    generate = next(span for service, span in spans if service == "aimesh-orchestrator"
                    and span.name.endswith("/Generate"))  # type: ignore[attr-defined]
    ancestors = []
    cursor = generate
    while cursor.parent_span_id:  # type: ignore[attr-defined]
        service, cursor = by_id[cursor.parent_span_id]  # type: ignore[attr-defined]
        ancestors.append(service)
    assert "aimesh-conversation" in ancestors and ancestors[-1] == "aimesh-gateway"


def test_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package (scripts/setup)"
    import subprocess

    rules = sorted(str(p) for p in (REPO / "observability" / "prometheus" / "rules").glob("*.yml"))
    tests = sorted(str(p) for p in (REPO / "observability" / "prometheus" / "tests").glob("*.yml"))
    check = subprocess.run([promtool, "check", "rules", *rules], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", *tests], capture_output=True, text=True,
                          check=False, cwd=REPO, env={**os.environ})
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_local_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """The configuration scripts/up renders (every service, Envoy, Triton, the rules) is valid.
    (The Kubernetes one uses kubernetes_sd, which Debian's Prometheus build leaves out, so
    `promtool check config` cannot parse it here; render.py --check keeps it current.)"""
    import subprocess

    from services.common.config import Settings

    config = prometheus.write_config(Settings.from_env({}), tmp_path, "127.0.0.1:9901", "127.0.0.1:8002")
    check = subprocess.run([str(shutil.which("promtool")), "check", "config", str(config)],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 1 rule files found" in check.stdout + check.stderr
