"""A client program that uses only the installed aimesh-sdk wheel (run by test_python_sdk.py
with a fresh virtualenv's python, outside the repository). Prints one JSON object per step.

    python sdk_script.py GATEWAY flow WORKDIR        sign-up → key → upload → search → chat →
                                                     TTS → transcribe → usage, typed errors
    python sdk_script.py GATEWAY ratelimit API_KEY   calls until RateLimited
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
import uuid
from pathlib import Path

import aimesh_sdk
from aimesh.auth.v1 import auth_pb2
from aimesh.knowledge.v1 import knowledge_pb2
from aimesh.usage.v1 import usage_pb2
from aimesh_sdk import (
    AsyncClient,
    BudgetExceeded,
    Client,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)

HANDBOOK = """# Employee handbook

## Vacation
Employees receive 27 vacation days per year. Unused vacation days expire at the end of March.

## Equipment
Every engineer gets a laptop and a second monitor. Lost laptops are reported to the help desk.
"""


def out(step: str, **data: object) -> None:
    print(json.dumps({"step": step, **data}), flush=True)


def flow(gateway: str, workdir: Path) -> None:
    out("installed", sdk_file=aimesh_sdk.__file__, version=aimesh_sdk.__version__)
    owner = Client(gateway)
    email = f"sdk-{uuid.uuid4().hex[:10]}@example.com"
    pair = owner.sign_up(email, "correct horse battery staple", "SDK Test Org")
    org = pair.organization
    out("signed_up", organization=org)

    key = owner.auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(
        parent=org, api_key=auth_pb2.ApiKey(display_name="sdk-script"), request_id=str(uuid.uuid4())))
    client = Client(gateway, api_key=key.secret, deadlines={"SearchDocuments": 20})
    out("key", name=key.name, secret_shown=bool(key.secret))

    path = workdir / "handbook.md"
    path.write_text(HANDBOOK)
    progress: list[tuple[int, int]] = []
    doc = client.upload_file(path, progress=lambda sent, total: progress.append((sent, total)),
                             chunk_bytes=64)
    ready = client.wait_until_processed(doc.name, timeout=180)
    out("uploaded", name=doc.name, state=knowledge_pb2.Document.State.Name(ready.state),
        progress_calls=len(progress), last=progress[-1] if progress else None,
        total=len(HANDBOOK.encode()))

    listed = [d.name for d in client.paginate(client.knowledge.ListDocuments,
                                              knowledge_pb2.ListDocumentsRequest(), page_size=1)]
    out("listed", names=listed)

    hits = client.search("how many vacation days per year", top_k=3)
    out("searched", documents=[h.document for h in hits.results],
        texts=[h.text for h in hits.results])

    deltas: list[str] = []
    reply = client.chat("How many vacation days do employees receive per year?",
                        documents=[doc.name], on_delta=deltas.append)
    out("chat", text=reply.text, deltas=len(deltas), state=reply.state,
        citations=[c.document for c in reply.citations], conversation=reply.conversation)

    async def async_part() -> dict[str, object]:
        async with AsyncClient(gateway, api_key=key.secret) as aclient:
            areply = await aclient.chat("When do unused vacation days expire?",
                                        documents=[doc.name])
            names = [d.name async for d in aclient.paginate(
                aclient.knowledge.ListDocuments, knowledge_pb2.ListDocumentsRequest())]
            return {"text": areply.text, "citations": len(areply.citations), "names": names}

    out("async", **asyncio.run(async_part()))

    wav = workdir / "hello.wav"
    seconds = client.synthesize_to_wav("Hello from the software development kit.", wav,
                                       sample_rate=16000)
    out("tts", seconds=seconds, bytes=wav.stat().st_size)
    out("transcribed", text=client.transcribe(wav))
    recognized = client.recognize(wav)
    out("recognized", text=" ".join(r.alternatives[0].transcript for r in recognized.results
                                    if r.alternatives))

    request = usage_pb2.GetUsageSummaryRequest(
        group_by=[usage_pb2.GetUsageSummaryRequest.GROUP_BY_RESOURCE_TYPE])
    now = dt.datetime.now(dt.UTC)
    request.start_time.FromDatetime(now - dt.timedelta(days=1))
    request.end_time.FromDatetime(now + dt.timedelta(minutes=5))
    kinds: list[str] = []
    for _ in range(60):  # metering is asynchronous (outboxes): wait for it to land
        summary = owner.usage.GetUsageSummary(request)
        kinds = sorted(usage_pb2.ResourceType.Name(r.resource_type) for r in summary.rows)
        if {"RESOURCE_TYPE_CHUNKS_EMBEDDED", "RESOURCE_TYPE_CHARACTERS_SYNTHESIZED"} <= set(kinds):
            break
        time.sleep(0.5)
    out("usage", kinds=kinds)

    errors: dict[str, object] = {}
    try:
        Client(gateway, api_key="amk_bogus_0000000000").knowledge.ListDocuments(
            knowledge_pb2.ListDocumentsRequest())
    except Unauthenticated as exc:
        errors["401"] = exc.reason
    speech_only = owner.auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(
        parent=org, api_key=auth_pb2.ApiKey(display_name="speech only", scopes=["speech"])))
    try:
        Client(gateway, api_key=speech_only.secret).knowledge.ListDocuments(
            knowledge_pb2.ListDocumentsRequest())
    except PermissionDenied as exc:
        errors["403"] = exc.reason
    try:
        client.knowledge.GetDocument(knowledge_pb2.GetDocumentRequest(name="documents/nope-nope"))
    except NotFound as exc:
        errors["404"] = exc.reason
    try:
        client.knowledge.SearchDocuments(knowledge_pb2.SearchDocumentsRequest(query="", top_k=1000))
    except InvalidArgument as exc:
        errors["400"] = sorted(v.field for v in exc.field_violations)
    # A one-micro monthly cap; the priced test model reserves its worst case before answering.
    owner.usage.CreateBudget(usage_pb2.CreateBudgetRequest(budget=usage_pb2.Budget(
        display_name="tiny", scope=usage_pb2.Budget.SCOPE_ORGANIZATION,
        monthly_limit_micros=1, currency_code="USD")))
    try:
        unexpected = client.chat("How many vacation days?", model="models/priced-test")
        errors["budget"] = {"answered": unexpected.state, "model": unexpected.model,
                            "error": str(unexpected.error)}
    except BudgetExceeded as exc:  # failed in-band, after the message was stored
        errors["budget"] = {"reason": exc.reason, "budget": exc.budget,
                            "stored": exc.reply.assistant_message.state}  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - reported to the test as is
        errors["budget"] = {"raised": repr(exc)}
    out("errors", **errors)
    out("ratelimit_key", secret=key.secret, name=key.name)


def ratelimit(gateway: str, api_key: str) -> None:
    client = Client(gateway, api_key=api_key)
    ok = 0
    for _ in range(200):
        try:
            client.knowledge.ListDocuments(knowledge_pb2.ListDocumentsRequest(page_size=1))
            ok += 1
        except RateLimited as exc:
            out("ratelimited", ok=ok, retry_after=exc.retry_after, reason=exc.reason,
                code=exc.code.name)
            return
    out("ratelimited", ok=ok, retry_after=None)


if __name__ == "__main__":
    gateway, mode, arg = sys.argv[1:4]
    if mode == "flow":
        flow(gateway, Path(arg))
    else:
        ratelimit(gateway, arg)
