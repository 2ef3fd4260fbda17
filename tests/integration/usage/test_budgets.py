"""Budgets and reservations against real Redis and PostgreSQL: concurrent reservations never
overrun a small budget, settle/release exactly once, RESOURCE_EXHAUSTED carries the budget and
period, holds lapse, Redis loss is recovered from PostgreSQL's settled spend."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import psycopg
import pytest
import redis.asyncio as aioredis
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from google.protobuf import duration_pb2, field_mask_pb2
from google.rpc import error_details_pb2

from services.common.errors import error_info, field_violations, status_from_rpc_error
from tests.support.mesh import TestMesh

State = usage_pb2.Reservation.State


def identity(org: str, role: str = "owner") -> list[tuple[str, str]]:
    return [("x-aimesh-org", org), ("x-aimesh-subject", "users/tester"), ("x-aimesh-roles", role)]


def gateway_stub(mesh: TestMesh) -> usage_pb2_grpc.UsageServiceStub:
    """Budget CRUD arrives through the gateway, with the end user's identity headers."""
    return usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="gateway"))


def service_stub(mesh: TestMesh) -> usage_pb2_grpc.UsageServiceStub:
    """Holds are reserved, settled and released by the service doing the work."""
    return usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="orchestrator"))


async def make_budget(stub: usage_pb2_grpc.UsageServiceStub, org: str, **caps: object) -> usage_pb2.Budget:
    budget = usage_pb2.Budget(scope=usage_pb2.Budget.SCOPE_ORGANIZATION, display_name="cap", **caps)  # type: ignore[arg-type]
    return await stub.CreateBudget(usage_pb2.CreateBudgetRequest(budget=budget), metadata=identity(org), timeout=10)


async def settled_in_postgres(mesh: TestMesh, budget: usage_pb2.Budget) -> tuple[int, int]:
    """(sum of settled amounts, settled reservations) of `budget` in Usage's PostgreSQL ledger of
    reservations: the durable truth, read directly rather than through the Redis counters."""
    budget_id = budget.name.removeprefix("budgets/")
    async with await psycopg.AsyncConnection.connect(mesh.settings.database_url) as conn:
        cur = await conn.execute(
            "SELECT coalesce(sum(settled_amount_micros), 0), count(*) FROM usage.reservations "
            "WHERE state = 2 AND %s::uuid = ANY(budgets)", (budget_id,))
        total, count = await cur.fetchone()  # type: ignore[misc]
    return int(total), int(count)


