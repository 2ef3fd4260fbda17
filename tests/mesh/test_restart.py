"""A real service is killed (SIGKILL) and restarted while callers keep working.

Usage runs in the session mesh (mTLS, the mesh retry config). Readers call an idempotent read
as Billing does; writers record usage as Orchestrator does, re-sending some batches as a retry
would. Idempotent methods wait for the restarting peer (waitForReady) and retry calls cut
mid-flight (UNAVAILABLE), so not one call fails; every record lands exactly once because the
ledger dedupes on request_id.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import grpc
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from google.protobuf import timestamp_pb2

from tests.support.ledger import ledger
from tests.support.mesh import TestMesh

READERS = 4
WRITERS = 2


def _record(org: str, request_id: str) -> usage_pb2.UsageRecord:
    now = timestamp_pb2.Timestamp()
    now.FromDatetime(dt.datetime.now(dt.UTC))
    return usage_pb2.UsageRecord(
        organization=f"organizations/{org}",
        request_id=request_id,
        resource_type=usage_pb2.RESOURCE_TYPE_REQUESTS,
        quantity_micros=1_000_000,
        occur_time=now,
        source="restart-test",
    )


async def test_usage_killed_and_restarted_under_load(mesh: TestMesh) -> None:
    mesh.ensure("usage")
    org = f"o_{uuid.uuid4().hex[:12]}"
    reads = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="billing"))
    writes = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="orchestrator"))
    stop = asyncio.Event()
    failures: list[tuple[str, grpc.StatusCode]] = []
    sent: set[str] = set()
    done = {"reads": 0, "writes": 0}

    async def reader() -> None:
        request = usage_pb2.GetRateLimitPolicyRequest(name=f"organizations/{org}/rateLimitPolicy")
        while not stop.is_set():
            try:
                await reads.GetRateLimitPolicy(request, timeout=30)
                done["reads"] += 1
            except grpc.aio.AioRpcError as exc:
                failures.append(("GetRateLimitPolicy", exc.code()))

    async def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            ids = [f"restart-{w}-{i}-{n}" for n in range(5)]
            batch = usage_pb2.RecordUsageRequest(records=[_record(org, r) for r in ids])
            for _ in range(2 if i % 3 == 0 else 1):  # every third batch is sent twice
                try:
                    await writes.RecordUsage(batch, timeout=30)
                    sent.update(ids)
                    done["writes"] += 1
                except grpc.aio.AioRpcError as exc:
                    failures.append(("RecordUsage", exc.code()))
            i += 1

    tasks = [asyncio.ensure_future(reader()) for _ in range(READERS)]
    tasks += [asyncio.ensure_future(writer(w)) for w in range(WRITERS)]
    try:
        await asyncio.sleep(1.0)  # traffic is flowing
        before = dict(done)
        victim = mesh.stack.processes["usage"].popen
        victim.kill()
        await asyncio.to_thread(victim.wait)
        mesh.stop("usage")
        await asyncio.to_thread(mesh.ensure, "usage")
        await asyncio.sleep(1.0)  # and flowing again
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    assert not failures, failures[:10]
    assert done["reads"] > before["reads"] and done["writes"] > before["writes"], (before, done)
    listed = await ledger(mesh, org)
    request_ids = [r.request_id for r in listed]
    assert len(request_ids) == len(set(request_ids)), "a record was counted twice"
    assert set(request_ids) == sent
