"""Issue 12 item 10: PostgreSQL restarts (every pooled connection dies) while services run.

A private cluster (tests/support/postgres.py; the shared one is never restarted) backs a
separate mesh of Auth and Conversation. After a fast restart, the very first reads and writes
on each service succeed: pooled connections are checked as they leave the pool, and an
idempotent read that still meets a broken connection runs once more. While the database is
down, callers get UNAVAILABLE (retryable) with a clean message — never INTERNAL — and no
service logs a traceback.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from aimesh.auth.v1 import auth_pb2, auth_pb2_grpc
from aimesh.conversation.v1 import conversation_pb2, conversation_pb2_grpc

from services.common import tls
from tests.support.mesh import TestMesh
from tests.support.postgres import PrivatePostgres

SERVICES = ("auth", "conversation")
CONCURRENCY = 8


@pytest.fixture(scope="module")
def private_mesh(request: pytest.FixtureRequest) -> Iterator[tuple[TestMesh, PrivatePostgres]]:
    postgres = PrivatePostgres()
    # A slow readiness probe: the test mesh's 0.5 s probe would itself discard stale
    # connections one by one and hide what the first requests after a restart meet.
    mesh = TestMesh(extra_env={"AIMESH_DATABASE_URL": postgres.url,
                               "AIMESH_HEALTH_INTERVAL_SECONDS": "30"})
    try:
        mesh.ensure(*SERVICES)
        yield mesh, postgres
    finally:
        mesh.close(keep_logs=request.session.testsfailed > 0)
        postgres.close()


def _identity(org: str) -> tuple[tuple[str, str], ...]:
    return (("x-aimesh-org", org), ("x-aimesh-subject", "users/restart-test"),
            ("x-aimesh-roles", "owner"))


async def _calls(mesh: TestMesh, org_name: str, org: str, conversation: str) -> None:
    """One read and one write on each service; raises on any failure."""
    auth = auth_pb2_grpc.AuthServiceStub(mesh.channel("auth"))
    chat = conversation_pb2_grpc.ConversationServiceStub(mesh.channel("conversation"))
    await auth.GetOrganization(auth_pb2.GetOrganizationRequest(name=org_name),
                               metadata=_identity(org), timeout=10)
    await chat.GetConversation(conversation_pb2.GetConversationRequest(name=conversation),
                               metadata=_identity(org), timeout=10)
    await chat.ListConversations(conversation_pb2.ListConversationsRequest(),
                                 metadata=_identity(org), timeout=10)
    await chat.CreateConversation(conversation_pb2.CreateConversationRequest(
        conversation=conversation_pb2.Conversation(title="after restart")),
        metadata=_identity(org), timeout=10)


def _plain_channel(mesh: TestMesh, service: str) -> grpc.aio.Channel:
    """A channel as the gateway without the mesh service config (no retries, no health gate)."""
    if mesh.settings.tls_mode != "mtls":
        return grpc.aio.insecure_channel(mesh.address(service))
    material = tls.load_identity("gateway", mesh.settings.certs_path)
    return grpc.aio.secure_channel(mesh.address(service), tls.channel_credentials(material),
                                   options=tls.channel_options(service))


def _tracebacks(mesh: TestMesh) -> dict[str, str]:
    found = {}
    for service in SERVICES:
        log = Path(mesh.stack.log_dir) / f"{service}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        if "Traceback" in text or "unhandled error" in text:
            found[service] = text[-3000:]
    return found


async def test_services_answer_after_postgres_restarts_and_say_unavailable_while_it_is_down(
    private_mesh: tuple[TestMesh, PrivatePostgres],
) -> None:
    mesh, postgres = private_mesh
    auth = auth_pb2_grpc.AuthServiceStub(mesh.channel("auth"))
    chat = conversation_pb2_grpc.ConversationServiceStub(mesh.channel("conversation"))
    signed = await auth.SignUp(auth_pb2.SignUpRequest(
        email=f"restart-{uuid.uuid4().hex[:8]}@example.com", password="correct horse battery staple",
        display_name="Restart", organization_display_name="Restart Inc"), timeout=30)
    org_name = signed.organization
    org = org_name.removeprefix("organizations/")
    created = await chat.CreateConversation(conversation_pb2.CreateConversationRequest(
        conversation=conversation_pb2.Conversation(title="before restart")),
        metadata=_identity(org), timeout=10)
    # Concurrent calls fill each pool with several connections (a readiness ping alone would
    # recycle a single stale one before the first request).
    await asyncio.gather(*[_calls(mesh, org_name, org, created.name) for _ in range(CONCURRENCY)])

    # 1. A fast restart kills every pooled connection; the first calls after it must succeed.
    postgres.restart()
    results = await asyncio.gather(
        *[_calls(mesh, org_name, org, created.name) for _ in range(CONCURRENCY)],
        return_exceptions=True)
    failures = [f"{r.code().name} {r.details()}" if isinstance(r, grpc.aio.AioRpcError) else repr(r)
                for r in results if r is not None]
    assert not failures, failures

    # 2. While the database is down: UNAVAILABLE with a clean message, for writes and reads.
    no_retries = _plain_channel(mesh, "auth")
    postgres.stop()
    try:
        calls = {
            "write": lambda: chat.CreateConversation(conversation_pb2.CreateConversationRequest(
                conversation=conversation_pb2.Conversation(title="while down")),
                metadata=_identity(org), timeout=30),
            # A mesh channel waits for the unready service (health checks, waitForReady) until
            # its deadline, by design: look at the service's own answer on a bare channel.
            "read": lambda: auth_pb2_grpc.AuthServiceStub(no_retries).GetOrganization(
                auth_pb2.GetOrganizationRequest(name=org_name), metadata=_identity(org), timeout=30),
        }
        for kind, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, (
                kind, caught.value.code(), caught.value.details())
            assert "class" not in (caught.value.details() or "")
    finally:
        postgres.start()
        await no_retries.close()

    # 3. Back up: everything answers again without restarting any service.
    await _calls(mesh, org_name, org, created.name)
    assert not _tracebacks(mesh)
