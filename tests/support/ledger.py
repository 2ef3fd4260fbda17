"""Usage's ledger as Billing reads it, for tests of every area that meters."""

from __future__ import annotations

from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

from tests.support.mesh import TestMesh


async def ledger(mesh: TestMesh, org: str) -> list[usage_pb2.UsageRecord]:
    """Every usage record of organization `org` (its id), newest first, page by page, read
    without end-user headers as Billing does."""
    stub = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="billing"))
    records: list[usage_pb2.UsageRecord] = []
    token = ""
    while True:
        page = await stub.ListUsageRecords(
            usage_pb2.ListUsageRecordsRequest(
                organization=f"organizations/{org}", page_size=1000, page_token=token
            ),
            timeout=30,
        )
        records.extend(page.usage_records)
        token = page.next_page_token
        if not token:
            return records
