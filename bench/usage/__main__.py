"""Usage benchmark: ledger ingestion and budget reserve/settle, next to plain PostgreSQL INSERTs.

    .venv/bin/python -m bench.usage [--records 3000] [--concurrency 8] [--reservations 1000]

Starts its own Usage process on a free port (same launcher as the tests) against the local
PostgreSQL and Redis, then measures in one run:
* baseline: single-row INSERTs (autocommit) into a scratch table of the same shape, from
  `concurrency` connections — rows/s and per-INSERT latency p50/p99;
* RecordUsage at batch 1 and batch 100 from `concurrency` concurrent callers — records/s
  (each record deduplicated and rolled up in the same transaction);
* ReserveBudget then SettleReservation against an organization budget — p50/p99 of each;
* ShouldRateLimit (one Redis script, no PostgreSQL) as the floor of a Usage RPC on this machine;
and prints the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import psycopg
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from envoy_api.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy_api.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import timestamp_pb2

from bench.report import print_load, verdict
from tests.support.mesh import TestMesh

SCRATCH_SCHEMA = "bench_usage"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_workers(total: int, concurrency: int, one: Callable[[int], Awaitable[float]]) -> tuple[float, list[float]]:
    """Run `one(i)` for i in range(total) over `concurrency` workers; (seconds, latencies)."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            latencies.append(await one(i))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


async def baseline_inserts(url: str, total: int, concurrency: int) -> tuple[float, list[float]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCRATCH_SCHEMA}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SCRATCH_SCHEMA}.plain_records (id bigserial PRIMARY KEY, "
            "org text, request_id text, resource_type smallint, model text, quantity_micros bigint, "
            "occur_time timestamptz)"
        )
    conns = [await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(concurrency)]
    free: asyncio.Queue[psycopg.AsyncConnection] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)
    run = uuid.uuid4().hex

    async def one(i: int) -> float:
        conn = await free.get()
        try:
            t0 = time.perf_counter()
            await conn.execute(
                f"INSERT INTO {SCRATCH_SCHEMA}.plain_records (org, request_id, resource_type, model, "
                "quantity_micros, occur_time) VALUES (%s, %s, %s, %s, %s, now())",
                (run, f"r{i}", 1, "models/m", 1_000_000),
            )
            return time.perf_counter() - t0
        finally:
            free.put_nowait(conn)

    try:
        return await run_workers(total, concurrency, one)
    finally:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(f"DELETE FROM {SCRATCH_SCHEMA}.plain_records WHERE org = %s", (run,))
        for c in conns:
            await c.close()


def make_record(org: str, rid: str, now: timestamp_pb2.Timestamp) -> usage_pb2.UsageRecord:
    return usage_pb2.UsageRecord(
        organization=f"organizations/{org}", request_id=rid, resource_type=1, model="models/m",
        quantity_micros=1_000_000, occur_time=now, source="bench",
    )


