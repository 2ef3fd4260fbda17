"""A service is not SERVING before its first readiness check has passed.

grpc's health servicer starts the overall status as SERVING; a server that kept it until its
first check finished told probes "ready" while its dependencies were still opening. A fresh CI
run's knowledge bench restarted Knowledge, its probe passed in that window and the next search
met the unopened vector index: INTERNAL. Speech's parity test met Speech before its warm-up."""

from __future__ import annotations

import sys
import time
import uuid

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scripts.stack import grpc_healthy, health_channel
from services.common.config import Settings
from tests.support.mesh import TestMesh, free_port

NAME = "gated-service"


def overall_status(settings: Settings) -> int | None:
    """The overall health status, None while the server does not answer yet."""
    try:
        with health_channel(settings, "knowledge") as channel:
            return int(health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2).status)
    except grpc.RpcError:
        return None


def test_not_serving_until_the_first_readiness_check_passes(mesh: TestMesh) -> None:
    gate = mesh.var_dir / f"gate-{uuid.uuid4().hex}"
    env = {
        **mesh.env,
        "AIMESH_KNOWLEDGE_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_KNOWLEDGE_METRICS_ADDR": f"127.0.0.1:{free_port()}",
    }
    settings = Settings.from_env(env)
    mesh.stack.spawn(NAME, [sys.executable, "-m", "tests.support.gated_service", str(gate)],
                     lambda: grpc_healthy(settings, "knowledge"), env=env)
    try:
        deadline = time.monotonic() + 60
        seen: list[int] = []
        while len(seen) < 10:  # answers while the first check is still running
            assert mesh.stack.processes[NAME].alive(), mesh.stack.processes[NAME].log_tail()
            assert time.monotonic() < deadline, "the gated service never answered health checks"
            status = overall_status(settings)
            if status is not None:
                seen.append(status)
            time.sleep(0.05)
        assert set(seen) == {health_pb2.HealthCheckResponse.NOT_SERVING}, seen

        gate.touch()  # the dependency opens: the first check passes
        mesh.stack.wait_ready([NAME], timeout=60)
    finally:
        code = mesh.stack.stop(NAME)
    assert code == 0  # drained and exited cleanly