async def test_concurrent_reservations_never_overrun_a_small_budget(mesh: TestMesh) -> None:
    mesh.ensure("usage")
    stub = gateway_stub(mesh)
    svc = service_stub(mesh)
    org = f"org-{uuid.uuid4().hex[:12]}"
    limit, estimate = 1_000_000, 70_000  # $1.00 budget, $0.07 per request
    budget = await make_budget(stub, org, monthly_limit_micros=limit, currency_code="USD")

    async def work(wave: int, i: int) -> tuple[int, int]:
        """(settled amount, overrun above the estimate) of one request."""
        try:
            r = await svc.ReserveBudget(
                usage_pb2.ReserveBudgetRequest(
                    organization=f"organizations/{org}", estimated_amount_micros=estimate,
                    currency_code="USD", request_id=f"w{wave}-{i}",
                ),
                timeout=20,
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            return 0, 0
        await asyncio.sleep(0.01)
        actual = estimate - (i % 3) * 10_000 if i % 5 else estimate + 5_000  # some settle above
        if i % 7 == 0:
            await svc.ReleaseReservation(usage_pb2.ReleaseReservationRequest(name=r.name), timeout=20)
            return 0, 0
        settled = await svc.SettleReservation(
            usage_pb2.SettleReservationRequest(name=r.name, actual_amount_micros=actual), timeout=20
        )
        assert settled.state == State.STATE_SETTLED
        return actual, max(0, actual - estimate)

    total = overrun = settles = 0
    for wave in range(2):  # the second wave runs against the nearly spent budget
        results = await asyncio.gather(*(work(wave, i) for i in range(60)))
        total += sum(spent for spent, _ in results)
        overrun += sum(over for _, over in results)
        settles += sum(1 for spent, _ in results if spent)
    current = await stub.GetBudget(usage_pb2.GetBudgetRequest(name=budget.name), metadata=identity(org), timeout=10)
    in_postgres, settled_rows = await settled_in_postgres(mesh, budget)
    assert settled_rows == settles
    # Both waves' settles, counted once each, alike in the ledger and in the live counters.
    assert in_postgres == total == current.spent_micros
    assert current.reserved_micros == 0
    # The documented bound (usage.proto, UsageService): cap + what settles ran over estimates.
    assert in_postgres <= limit + overrun
    assert in_postgres >= limit - 2 * estimate  # the budget was actually used up

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.ReserveBudget(
            usage_pb2.ReserveBudgetRequest(organization=f"organizations/{org}",
                                           estimated_amount_micros=limit, currency_code="USD"),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = status_from_rpc_error(err.value)
    assert status is not None
    info = error_info(status)
    assert info is not None and info.reason == "BUDGET_EXCEEDED"
    assert info.metadata["budget"] == budget.name
    assert info.metadata["period_start"] == budget.period_start_time.ToJsonString()
    assert info.metadata["period_end"] == budget.period_end_time.ToJsonString()
    assert info.metadata["limit_micros"] == str(limit)
    quota = [d for d in status.details if d.Is(error_details_pb2.QuotaFailure.DESCRIPTOR)]
    assert quota, "QuotaFailure detail missing"


async def test_spend_exceeds_a_cap_by_exactly_the_settle_overruns(mesh: TestMesh) -> None:
    """The bound documented on UsageService, reached exactly: holds fill the cap, every one
    settles above its estimate (never refused: the work is done), and the spend ends at cap +
    the sum of the overruns, in PostgreSQL and in GetBudget alike; no new hold fits."""
    mesh.ensure("usage")
    stub = gateway_stub(mesh)
    svc = service_stub(mesh)
    org = f"org-{uuid.uuid4().hex[:12]}"
    limit, estimate, overruns = 1_000, 250, (10, 0, 45, 120)
    budget = await make_budget(stub, org, monthly_limit_micros=limit, currency_code="USD")

    def reserve(amount: int) -> object:
        return svc.ReserveBudget(usage_pb2.ReserveBudgetRequest(
            organization=f"organizations/{org}", estimated_amount_micros=amount, currency_code="USD"),
            timeout=10)

    holds = [await reserve(estimate) for _ in overruns]  # 4 x 250: exactly the cap
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await reserve(1)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for hold, over in zip(holds, overruns):
        settled = await svc.SettleReservation(usage_pb2.SettleReservationRequest(
            name=hold.name, actual_amount_micros=estimate + over), timeout=10)  # type: ignore[attr-defined]
        assert settled.state == State.STATE_SETTLED
    current = await stub.GetBudget(usage_pb2.GetBudgetRequest(name=budget.name), metadata=identity(org), timeout=10)
    assert (await settled_in_postgres(mesh, budget))[0] == current.spent_micros == limit + sum(overruns)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await reserve(1)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_settle_release_idempotency_and_states(mesh: TestMesh) -> None:
    mesh.ensure("usage")
    stub = gateway_stub(mesh)
    svc = service_stub(mesh)
    org = f"org-{uuid.uuid4().hex[:12]}"
    budget = await make_budget(stub, org, monthly_limit_micros=500, currency_code="EUR",
                               monthly_token_limit=1000)
    req = usage_pb2.ReserveBudgetRequest(organization=f"organizations/{org}", estimated_amount_micros=300,
                                         currency_code="EUR", estimated_tokens=600, request_id="same")
    first, again = await asyncio.gather(svc.ReserveBudget(req, timeout=10), svc.ReserveBudget(req, timeout=10))
    assert first.name == again.name and list(first.budgets) == [budget.name]
    held = await stub.GetBudget(usage_pb2.GetBudgetRequest(name=budget.name), metadata=identity(org), timeout=10)
    assert held.reserved_micros == 300 and held.used_tokens == 600

    # The token cap refuses the next one with its own reason.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.ReserveBudget(
            usage_pb2.ReserveBudgetRequest(organization=f"organizations/{org}", estimated_amount_micros=1,
                                           currency_code="EUR", estimated_tokens=500), timeout=10)
    info = error_info(status_from_rpc_error(err.value))  # type: ignore[arg-type]
    assert info is not None and info.reason == "TOKEN_BUDGET_EXCEEDED"
    assert info.metadata["limit_tokens"] == "1000"

    settle = usage_pb2.SettleReservationRequest(name=first.name, actual_amount_micros=250, actual_tokens=550)
    done, repeat = await asyncio.gather(svc.SettleReservation(settle, timeout=10),
                                        svc.SettleReservation(settle, timeout=10))
    assert done.state == repeat.state == State.STATE_SETTLED
    assert done.settled_amount_micros == 250
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.SettleReservation(
            usage_pb2.SettleReservationRequest(name=first.name, actual_amount_micros=1), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(status_from_rpc_error(err.value)).reason == "RESERVATION_NOT_OPEN"  # type: ignore[arg-type,union-attr]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.ReleaseReservation(usage_pb2.ReleaseReservationRequest(name=first.name), timeout=10)
    assert error_info(status_from_rpc_error(err.value)).reason == "RESERVATION_SETTLED"  # type: ignore[arg-type,union-attr]

    after = await stub.GetBudget(usage_pb2.GetBudgetRequest(name=budget.name), metadata=identity(org), timeout=10)
    assert (after.spent_micros, after.reserved_micros, after.used_tokens) == (250, 0, 550)

    # A released hold frees its amount; releasing twice is a no-op.
    r = await svc.ReserveBudget(usage_pb2.ReserveBudgetRequest(
        organization=f"organizations/{org}", estimated_amount_micros=250, currency_code="EUR"), timeout=10)
    released = await svc.ReleaseReservation(usage_pb2.ReleaseReservationRequest(name=r.name), timeout=10)
    again_released = await svc.ReleaseReservation(usage_pb2.ReleaseReservationRequest(name=r.name), timeout=10)
    assert released.state == again_released.state == State.STATE_RELEASED

    # A hold that lapses stops counting and cannot be settled.
    r = await svc.ReserveBudget(usage_pb2.ReserveBudgetRequest(
        organization=f"organizations/{org}", estimated_amount_micros=250, currency_code="EUR",
        ttl=duration_pb2.Duration(seconds=1)), timeout=10)
    await asyncio.sleep(1.3)
    lapsed = await stub.GetBudget(usage_pb2.GetBudgetRequest(name=budget.name), metadata=identity(org), timeout=10)
    assert lapsed.reserved_micros == 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.SettleReservation(usage_pb2.SettleReservationRequest(name=r.name, actual_amount_micros=1), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    expired = await svc.ReleaseReservation(usage_pb2.ReleaseReservationRequest(name=r.name), timeout=10)
    assert expired.state == State.STATE_EXPIRED


async def test_redis_loss_recovers_settled_spend_from_postgres(mesh: TestMesh) -> None:
    mesh.ensure("usage")
    stub = gateway_stub(mesh)
    svc = service_stub(mesh)
    org = f"org-{uuid.uuid4().hex[:12]}"
    budget = await make_budget(stub, org, monthly_limit_micros=1000, currency_code="USD")
    r = await svc.ReserveBudget(usage_pb2.ReserveBudgetRequest(
        organization=f"organizations/{org}", estimated_amount_micros=800, currency_code="USD"), timeout=10)
    await svc.SettleReservation(usage_pb2.SettleReservationRequest(name=r.name, actual_amount_micros=800), timeout=10)
    # Drop this budget's live counters (as if Redis had lost them).
    client = aioredis.Redis.from_url(mesh.settings.redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"usage:budget:{budget.name.split('/')[1]}:*")]
        assert keys
        await client.delete(*keys)
    finally:
        await client.aclose()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.ReserveBudget(usage_pb2.ReserveBudgetRequest(
            organization=f"organizations/{org}", estimated_amount_micros=300, currency_code="USD"), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    ok = await svc.ReserveBudget(usage_pb2.ReserveBudgetRequest(
        organization=f"organizations/{org}", estimated_amount_micros=200, currency_code="USD"), timeout=10)
    assert ok.state == State.STATE_OPEN


async def test_budget_crud_and_bad_input(mesh: TestMesh) -> None:
    mesh.ensure("usage")
    stub = gateway_stub(mesh)
    svc = service_stub(mesh)
    org = f"org-{uuid.uuid4().hex[:12]}"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateBudget(usage_pb2.CreateBudgetRequest(budget=usage_pb2.Budget(
            scope=usage_pb2.Budget.SCOPE_API_KEY, monthly_limit_micros=-1, currency_code="dollars",
            api_key="organizations/other/apiKeys/k")), metadata=identity(org), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {f for f, _ in field_violations(status_from_rpc_error(err.value))}  # type: ignore[arg-type]
    assert {"budget.monthly_limit_micros", "budget.currency_code", "budget.api_key"} <= fields
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await make_budget(gateway_stub(mesh), org)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateBudget(usage_pb2.CreateBudgetRequest(budget=usage_pb2.Budget(
            scope=1, monthly_token_limit=5)), metadata=identity(org, "member"), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    created = await make_budget(stub, org, monthly_token_limit=100)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await make_budget(stub, org, monthly_token_limit=7)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    updated = await stub.UpdateBudget(usage_pb2.UpdateBudgetRequest(
        budget=usage_pb2.Budget(name=created.name, monthly_token_limit=200, etag=created.etag),
        update_mask=field_mask_pb2.FieldMask(paths=["monthly_token_limit"])), metadata=identity(org), timeout=10)
    assert updated.monthly_token_limit == 200 and updated.etag != created.etag
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateBudget(usage_pb2.UpdateBudgetRequest(
            budget=usage_pb2.Budget(name=created.name, monthly_token_limit=300, etag=created.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["monthly_token_limit"])), metadata=identity(org), timeout=10)
    assert err.value.code() == grpc.StatusCode.ABORTED
    listed = await stub.ListBudgets(usage_pb2.ListBudgetsRequest(), metadata=identity(org), timeout=10)
    assert [b.name for b in listed.budgets] == [created.name]
    await stub.DeleteBudget(usage_pb2.DeleteBudgetRequest(name=created.name), metadata=identity(org), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetBudget(usage_pb2.GetBudgetRequest(name=created.name), metadata=identity(org), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await stub.DeleteBudget(usage_pb2.DeleteBudgetRequest(name=created.name, allow_missing=True),
                            metadata=identity(org), timeout=10)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.ReserveBudget(usage_pb2.ReserveBudgetRequest(
            organization=f"organizations/{org}", estimated_amount_micros=-1, currency_code="usd",
            ttl=duration_pb2.Duration(seconds=7200)), timeout=10)
    assert {f for f, _ in field_violations(status_from_rpc_error(err.value))} == {  # type: ignore[arg-type]
        "estimated_amount_micros", "currency_code", "ttl"}

    if mesh.mtls_only("ReserveBudget refused to the gateway"):
        # The gateway (hence any end user) may never hold or release budget on its own.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ReserveBudget(usage_pb2.ReserveBudgetRequest(
                organization=f"organizations/{org}", estimated_amount_micros=1, currency_code="USD"),
                metadata=identity(org), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED



async def test_api_key_budget_applies_only_to_that_key(mesh: TestMesh) -> None:
    mesh.ensure("usage")
    stub = gateway_stub(mesh)
    svc = service_stub(mesh)
    org = f"org-{uuid.uuid4().hex[:12]}"
    key = f"organizations/{org}/apiKeys/k1"
    budget = await stub.CreateBudget(usage_pb2.CreateBudgetRequest(budget=usage_pb2.Budget(
        scope=usage_pb2.Budget.SCOPE_API_KEY, api_key=key, monthly_token_limit=100)),
        metadata=identity(org), timeout=10)

    def reserve(api_key: str, tokens: int) -> usage_pb2.ReserveBudgetRequest:
        return usage_pb2.ReserveBudgetRequest(organization=f"organizations/{org}", api_key=api_key,
                                              currency_code="USD", estimated_tokens=tokens)

    held = await svc.ReserveBudget(reserve(key, 80), timeout=10)
    assert list(held.budgets) == [budget.name]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.ReserveBudget(reserve(key, 30), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    other = await svc.ReserveBudget(reserve(f"organizations/{org}/apiKeys/k2", 1000), timeout=10)
    assert list(other.budgets) == []  # another key of the org is not capped by k1's budget
