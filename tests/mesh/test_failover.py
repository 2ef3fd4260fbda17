"""A replica dies mid-traffic: reads retry onto the survivor, writes fail cleanly once.

Two Usage replicas (subprocesses, mTLS) behind one round-robin channel from Billing, built
by tls.open_channel (the mesh retry service config). Replica A hangs on every call until it
is SIGKILLed with a read and a write in flight on it; replica B answers. Every idempotent
read must succeed (retried on UNAVAILABLE onto B); the write cut on A fails with UNAVAILABLE
and is not replayed (its effect, logged by A before it died, appears exactly once); no
write takes effect twice. The outcome does not depend on timing: A never answers.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from services.common import mesh_policy, tls

ROOT = Path(__file__).resolve().parents[2]
USAGE = "/aimesh.usage.v1.UsageService/"


async def _start_replica(certs_dir: Path, log: Path, delay: float) -> tuple[Any, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.mesh.mtls_server",
        str(certs_dir),
        "usage",
        str(log),
        str(delay),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    port = int(await asyncio.wait_for(proc.stdout.readline(), 30))
    return proc, port


def _log(path: Path) -> list[tuple[int, str, str]]:
    """(pid, kind, request id) per line of the replicas' shared effects log."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        pid, kind, request_id = line.split()
        out.append((int(pid), kind, request_id))
    return out


async def test_replica_killed_mid_traffic(certs_dir: Path, tmp_path: Path) -> None:
    if not mesh_policy.load_methods():
        pytest.skip(f"{mesh_policy.DESCRIPTOR_PATH} missing: run scripts/gen")
    log = tmp_path / "effects.log"
    hung, hung_port = await _start_replica(certs_dir, log, delay=600)
    good, good_port = await _start_replica(certs_dir, log, delay=0.01)
    channel = tls.open_channel(
        f"ipv4:127.0.0.1:{hung_port},127.0.0.1:{good_port}",
        caller="billing",
        callee="usage",
        mode="mtls",
        certs_dir=certs_dir,
        extra_options=[("grpc.lb_policy_name", "round_robin")],
    )

    def method(name: str) -> grpc.aio.UnaryUnaryMultiCallable:
        return channel.unary_unary(
            USAGE + name,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )

    read, write = method("GetUsageSummary"), method("ReserveBudget")
    read_errors: Counter[str] = Counter()
    writes: dict[str, str] = {}

    async def reader() -> None:
        for _ in range(10):
            try:
                await read(health_pb2.HealthCheckRequest(service=str(uuid.uuid4())), timeout=60)
            except grpc.aio.AioRpcError as exc:
                read_errors[exc.code().name] += 1

    async def writer() -> None:
        for _ in range(10):
            request_id = str(uuid.uuid4())
            try:
                await write(health_pb2.HealthCheckRequest(service=request_id), timeout=60)
                writes[request_id] = "OK"
            except grpc.aio.AioRpcError as exc:
                writes[request_id] = exc.code().name

    async def killer() -> None:
        # Kill A once it holds both a read and a write that it will never answer.
        while {k for pid, k, _ in _log(log) if pid == hung.pid} != {"read", "write"}:
            await asyncio.sleep(0.01)
        hung.send_signal(signal.SIGKILL)

    try:
        async with channel:
            await channel.channel_ready()
            work = asyncio.gather(reader(), reader(), writer(), writer(), killer())
            await asyncio.wait_for(work, 120)
    finally:
        for proc in (hung, good):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()

    assert not read_errors, f"idempotent reads failed despite retries: {read_errors}"
    effects = Counter(rid for _, kind, rid in _log(log) if kind == "write")
    assert max(effects.values()) == 1, "a write took effect twice"
    cut = {rid for pid, kind, rid in _log(log) if kind == "write" and pid == hung.pid}
    assert cut, "the hung replica never received a write"
    for request_id in cut:
        # Ambiguous outcome (applied, no answer): reported, never replayed by the channel.
        assert writes[request_id] == "UNAVAILABLE"
    for request_id, outcome in writes.items():
        # A write sent to A after it died fails before any effect; the caller retries it
        # with the same request_id if it wants to.
        assert outcome in ("OK", "UNAVAILABLE"), outcome
        if outcome == "OK":
            assert effects[request_id] == 1
    # Reads were cut on A too, and were answered by B instead.
    cut_reads = {rid for pid, kind, rid in _log(log) if kind == "read" and pid == hung.pid}
    answered = {rid for pid, kind, rid in _log(log) if kind == "read" and pid == good.pid}
    assert cut_reads and cut_reads <= answered
