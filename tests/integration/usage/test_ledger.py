"""The usage ledger against real PostgreSQL: exact totals under concurrent and retried writes,
rollups equal to the raw ledger, pagination, CSV export and bad input."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import random
import uuid
from collections import Counter

import grpc
import pytest
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from google.protobuf import timestamp_pb2

from services.common.errors import field_violations, status_from_rpc_error
from tests.support.mesh import TestMesh

RT = usage_pb2.ResourceType
GroupBy = usage_pb2.GetUsageSummaryRequest.GroupBy
UTC = dt.UTC


def ts(t: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(t)
    return stamp


def new_org() -> str:
    return f"org-{uuid.uuid4().hex[:12]}"


def record(org: str, request_id: str, rtype: int, qty: int, when: dt.datetime, model: str = "",
           key: str = "") -> usage_pb2.UsageRecord:
    return usage_pb2.UsageRecord(
        organization=f"organizations/{org}", request_id=request_id, resource_type=rtype,
        quantity_micros=qty, occur_time=ts(when), model=model, source="test",
        api_key=f"organizations/{org}/apiKeys/{key}" if key else "",
    )


def stubs(mesh: TestMesh) -> tuple[usage_pb2_grpc.UsageServiceStub, usage_pb2_grpc.UsageServiceStub,
                                    usage_pb2_grpc.UsageServiceStub]:
    """(gateway, recorder, billing): end-user reads arrive through the gateway with identity
    headers; services that did the work record it; Billing reads any org without headers."""
    return (usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="gateway")),
            usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="orchestrator")),
            usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="billing")))


def identity(org: str) -> list[tuple[str, str]]:
    return [("x-aimesh-org", org), ("x-aimesh-subject", "users/tester"), ("x-aimesh-roles", "owner")]


async def test_concurrent_records_with_retried_duplicates_total_exactly(mesh: TestMesh) -> None:
    mesh.ensure("usage")
    stub, recorder, billing = stubs(mesh)
    org = new_org()
    rng = random.Random(8)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    types = [RT.RESOURCE_TYPE_PROMPT_TOKENS, RT.RESOURCE_TYPE_COMPLETION_TOKENS,
             RT.RESOURCE_TYPE_AUDIO_SECONDS]
    models = ["models/a", "models/b"]
    records = [
        record(org, f"req-{i}", rng.choice(types), rng.randrange(0, 5_000_000_000),
               now - dt.timedelta(hours=rng.randrange(0, 72)), rng.choice(models))
        for i in range(1000)
    ]
    expected: Counter[tuple[int, str]] = Counter()
    for r in records:
        expected[(r.resource_type, r.model)] += r.quantity_micros

    # 1,000 single-record calls plus 300 retries of random records, all at once; then batches
    # that overlap each other (and repeat a record inside one batch).
    calls = [usage_pb2.RecordUsageRequest(records=[r]) for r in records]
    calls += [usage_pb2.RecordUsageRequest(records=[rng.choice(records)]) for _ in range(300)]
    rng.shuffle(calls)
    batches = [records[i:i + 100] + [records[i]] for i in range(0, 1000, 100)]
    calls += [usage_pb2.RecordUsageRequest(records=b) for b in batches]
    # At most 100 RPCs in flight on the one test channel (a loaded 2-core machine otherwise
    # sees HTTP/2 streams reset); the writes still race on the same keys and rollup rows.
    gate = asyncio.Semaphore(100)

    async def send(call: usage_pb2.RecordUsageRequest) -> usage_pb2.RecordUsageResponse:
        async with gate:
            return await recorder.RecordUsage(call, timeout=60)

    replies = await asyncio.gather(*(send(c) for c in calls))
    assert sum(r.accepted_count for r in replies) == 1000
    assert sum(r.duplicate_count for r in replies) == 300 + sum(len(b) for b in batches)

    start = (now - dt.timedelta(days=4)).replace(hour=0, minute=0, second=0)
    end = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0)
    for s, e in ((start, end), (start + dt.timedelta(seconds=1), now + dt.timedelta(seconds=1))):
        # Whole days read the rollup; the odd range reads the ledger: both must be exact.
        summary = await stub.GetUsageSummary(
            usage_pb2.GetUsageSummaryRequest(
                start_time=ts(s), end_time=ts(e),
                group_by=[GroupBy.GROUP_BY_RESOURCE_TYPE, GroupBy.GROUP_BY_MODEL],
            ),
            metadata=identity(org), timeout=10,
        )
        got = {(row.resource_type, row.model): row.quantity_micros for row in summary.rows}
        assert got == dict(expected)
        assert sum(row.record_count for row in summary.rows) == 1000

    by_day = await billing.GetUsageSummary(
        usage_pb2.GetUsageSummaryRequest(
            organization=f"organizations/{org}", start_time=ts(start), end_time=ts(end),
            group_by=[GroupBy.GROUP_BY_DAY],
        ),
        timeout=10,
    )
    per_day: Counter[tuple[int, dt.date]] = Counter()
    for r in records:
        per_day[(r.resource_type, r.occur_time.ToDatetime(tzinfo=UTC).date())] += r.quantity_micros
    got_days = {(row.resource_type, dt.date(row.day.year, row.day.month, row.day.day)): row.quantity_micros
                for row in by_day.rows}
    assert got_days == dict(per_day)

    # The CSV export of the same ledger: chunks of at most 64 KiB ending on line boundaries.
    chunks = [c.data async for c in billing.ExportUsageRecords(
        usage_pb2.ExportUsageRecordsRequest(organization=f"organizations/{org}", start_time=ts(start),
                                            end_time=ts(end)), timeout=30)]
    assert len(chunks) > 1 and all(len(c) <= 64 * 1024 and c.endswith(b"\r\n") for c in chunks)
    exported = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert len(exported) == 1000
    assert sum(int(r["quantity_micros"]) for r in exported) == sum(expected.values())

    if mesh.mtls_only("RecordUsage refused to the gateway"):
        # Ledger writes never come from the gateway: an end user cannot credit usage.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RecordUsage(usage_pb2.RecordUsageRequest(records=records[:1]),
                                   metadata=identity(org), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_list_paginates_newest_first_and_export_is_csv(mesh: TestMesh) -> None:
    mesh.ensure("usage")
    stub, recorder, _ = stubs(mesh)
    org = new_org()
    base = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=2)
    records = [
        record(org, f"r{i}", RT.RESOURCE_TYPE_SEARCHES, 1_000_000, base + dt.timedelta(seconds=i),
               key="k1" if i % 2 else "k2")
        for i in range(25)
    ]
    records.append(record(org, 'quote"d,id', RT.RESOURCE_TYPE_REQUESTS, 1_000_000, base, model="m,1"))
    await recorder.RecordUsage(usage_pb2.RecordUsageRequest(records=records), timeout=10)

    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListUsageRecords(
            usage_pb2.ListUsageRecordsRequest(page_size=7, page_token=token,
                                              resource_type=RT.RESOURCE_TYPE_SEARCHES),
            metadata=identity(org), timeout=10,
        )
        seen.extend(r.request_id for r in page.usage_records)
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"r{i}" for i in reversed(range(25))]
    keyed = await stub.ListUsageRecords(
        usage_pb2.ListUsageRecordsRequest(api_key=f"organizations/{org}/apiKeys/k1"),
        metadata=identity(org), timeout=10,
    )
    assert len(keyed.usage_records) == 12

    body = b""
    async for chunk in stub.ExportUsageRecords(
        usage_pb2.ExportUsageRecordsRequest(
            start_time=ts(base - dt.timedelta(minutes=1)), end_time=ts(base + dt.timedelta(hours=1))
        ),
        metadata=identity(org), timeout=10,
    ):
        assert chunk.content_type == "text/csv"
        body += chunk.data
    assert body.startswith(b"occur_time,resource_type,model,quantity_micros,api_key,user,request_id,name\r\n")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert len(rows) == 26
    assert {r["request_id"] for r in rows} >= {'quote"d,id', "r0", "r24"}
    assert next(r for r in rows if r["request_id"] == 'quote"d,id')["model"] == "m,1"


async def test_bad_records_name_every_bad_field(mesh: TestMesh) -> None:
    mesh.ensure("usage")
    stub, recorder, _ = stubs(mesh)
    org = new_org()
    now = dt.datetime.now(UTC)
    bad = [
        record(org, "ok", RT.RESOURCE_TYPE_SEARCHES, 1, now),
        record(org, "neg", RT.RESOURCE_TYPE_SEARCHES, -5, now),
        record(org, "unknown", 99, 1, now),
        record(org, "future", RT.RESOURCE_TYPE_SEARCHES, 1, now + dt.timedelta(hours=1)),
        record(org, "", RT.RESOURCE_TYPE_UNSPECIFIED, 1, now),
        usage_pb2.UsageRecord(organization="org", request_id="x", resource_type=1, quantity_micros=1),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await recorder.RecordUsage(usage_pb2.RecordUsageRequest(records=bad), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_from_rpc_error(err.value)
    assert status is not None
    fields = {f for f, _ in field_violations(status)}
    assert fields == {
        "records[1].quantity_micros", "records[2].resource_type", "records[3].occur_time",
        "records[4].request_id", "records[4].resource_type", "records[5].organization",
        "records[5].occur_time",
    }
    # Nothing of the rejected batch was written.
    page = await stub.ListUsageRecords(usage_pb2.ListUsageRecordsRequest(), metadata=identity(org), timeout=10)
    assert len(page.usage_records) == 0

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetUsageSummary(
            usage_pb2.GetUsageSummaryRequest(start_time=ts(now), end_time=ts(now - dt.timedelta(days=1)),
                                             group_by=[GroupBy.GROUP_BY_UNSPECIFIED]),
            metadata=identity(org), timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_from_rpc_error(err.value)
    assert status is not None
    assert {f for f, _ in field_violations(status)} == {"end_time", "group_by[0]"}

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetUsageSummary(
            usage_pb2.GetUsageSummaryRequest(organization="organizations/someone-else",
                                             start_time=ts(now - dt.timedelta(days=1)), end_time=ts(now)),
            metadata=identity(org), timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
