"""services/common/usage_client.py as a calling service uses it: the outbox in the caller's own
schema survives Usage being down (every record arrives exactly once after it is back), invalid
records are parked instead of blocking the queue, and budget holds settle or release."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from google.protobuf import timestamp_pb2

from services.common.channels import Channels
from services.common.db import Database
from services.common.errors import ServiceError
from services.common.server import Runtime
from services.common.identity import Identity
from services.common.usage_client import ResourceType, UsageClient, to_micros
from tests.support.ledger import ledger
from tests.support.mesh import TestMesh

CALLER_SCHEMA = "usage_client_test"


@pytest.fixture
async def caller(mesh: TestMesh) -> AsyncIterator[tuple[Runtime, UsageClient]]:
    """A stand-in calling service: its own schema and a UsageClient with a running drainer."""
    db = Database(mesh.settings.database_url, CALLER_SCHEMA, 4)
    # The outbox comes from a metering service's own migration, as in production.
    await db.migrate(Path(__file__).resolve().parents[3] / "services" / "orchestrator" / "migrations")
    await db.open()
    # Short backoff so the test does not wait out production delays.
    settings = dataclasses.replace(
        mesh.settings, usage_outbox_poll_seconds=0.2, usage_outbox_max_backoff_seconds=1.0
    )
    runtime = Runtime(name="testcaller", settings=settings, db=db, cache=None)
    # Calls as a service that records usage (the test process itself is "operator", which the
    # caller graph rightly refuses ledger writes); registered as the runtime's shared client.
    client = UsageClient(runtime, Channels(settings, caller="knowledge"))
    try:
        yield runtime, client
    finally:
        for task in runtime.tasks:
            task.cancel()
        await asyncio.gather(*runtime.tasks, return_exceptions=True)
        await client.channels.close()
        await db.close()


def billing_reader(mesh: TestMesh) -> usage_pb2_grpc.UsageServiceStub:
    """Reads of any organization's ledger without end-user headers: what Billing does."""
    return usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="billing"))


async def ledger_ids(mesh: TestMesh, org: str) -> list[str]:
    return [r.request_id for r in await ledger(mesh, org)]


async def wait_until(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.2)


async def test_usage_down_delays_but_never_drops(mesh: TestMesh, caller: tuple[Runtime, UsageClient]) -> None:
    _, client = caller
    mesh.ensure("usage")
    org = f"org-{uuid.uuid4().hex[:12]}"

    async def produce(prefix: str, n: int) -> None:
        for i in range(n):
            await client.meter(Identity(org, "users/u"), ResourceType.RESOURCE_TYPE_PROMPT_TOKENS,
                               10 + i, f"{prefix}-{i}", model="models/m")
            await asyncio.sleep(0.005)

    await produce("before", 50)
    mesh.stop("usage")
    await produce("during", 150)  # the caller keeps working while Usage is gone
    assert await client.pending() >= 150
    mesh.ensure("usage")
    await produce("after", 50)
    await wait_until(lambda: _empty(client))
    ids = await ledger_ids(mesh, org)
    expected = {f"{p}-{i}/prompt_tokens" for p, n in (("before", 50), ("during", 150), ("after", 50))
                for i in range(n)}
    assert len(ids) == len(expected) and set(ids) == expected  # each exactly once

    stub = billing_reader(mesh)
    now = dt.datetime.now(dt.UTC)
    s, e = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    s.FromDatetime(now - dt.timedelta(hours=1))
    e.FromDatetime(now + dt.timedelta(minutes=1))
    summary = await stub.GetUsageSummary(usage_pb2.GetUsageSummaryRequest(
        organization=f"organizations/{org}", start_time=s, end_time=e), timeout=10)
    total = sum(10 + i for _, n in (("b", 50), ("d", 150), ("a", 50)) for i in range(n))
    assert [r.quantity_micros for r in summary.rows] == [total * 1_000_000]


async def _empty(client: UsageClient) -> bool:
    return await client.pending() == 0


