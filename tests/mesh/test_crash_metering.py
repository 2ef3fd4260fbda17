"""Metering survives SIGKILL: Usage, and separately each metering caller (Knowledge, Speech,
Orchestrator), is killed with its whole process group mid-traffic and restarted; afterwards
every piece of work a client saw succeed is in the ledger exactly once, with the quantity the
reply reported, and nothing is in the ledger that was never asked for.

Callers meter through the durable outbox in their own schema, inside the transaction of the
work or before the reply is sent (services/common/usage_client.py), so a reply the client got
implies a committed usage record. Work cut off by the kill (the client saw an error) may or may
not be billed, but at most once. Only processes this test mesh started are killed: never the
shared Triton, PostgreSQL or Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import pytest
from aimesh.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from aimesh.orchestrator.v1 import orchestrator_pb2 as opb
from aimesh.orchestrator.v1 import orchestrator_pb2_grpc
from aimesh.speech.v1 import speech_pb2, speech_pb2_grpc

from services.common.triton import EMBEDDING_MODEL, TritonClient
from tests.support.ledger import ledger
from tests.support.mesh import TestMesh

WORKERS = 6
KILL_AFTER_SECONDS = 0.5  # after the first replies: calls are in flight, some mid-metering
PROGRESS_TIMEOUT_SECONDS = 120.0
# A restarted service waits for its Triton models and database: slow on a loaded machine.
RESTART_TIMEOUT_SECONDS = 600.0
# Errors a client sees while the service it calls is dead or restarting.
CUT_OFF = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
)


@dataclass
class Work:
    """What the clients saw: ledger request_id -> quantity_micros for each success."""

    org: str
    done: dict[str, int] = field(default_factory=dict)
    attempted: set[str] = field(default_factory=set)  # ledger ids of every call started
    cut_off: int = 0

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [
            ("x-aimesh-org", self.org),
            ("x-aimesh-subject", "users/crash-test"),
            ("x-aimesh-roles", "member"),
        ]


# --- one kind of traffic per metering caller --------------------------------------------


async def search_once(mesh: TestMesh, work: Work) -> None:
    rid = str(uuid.uuid4())
    work.attempted.add(f"{rid}/searches")
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(mesh.channel("knowledge"))
    await stub.SearchDocuments(
        knowledge_pb2.SearchDocumentsRequest(query="crash", mode=knowledge_pb2.SEARCH_MODE_KEYWORD),
        metadata=[*work.headers, ("x-request-id", rid)],
        timeout=10,
    )
    work.done[f"{rid}/searches"] = 1_000_000


SPOKEN = "Every character is billed once."


async def synthesize_once(mesh: TestMesh, work: Work) -> None:
    rid = str(uuid.uuid4())
    work.attempted.add(f"{rid}/characters_synthesized")
    stub = speech_pb2_grpc.SpeechServiceStub(mesh.channel("speech"))
    reply = await stub.Synthesize(
        speech_pb2.SynthesizeRequest(
            text=SPOKEN,
            request_id=rid,
            audio_config=speech_pb2.AudioOutputConfig(
                encoding=speech_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000
            ),
        ),
        metadata=work.headers,
        timeout=30,
    )
    work.done[f"{rid}/characters_synthesized"] = reply.billed_characters * 1_000_000


async def generate_once(mesh: TestMesh, work: Work) -> None:
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(
        mesh.channel("orchestrator", identity="conversation")
    )
    request = opb.GenerateRequest(
        model="models/grounded-extractive-v1",
        messages=[
            opb.ChatMessage(
                role=opb.ROLE_SYSTEM, content="The lighthouse was built in 1871 of granite."
            ),
            opb.ChatMessage(role=opb.ROLE_USER, content="When was the lighthouse built?"),
        ],
    )
    generation = ""
    async for event in stub.Generate(request, metadata=work.headers, timeout=60):
        if event.HasField("metadata"):
            generation = event.metadata.generation_id
            work.attempted.update(
                {f"{generation}/prompt_tokens", f"{generation}/completion_tokens"}
            )
        if event.HasField("completion"):
            usage = event.completion.usage
            assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
            work.done[f"{generation}/prompt_tokens"] = usage.prompt_tokens * 1_000_000
            work.done[f"{generation}/completion_tokens"] = usage.completion_tokens * 1_000_000


Traffic = Callable[[TestMesh, Work], Awaitable[None]]


# --- the harness --------------------------------------------------------------------------


async def run_and_crash(mesh: TestMesh, traffic: Traffic, victim: str, work: Work) -> None:
    """WORKERS clients loop on `traffic` while `victim` is SIGKILLed and restarted."""
    stop = asyncio.Event()
    unexpected: list[str] = []

    async def client() -> None:
        while not stop.is_set():
            try:
                await traffic(mesh, work)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in CUT_OFF:
                    unexpected.append(f"{exc.code().name}: {exc.details()}")
                work.cut_off += 1
                await asyncio.sleep(0.05)

    async def progress(at_least: int) -> None:
        # Kill (and stop) only while work is really in flight, however slow this machine is.
        deadline = asyncio.get_running_loop().time() + PROGRESS_TIMEOUT_SECONDS
        while len(work.done) < at_least and not unexpected:
            assert asyncio.get_running_loop().time() < deadline, (
                f"stuck at {len(work.done)} replies"
            )
            await asyncio.sleep(0.05)

    clients = [asyncio.ensure_future(client()) for _ in range(WORKERS)]
    try:
        await progress(WORKERS)
        await asyncio.sleep(KILL_AFTER_SECONDS)
        before = len(work.done)
        mesh.crash(victim)
        await asyncio.to_thread(mesh.ensure, victim, timeout=RESTART_TIMEOUT_SECONDS)
        await progress(len(work.done) + WORKERS)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert not unexpected, unexpected[:5]
    assert len(work.done) > before > 0


async def assert_metered_exactly_once(mesh: TestMesh, work: Work, timeout: float = 90.0) -> None:
    """Waits for the outboxes to drain, then compares the ledger with the work done."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        records = await ledger(mesh, work.org)
        ids = [r.request_id for r in records]
        if set(work.done) <= set(ids) or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)  # would anything arrive twice, late?
    records = await ledger(mesh, work.org)
    ids = [r.request_id for r in records]
    missing = set(work.done) - set(ids)
    assert not missing, (
        f"{len(missing)} of {len(work.done)} replies never billed, e.g. {sorted(missing)[:3]}"
    )
    assert len(ids) == len(set(ids)), "a usage record was counted twice"
    assert set(ids) <= work.attempted, (
        f"billed for work never asked: {sorted(set(ids) - work.attempted)[:3]}"
    )
    got = {r.request_id: r.quantity_micros for r in records}
    assert {i: got[i] for i in work.done} == work.done


