"""Every service process starts against the real PostgreSQL and Redis, migrates its schema,
reports healthy, answers reflection, rejects unknown methods cleanly and drains on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.channels import open_channel, service_descriptors
from services.common.config import SERVICES, Settings
from tests.support.mesh import TestMesh, free_port

# Services whose readiness includes their Triton models.
NEEDS_TRITON = {"orchestrator", "speech"}


@pytest.mark.parametrize("service", SERVICES)
async def test_service_starts_healthy_with_reflection(mesh: TestMesh, service: str) -> None:
    if service in NEEDS_TRITON:
        mesh.ensure_triton()
    mesh.ensure(service)
    channel = mesh.channel(service, identity="operator")  # operators may reflect; see mesh_policy
    full_names = [d.full_name for d in service_descriptors(service)]

    health = health_pb2_grpc.HealthStub(channel)
    for name in ["", *full_names]:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    listed: list[str] = []
    async for reply in reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    ):
        listed.extend(s.name for s in reply.list_services_response.service)
    for name in full_names:
        assert name in listed
    assert "grpc.health.v1.Health" in listed


@pytest.mark.parametrize("service", SERVICES)
async def test_unknown_method_is_unimplemented(mesh: TestMesh, service: str) -> None:
    mesh.ensure(service)
    full_name = service_descriptors(service)[0].full_name
    call = mesh.channel(service, identity="operator").unary_unary(f"/{full_name}/NoSuchMethod")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("service", SERVICES)
async def test_schema_migrated(mesh: TestMesh, service: str) -> None:
    mesh.ensure(service)
    async with await psycopg.AsyncConnection.connect(mesh.settings.database_url) as conn:
        row = await (
            await conn.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_schema = %s AND table_name = '_yoyo_migration'",
                (service,),
            )
        ).fetchone()
    assert row is not None and row[0] == 1


def _run_service(service: str, env_overrides: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, f"AIMESH_{service.upper()}_ADDR": f"127.0.0.1:{free_port()}", **env_overrides}
    return subprocess.run(
        [sys.executable, "-m", f"services.{service}"],
        env=env, capture_output=True, text=True, timeout=timeout,
    )


def test_bad_env_var_stops_with_one_line_naming_it() -> None:
    result = _run_service("billing", {"AIMESH_DB_POOL_MAX": "lots"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "AIMESH_DB_POOL_MAX" in lines[0] and "Traceback" not in result.stderr


def test_unreachable_database_stops_with_one_line_naming_the_address() -> None:
    port = free_port()  # nothing listens there
    result = _run_service(
        "usage", {"AIMESH_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/aimesh"}
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "AIMESH_DATABASE_URL" in lines[0]


def test_unreachable_redis_stops_with_one_line_naming_the_address() -> None:
    port = free_port()
    result = _run_service("billing", {"AIMESH_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "AIMESH_REDIS_URL" in lines[0]


async def test_sigterm_drains_and_exits_zero(mesh: TestMesh) -> None:
    """A separate process (not the shared mesh): SIGTERM while a client is connected; the server
    flips health to NOT_SERVING, finishes, and exits 0."""
    address = f"127.0.0.1:{free_port()}"
    env = {**mesh.env, "AIMESH_CONVERSATION_ADDR": address, "AIMESH_DRAIN_SECONDS": "2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "services.conversation"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        async with open_channel(Settings.from_env(env), "conversation", caller="operator") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(100):
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await __import__("asyncio").sleep(0.2)
            else:
                pytest.fail("service never became healthy")
            watch = health.Watch(health_pb2.HealthCheckRequest())
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            process.send_signal(signal.SIGTERM)
            second = await watch.read()
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        _, stderr = process.communicate(timeout=20)
        assert process.returncode == 0, stderr
        assert '"draining"' in stderr and '"stopped"' in stderr
    finally:
        if process.poll() is None:
            process.kill()