async def test_redelivery_after_lost_ack_is_not_double_counted(mesh: TestMesh, caller: tuple[Runtime, UsageClient]) -> None:
    _, client = caller
    mesh.ensure("usage")
    org = f"org-{uuid.uuid4().hex[:12]}"
    await client.meter(Identity(org, "users/u"), ResourceType.RESOURCE_TYPE_SEARCHES, 1, "once")
    async with client.db.connection() as conn:
        cur = await conn.execute("SELECT record FROM usage_outbox ORDER BY id DESC LIMIT 1")
        record = usage_pb2.UsageRecord.FromString(bytes((await cur.fetchone())["record"]))
    # Simulate a delivery whose acknowledgement was lost: Usage has it, the outbox still too.
    await client.stub.RecordUsage(usage_pb2.RecordUsageRequest(records=[record]), timeout=10)
    await client._enqueue([record])
    await wait_until(lambda: _empty(client))
    assert await ledger_ids(mesh, org) == ["once/searches"]


async def test_invalid_records_are_parked_not_blocking(mesh: TestMesh, caller: tuple[Runtime, UsageClient]) -> None:
    runtime, client = caller
    mesh.ensure("usage")
    org = f"org-{uuid.uuid4().hex[:12]}"
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=90)
    async with runtime.db.connection() as conn:  # type: ignore[union-attr]
        await conn.execute("DELETE FROM usage_outbox WHERE dead_reason IS NOT NULL")
        # Joins the caller's transaction: both rows commit together.
        payer = Identity(org, "users/u")
        await client.meter(payer, ResourceType.RESOURCE_TYPE_SEARCHES, 1, "too-old", occur_time=old, conn=conn)
        await client.meter(payer, ResourceType.RESOURCE_TYPE_SEARCHES, 1, "fine", conn=conn)
    await wait_until(lambda: _empty(client))
    assert await ledger_ids(mesh, org) == ["fine/searches"]
    async with runtime.db.connection() as conn:  # type: ignore[union-attr]
        cur = await conn.execute("SELECT dead_reason FROM usage_outbox WHERE dead_reason IS NOT NULL")
        reasons = [r["dead_reason"] for r in await cur.fetchall()]
    assert len(reasons) == 1 and "occur_time" in reasons[0]


def test_quantities_are_exact_and_validated() -> None:
    assert to_micros(Decimal("2.5")) == 2_500_000
    assert to_micros(0.1) == 100_000
    assert to_micros("1.0000005") == 1_000_001  # half-up at the micro
    assert to_micros(7) == 7_000_000
    for bad in (-1, float("nan"), float("inf"), "abc"):
        with pytest.raises(ValueError):
            to_micros(bad)  # type: ignore[arg-type]


async def test_reserve_settles_releases_and_propagates_budget_errors(
    mesh: TestMesh, caller: tuple[Runtime, UsageClient]
) -> None:
    _, client = caller
    mesh.ensure("usage")
    org = f"org-{uuid.uuid4().hex[:12]}"
    stub = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="gateway"))
    owner = [("x-aimesh-org", org), ("x-aimesh-subject", "users/o"), ("x-aimesh-roles", "owner")]
    budget = await stub.CreateBudget(usage_pb2.CreateBudgetRequest(budget=usage_pb2.Budget(
        scope=usage_pb2.Budget.SCOPE_ORGANIZATION, monthly_limit_micros=1000, currency_code="USD")),
        metadata=owner, timeout=10)

    async with client.reserve(org=org, estimated_amount_micros=600, currency_code="USD") as hold:
        hold.settle(550)
    with pytest.raises(RuntimeError):
        async with client.reserve(org=org, estimated_amount_micros=400, currency_code="USD"):
            raise RuntimeError("work failed")  # released: nothing spent
    with pytest.raises(ServiceError) as err:
        async with client.reserve(org=org, estimated_amount_micros=451, currency_code="USD"):
            pytest.fail("must not run over budget")
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.reason == "BUDGET_EXCEEDED"
    assert err.value.metadata["budget"] == budget.name
    current = await stub.GetBudget(usage_pb2.GetBudgetRequest(name=budget.name), metadata=owner, timeout=10)
    assert (current.spent_micros, current.reserved_micros) == (550, 0)