# --- the tests ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def metering_mesh(mesh: TestMesh) -> TestMesh:
    url = mesh.ensure_triton()
    async with TritonClient(url) as triton:
        await triton.wait_until_ready([EMBEDDING_MODEL], timeout=300)
    mesh.ensure("usage", "knowledge", "speech", "orchestrator", timeout=RESTART_TIMEOUT_SECONDS)
    return mesh


def new_work() -> Work:
    return Work(org=f"crash-{uuid.uuid4().hex[:12]}")


async def test_usage_killed_mid_traffic_loses_and_doubles_nothing(metering_mesh: TestMesh) -> None:
    """Usage dies while Knowledge meters searches: the outbox holds them until it is back."""
    work = new_work()
    await run_and_crash(metering_mesh, search_once, "usage", work)
    assert work.cut_off == 0, "Knowledge's searches must not depend on Usage being up"
    await assert_metered_exactly_once(metering_mesh, work)


@pytest.mark.parametrize(
    ("victim", "traffic"),
    [
        ("knowledge", search_once),
        ("speech", synthesize_once),
        ("orchestrator", generate_once),
    ],
    ids=["knowledge", "speech", "orchestrator"],
)
async def test_metering_caller_killed_mid_traffic(
    metering_mesh: TestMesh, victim: str, traffic: Traffic
) -> None:
    work = new_work()
    await run_and_crash(metering_mesh, traffic, victim, work)
    await assert_metered_exactly_once(metering_mesh, work)