async def record_usage(stub: usage_pb2_grpc.UsageServiceStub, total: int, batch: int, concurrency: int) -> float:
    org = f"bench-{uuid.uuid4().hex[:10]}"
    now = timestamp_pb2.Timestamp()
    now.FromDatetime(dt.datetime.now(dt.UTC))

    async def one(i: int) -> float:
        records = [make_record(org, f"b{batch}-{i}-{j}", now) for j in range(batch)]
        t0 = time.perf_counter()
        await stub.RecordUsage(usage_pb2.RecordUsageRequest(records=records), timeout=60)
        return time.perf_counter() - t0

    seconds, _ = await run_workers(max(total // batch, 1), concurrency, one)
    return (max(total // batch, 1) * batch) / seconds


async def reserve_settle(stub: usage_pb2_grpc.UsageServiceStub, admin: usage_pb2_grpc.UsageServiceStub,
                         total: int, concurrency: int) -> tuple[list[float], list[float]]:
    org = f"bench-{uuid.uuid4().hex[:10]}"
    owner = [("x-aimesh-org", org), ("x-aimesh-subject", "users/bench"), ("x-aimesh-roles", "owner")]
    # An owner's request, as the gateway forwards it.
    await admin.CreateBudget(usage_pb2.CreateBudgetRequest(budget=usage_pb2.Budget(
        scope=usage_pb2.Budget.SCOPE_ORGANIZATION, monthly_limit_micros=10**14, currency_code="USD")),
        metadata=owner, timeout=10)
    settles: list[float] = []

    async def one(i: int) -> float:
        t0 = time.perf_counter()
        r = await stub.ReserveBudget(usage_pb2.ReserveBudgetRequest(
            organization=f"organizations/{org}", estimated_amount_micros=1000, currency_code="USD",
            estimated_tokens=100), timeout=10)
        t1 = time.perf_counter()
        await stub.SettleReservation(usage_pb2.SettleReservationRequest(
            name=r.name, actual_amount_micros=900, actual_tokens=90), timeout=10)
        settles.append(time.perf_counter() - t1)
        return t1 - t0

    _, reserves = await run_workers(total, concurrency, one)
    return reserves, settles


async def rate_limit_floor(channel: object, total: int, concurrency: int) -> tuple[float, list[float]]:
    stub = rls_pb2_grpc.RateLimitServiceStub(channel)
    D = ratelimit_pb2.RateLimitDescriptor
    request = rls_pb2.RateLimitRequest(domain="aimesh", descriptors=[
        D(entries=[D.Entry(key="org_id", value=f"bench-{uuid.uuid4().hex[:10]}")])])

    async def one(_: int) -> float:
        t0 = time.perf_counter()
        await stub.ShouldRateLimit(request, timeout=10)
        return time.perf_counter() - t0

    return await run_workers(total, concurrency, one)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def main(args: argparse.Namespace) -> None:
    mesh = TestMesh()
    try:
        mesh.ensure("usage")
        # As the callers the mesh policy admits (under the default mTLS): ledger writes and
        # budget holds come from the metering services, rate-limit checks from the gateway.
        stub = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="orchestrator"))
        await record_usage(stub, 200, 1, args.concurrency)  # warm-up (connections, plans)

        base_s, base_lat = await baseline_inserts(mesh.settings.database_url, args.records, args.concurrency)
        base_rate = args.records / base_s
        rate_1 = await record_usage(stub, args.records, 1, args.concurrency)
        rate_100 = await record_usage(stub, args.records * 10, 100, args.concurrency)
        owner_stub = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="gateway"))
        reserves, settles = await reserve_settle(stub, owner_stub, args.reservations, args.concurrency)
        floor_s, floor_lat = await rate_limit_floor(mesh.channel("usage"), args.records, args.concurrency)

        print(f"usage benchmark (concurrency {args.concurrency}, same PostgreSQL/Redis, one run)")
        print_load()
        print(f"  baseline single-row INSERT      {base_rate:10.0f} rows/s   "
              f"p50 {ms(percentile(base_lat, 0.5))}  p99 {ms(percentile(base_lat, 0.99))}")
        print(f"  RecordUsage batch 1             {rate_1:10.0f} records/s   "
              f"ratio to baseline {rate_1 / base_rate:.2f}x")
        print(f"  RecordUsage batch 100           {rate_100:10.0f} records/s   "
              f"ratio to baseline {rate_100 / base_rate:.2f}x")
        print(f"  ReserveBudget                   p50 {ms(percentile(reserves, 0.5))}  "
              f"p99 {ms(percentile(reserves, 0.99))}   p99 ratio to INSERT p99 "
              f"{percentile(reserves, 0.99) / percentile(base_lat, 0.99):.2f}x")
        print(f"  SettleReservation               p50 {ms(percentile(settles, 0.5))}  "
              f"p99 {ms(percentile(settles, 0.99))}   p99 ratio to INSERT p99 "
              f"{percentile(settles, 0.99) / percentile(base_lat, 0.99):.2f}x")
        print(f"  ShouldRateLimit (RPC floor)     {args.records / floor_s:10.0f} calls/s     "
              f"p50 {ms(percentile(floor_lat, 0.5))}  p99 {ms(percentile(floor_lat, 0.99))}")
        print(f"  (mean reserve {ms(statistics.mean(reserves))}, mean settle {ms(statistics.mean(settles))})")
        # Issue 15 sets no Usage target; this bench's own: batching must beat row-at-a-time SQL.
        print(verdict("RecordUsage batch 100 >= baseline single-row INSERT rate", rate_100 >= base_rate,
                      f"{rate_100 / base_rate:.2f}x"))
    finally:
        await mesh.aclose()
        mesh.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--reservations", type=int, default=1000)
    asyncio.run(main(parser.parse_args()))