async def test_meter_derives_payer_and_ids_from_the_identity(
    mesh: TestMesh, caller: tuple[Runtime, UsageClient]
) -> None:
    _, client = caller
    mesh.ensure("usage")
    org = f"org-{uuid.uuid4().hex[:12]}"
    await client.meter(Identity(org, "users/alice"), ResourceType.RESOURCE_TYPE_SEARCHES, 1, "s-1")
    await client.meter(Identity(f"organizations/{org}", "apiKeys/k9", key_id="k9"),
                       ResourceType.RESOURCE_TYPE_CHUNKS_EMBEDDED, 12, "c-1")
    await client.meter(Identity(org, "users/alice"), ResourceType.RESOURCE_TYPE_SEARCHES, 0, "zero")
    await client.flush()
    page = await billing_reader(mesh).ListUsageRecords(usage_pb2.ListUsageRecordsRequest(
        organization=f"organizations/{org}"), timeout=10)
    got = {r.request_id: r for r in page.usage_records}
    assert set(got) == {"s-1/searches", "c-1/chunks_embedded"}  # a zero quantity bills nothing
    assert (got["s-1/searches"].user, got["s-1/searches"].api_key) == ("users/alice", "")
    assert got["c-1/chunks_embedded"].api_key == f"organizations/{org}/apiKeys/k9"
    assert got["c-1/chunks_embedded"].user == ""
    assert got["c-1/chunks_embedded"].quantity_micros == 12_000_000
    assert got["c-1/chunks_embedded"].source == "testcaller"
    with pytest.raises(ValueError):
        await client.meter(Identity(org, "users/a"), 999, 1, "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await client.meter(Identity(org, "users/a"), ResourceType.RESOURCE_TYPE_SEARCHES, -1, "x")


async def test_a_cancelled_caller_still_queues_its_record(
    mesh: TestMesh, caller: tuple[Runtime, UsageClient]
) -> None:
    """A client hanging up cancels the request task: the insert it started finishes anyway."""
    _, client = caller
    mesh.ensure("usage")
    org = f"org-{uuid.uuid4().hex[:12]}"
    calls = [asyncio.ensure_future(client.meter(Identity(org, "users/u"),
                                                ResourceType.RESOURCE_TYPE_SEARCHES, 1, f"c-{i}"))
             for i in range(20)]
    await asyncio.sleep(0)  # the inserts have started
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    await client._inserts.wait()
    await client.flush()
    assert sorted(await ledger_ids(mesh, org)) == sorted(f"c-{i}/searches" for i in range(20))

async def test_callers_arriving_during_an_insert_share_the_next_and_return_once_committed(
    mesh: TestMesh,
) -> None:
    """Group commit: records of callers that arrive while the outbox INSERT runs go in the next
    one, a single statement (one transaction: one xmin), and no caller returns before its own
    records are committed. The table is held by another transaction so the INSERTs must wait."""
    db = Database(mesh.settings.database_url, "usage_client_batch_test", 4)
    await db.migrate(Path(__file__).resolve().parents[3] / "services" / "orchestrator" / "migrations")
    await db.open()
    runtime = Runtime(name="testcaller", settings=mesh.settings, db=db, cache=None)
    client = UsageClient(runtime, Channels(mesh.settings, caller="knowledge"), start_drainer=False)
    payer = Identity(f"org-{uuid.uuid4().hex[:12]}", "users/u")
    searches = ResourceType.RESOURCE_TYPE_SEARCHES
    try:
        async with db.connection() as holder:
            await holder.execute("LOCK TABLE usage_outbox IN EXCLUSIVE MODE")
            first = asyncio.ensure_future(client.meter(payer, searches, 1, "first"))
            await asyncio.sleep(0.3)  # its INSERT waits for the table
            rest = [asyncio.ensure_future(client.meter(payer, searches, 1, f"rest-{i}"))
                    for i in range(5)]
            await asyncio.sleep(0.3)
            assert not any(call.done() for call in [first, *rest])
        await asyncio.wait_for(asyncio.gather(first, *rest), 10)  # the holder committed
        async with db.connection() as conn:
            cur = await conn.execute("SELECT xmin::text AS tx, record FROM usage_outbox")
            tx = {usage_pb2.UsageRecord.FromString(bytes(row["record"])).request_id: row["tx"]
                  for row in await cur.fetchall()}
        batched = {tx[f"rest-{i}/searches"] for i in range(5)}
        assert len(batched) == 1 and tx["first/searches"] not in batched, tx
    finally:
        async with db.connection() as conn:
            await conn.execute("DELETE FROM usage_outbox")
        await client.channels.close()
        await db.close()
