"""Billing against real PostgreSQL, Redis and the Usage service: a month of synthetic usage is
invoiced exactly as an independent Decimal calculation says, plan changes apply at the period
boundary and carry the plan's rate limits to the gateway's rate-limit service, invoice state
transitions, idempotent generation, HTML rendering and refusals with reasons."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal

import grpc
import psycopg
import pytest
from aimesh.billing.v1 import billing_pb2, billing_pb2_grpc
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from envoy_api.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy_api.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import field_mask_pb2, timestamp_pb2

from services.common.errors import error_info, field_violations, status_from_rpc_error
from tests.support.mesh import TestMesh

UTC = dt.UTC
RT = usage_pb2.ResourceType
State = billing_pb2.Invoice.State


def ts(t: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(t)
    return stamp


def month_start(t: dt.datetime) -> dt.datetime:
    return dt.datetime(t.year, t.month, 1, tzinfo=UTC)


def previous_month(start: dt.datetime) -> dt.datetime:
    return (start - dt.timedelta(days=1)).replace(day=1)


def who(org: str, role: str = "owner", admin: bool = False) -> list[tuple[str, str]]:
    headers = [("x-aimesh-org", org), ("x-aimesh-subject", "users/u1"), ("x-aimesh-roles", role)]
    if admin:
        headers.append(("x-aimesh-scopes", "platform:admin"))
    return headers


def reason(err: grpc.aio.AioRpcError) -> str:
    info = error_info(status_from_rpc_error(err))  # type: ignore[arg-type]
    return info.reason if info else ""


def stubs(mesh: TestMesh) -> tuple[billing_pb2_grpc.BillingServiceStub, usage_pb2_grpc.UsageServiceStub]:
    """Billing as end users reach it (through the gateway); Usage as Billing itself reads it."""
    mesh.ensure("usage", "billing")
    return (billing_pb2_grpc.BillingServiceStub(mesh.channel("billing", identity="gateway")),
            usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="billing")))


def recorder(mesh: TestMesh) -> usage_pb2_grpc.UsageServiceStub:
    """Usage records come from the services that did the work."""
    return usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="orchestrator"))


async def move_to_next_period(mesh: TestMesh, org: str) -> None:
    """Pretend the subscription started last month, so the next access crosses a boundary."""
    start = month_start(dt.datetime.now(UTC))
    async with await psycopg.AsyncConnection.connect(mesh.settings.database_url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE billing.subscriptions SET period_start = %s, period_end = %s WHERE org = %s",
            (previous_month(start), start, org),
        )


def expected_invoice(plan: billing_pb2.Plan, usage: dict[tuple[int, str], int], tax_rate: int) -> dict[str, object]:
    """The invoice computed independently from the contract's rules, in Decimal."""
    prices = {(p.resource_type, p.model): p for p in plan.prices}
    left = {k: Decimal(p.included_quantity_micros) for k, p in prices.items()}
    lines = [plan.monthly_fee_micros]
    for (rtype, model), qty in sorted(usage.items()):
        key = (rtype, model) if (rtype, model) in prices else (rtype, "")
        if key not in prices:
            lines.append(0)
            continue
        covered = min(Decimal(qty), left[key])
        left[key] -= covered
        raw = (Decimal(qty) - covered) * prices[key].overage_unit_price_micros / (
            Decimal(prices[key].price_unit_quantity) * 1_000_000)
        lines.append(int(raw.quantize(Decimal(1), rounding=ROUND_HALF_UP)))
    subtotal = sum(lines)
    tax = int((Decimal(subtotal) * tax_rate / 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return {"lines": lines, "subtotal": subtotal, "tax": tax, "total": subtotal + tax}


async def test_month_of_usage_invoiced_to_the_cent_and_limits_follow_plan(mesh: TestMesh) -> None:
    billing, usage = stubs(mesh)
    org = f"org-{uuid.uuid4().hex[:12]}"
    plan_id = f"t-{uuid.uuid4().hex[:10]}"
    Price = billing_pb2.PlanPrice
    plan = await billing.CreatePlan(billing_pb2.CreatePlanRequest(plan_id=plan_id, plan=billing_pb2.Plan(
        display_name="Test plan", currency_code="USD", monthly_fee_micros=19_990_000,
        organization_requests_per_minute=77, api_key_requests_per_minute=7,
        tax_rate_micros=190_000, publicly_available=True,
        prices=[
            Price(resource_type=RT.RESOURCE_TYPE_PROMPT_TOKENS, included_quantity_micros=20_000_000_000,
                  overage_unit_price_micros=500_000, price_unit_quantity=1_000_000),
            Price(resource_type=RT.RESOURCE_TYPE_PROMPT_TOKENS, model="models/big",
                  overage_unit_price_micros=3_000_000, price_unit_quantity=1_000_000),
            Price(resource_type=RT.RESOURCE_TYPE_COMPLETION_TOKENS, overage_unit_price_micros=1_500_000,
                  price_unit_quantity=1_000_000),
            Price(resource_type=RT.RESOURCE_TYPE_AUDIO_SECONDS, included_quantity_micros=60_000_000,
                  overage_unit_price_micros=6_000, price_unit_quantity=1),
        ])), metadata=who("staff", admin=True), timeout=10)

    # New organizations start on the free plan, whose limits Usage enforces.
    sub = await billing.GetSubscription(billing_pb2.GetSubscriptionRequest(), metadata=who(org), timeout=10)
    assert sub.plan == "plans/free"
    policy_name = f"organizations/{org}/rateLimitPolicy"
    policy = await usage.GetRateLimitPolicy(usage_pb2.GetRateLimitPolicyRequest(name=policy_name), timeout=10)
    assert (policy.organization_requests_per_minute, policy.api_key_requests_per_minute, policy.plan) == (
        60, 20, "plans/free")

    # A plan change waits for the period boundary.
    sub = await billing.ChangePlan(billing_pb2.ChangePlanRequest(plan=plan.name), metadata=who(org), timeout=10)
    assert (sub.plan, sub.pending_plan) == ("plans/free", plan.name)
    policy = await usage.GetRateLimitPolicy(usage_pb2.GetRateLimitPolicyRequest(name=policy_name), timeout=10)
    assert policy.api_key_requests_per_minute == 20
    await move_to_next_period(mesh, org)
    sub = await billing.GetSubscription(billing_pb2.GetSubscriptionRequest(), metadata=who(org), timeout=10)
    assert (sub.plan, sub.pending_plan) == (plan.name, "")
    assert sub.current_period_start_time.ToDatetime(tzinfo=UTC) == month_start(dt.datetime.now(UTC))
    policy = await usage.GetRateLimitPolicy(usage_pb2.GetRateLimitPolicyRequest(name=policy_name), timeout=10)
    assert (policy.organization_requests_per_minute, policy.api_key_requests_per_minute) == (77, 7)
    # ... and the gateway's rate-limit service now allows exactly the new plan's 7 per key.
    D = ratelimit_pb2.RateLimitDescriptor
    check = rls_pb2.RateLimitRequest(domain="aimesh", descriptors=[
        D(entries=[D.Entry(key="org_id", value=org)]),
        D(entries=[D.Entry(key="org_id", value=org), D.Entry(key="key_id", value="k")])])
    if dt.datetime.now(UTC).second > 50:
        await asyncio.sleep(61 - dt.datetime.now(UTC).second)
    rls = rls_pb2_grpc.RateLimitServiceStub(mesh.channel("usage", identity="gateway"))
    replies = await asyncio.gather(*(rls.ShouldRateLimit(check, timeout=10) for _ in range(20)))
    assert sum(r.overall_code == rls_pb2.RateLimitResponse.Code.OK for r in replies) == 7

    # A month (so far) of synthetic usage.
    now = dt.datetime.now(UTC)
    start = month_start(now)
    rng = random.Random(42)
    kinds = [(RT.RESOURCE_TYPE_PROMPT_TOKENS, "models/small"), (RT.RESOURCE_TYPE_PROMPT_TOKENS, "models/big"),
             (RT.RESOURCE_TYPE_PROMPT_TOKENS, "models/alpha"), (RT.RESOURCE_TYPE_COMPLETION_TOKENS, "models/small"),
             (RT.RESOURCE_TYPE_AUDIO_SECONDS, ""), (RT.RESOURCE_TYPE_SEARCHES, "")]
    span = max(int((now - start).total_seconds()) - 120, 1)
    totals: dict[tuple[int, str], int] = defaultdict(int)
    records = []
    for i in range(600):
        rtype, model = rng.choice(kinds)
        qty = rng.randrange(1, 400_000_000_000) if rtype != RT.RESOURCE_TYPE_AUDIO_SECONDS else rng.randrange(1, 90_000_000)
        totals[(rtype, model)] += qty
        records.append(usage_pb2.UsageRecord(
            organization=f"organizations/{org}", request_id=f"m-{i}", resource_type=rtype, model=model,
            quantity_micros=qty, occur_time=ts(start + dt.timedelta(seconds=rng.randrange(span)))))
    for i in range(0, len(records), 200):
        await recorder(mesh).RecordUsage(usage_pb2.RecordUsageRequest(records=records[i:i + 200]), timeout=30)

    request = billing_pb2.GenerateInvoiceRequest(period_start_time=ts(start), allow_open_period=True)
    invoice = await billing.GenerateInvoice(request, metadata=who(org), timeout=30)
    want = expected_invoice(plan, totals, 190_000)
    assert invoice.state == State.STATE_DRAFT and invoice.plan == plan.name
    assert [line.amount_micros for line in invoice.line_items] == want["lines"]
    assert (invoice.subtotal_micros, invoice.tax_micros, invoice.total_micros) == (
        want["subtotal"], want["tax"], want["total"])
    assert invoice.tax_rate_micros == 190_000
    assert invoice.line_items[0].kind == billing_pb2.InvoiceLineItem.KIND_SUBSCRIPTION_FEE

    again = await billing.GenerateInvoice(request, metadata=who(org), timeout=30)
    assert again.name == invoice.name and again.total_micros == invoice.total_micros

    # A DRAFT follows the latest usage.
    extra = usage_pb2.UsageRecord(organization=f"organizations/{org}", request_id="late",
                                  resource_type=RT.RESOURCE_TYPE_COMPLETION_TOKENS, model="models/small",
                                  quantity_micros=1_000_000_000_000, occur_time=ts(now - dt.timedelta(minutes=1)))
    await recorder(mesh).RecordUsage(usage_pb2.RecordUsageRequest(records=[extra]), timeout=10)
    totals[(RT.RESOURCE_TYPE_COMPLETION_TOKENS, "models/small")] += extra.quantity_micros
    recomputed = await billing.GenerateInvoice(request, metadata=who(org), timeout=30)
    assert recomputed.name == invoice.name
    assert recomputed.total_micros == expected_invoice(plan, totals, 190_000)["total"]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.FinalizeInvoice(billing_pb2.FinalizeInvoiceRequest(name=invoice.name), metadata=who(org), timeout=10)
    assert reason(err.value) == "PERIOD_NOT_ENDED"
    page = await billing.RenderInvoice(billing_pb2.RenderInvoiceRequest(name=invoice.name), metadata=who(org), timeout=10)
    assert page.content_type.startswith("text/html")
    cents = (Decimal(recomputed.total_micros) / 1_000_000).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    assert f"Total: USD {cents:,}" in page.data.decode()


async def test_invoice_lifecycle_and_period_rules(mesh: TestMesh) -> None:
    billing, _ = stubs(mesh)
    org = f"org-{uuid.uuid4().hex[:12]}"
    this_month = month_start(dt.datetime.now(UTC))
    last_month = previous_month(this_month)
    request = billing_pb2.GenerateInvoiceRequest(period_start_time=ts(last_month))
    first, second = await asyncio.gather(
        billing.GenerateInvoice(request, metadata=who(org), timeout=30),
        billing.GenerateInvoice(request, metadata=who(org), timeout=30))
    assert first.name == second.name and first.state == State.STATE_DRAFT
    assert first.total_micros == 0 and first.plan == "plans/free"

    done = await billing.FinalizeInvoice(billing_pb2.FinalizeInvoiceRequest(name=first.name), metadata=who(org), timeout=10)
    assert done.state == State.STATE_FINALIZED and done.number == f"{last_month:%Y-%m}-0001"
    assert done.due_time.ToDatetime() - done.finalize_time.ToDatetime() == dt.timedelta(days=30)
    same = await billing.FinalizeInvoice(billing_pb2.FinalizeInvoiceRequest(name=first.name), metadata=who(org), timeout=10)
    assert same.number == done.number

    paid_req = billing_pb2.MarkInvoicePaidRequest(name=first.name, payment_reference="bank-1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.MarkInvoicePaid(paid_req, metadata=who(org), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    paid = await billing.MarkInvoicePaid(paid_req, metadata=who(org, admin=True), timeout=10)
    assert paid.state == State.STATE_PAID and paid.payment_reference == "bank-1"
    assert (await billing.MarkInvoicePaid(paid_req, metadata=who(org, admin=True), timeout=10)).state == State.STATE_PAID
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.MarkInvoicePaid(billing_pb2.MarkInvoicePaidRequest(name=first.name, payment_reference="other"),
                                      metadata=who(org, admin=True), timeout=10)
    assert reason(err.value) == "INVALID_STATE"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.VoidInvoice(billing_pb2.VoidInvoiceRequest(name=first.name), metadata=who(org), timeout=10)
    assert reason(err.value) == "INVALID_STATE"
    regenerated = await billing.GenerateInvoice(request, metadata=who(org), timeout=30)
    assert regenerated.name == first.name and regenerated.state == State.STATE_PAID

    listed = await billing.ListInvoices(billing_pb2.ListInvoicesRequest(state=State.STATE_PAID), metadata=who(org), timeout=10)
    assert [i.name for i in listed.invoices] == [first.name]

    # Bad periods.
    next_month = month_start(this_month + dt.timedelta(days=40))
    for bad, why in ((next_month, "INVALID_ARGUMENT"),  # in the future
                     (this_month + dt.timedelta(hours=3), "INVALID_ARGUMENT"),  # not a month start
                     (this_month, "PERIOD_NOT_ENDED")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await billing.GenerateInvoice(billing_pb2.GenerateInvoiceRequest(period_start_time=ts(bad)),
                                          metadata=who(org), timeout=10)
        assert reason(err.value) == why, bad
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.GenerateInvoice(billing_pb2.GenerateInvoiceRequest(), metadata=who(org), timeout=10)
    assert {f for f, _ in field_violations(status_from_rpc_error(err.value))} == {"period_start_time"}  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.GenerateInvoice(request, metadata=who(org, role="member"), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_plan_change_refusals_and_plans_as_data(mesh: TestMesh) -> None:
    billing, _ = stubs(mesh)
    org = f"org-{uuid.uuid4().hex[:12]}"
    # Every page: other tests (and earlier runs on the same database) add public plans too.
    names: list[str] = []
    token = ""
    while True:
        page = await billing.ListPlans(
            billing_pb2.ListPlansRequest(page_size=1000, page_token=token), metadata=who(org), timeout=10
        )
        names.extend(p.name for p in page.plans)
        token = page.next_page_token
        if not token:
            break
    assert "plans/free" in names and "plans/pro" in names and "plans/enterprise" not in names
    pro = await billing.GetPlan(billing_pb2.GetPlanRequest(name="plans/pro"), metadata=who(org), timeout=10)
    assert pro.monthly_fee_micros == 49_000_000 and pro.api_key_requests_per_minute == 120

    async def change(plan: str, role: str = "owner") -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await billing.ChangePlan(billing_pb2.ChangePlanRequest(plan=plan), metadata=who(org, role), timeout=10)
        return err.value

    assert reason(await change("plans/enterprise")) == "PLAN_NOT_PUBLIC"
    assert reason(await change("plans/free")) == "PLAN_UNCHANGED"
    assert (await change("plans/nope-nope")).code() == grpc.StatusCode.NOT_FOUND
    assert (await change("pro")).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await change("plans/pro", role="member")).code() == grpc.StatusCode.PERMISSION_DENIED

    admin = who("staff", admin=True)
    archived_id = f"a-{uuid.uuid4().hex[:10]}"
    created = await billing.CreatePlan(billing_pb2.CreatePlanRequest(plan_id=archived_id, plan=billing_pb2.Plan(
        display_name="Old", currency_code="USD", organization_requests_per_minute=5,
        api_key_requests_per_minute=5, publicly_available=True)), metadata=admin, timeout=10)
    await billing.UpdatePlan(billing_pb2.UpdatePlanRequest(
        plan=billing_pb2.Plan(name=created.name, archived=True, etag=created.etag),
        update_mask=field_mask_pb2.FieldMask(paths=["archived"])), metadata=admin, timeout=10)
    assert reason(await change(created.name)) == "PLAN_ARCHIVED"

    # An open USD invoice makes a EUR plan inconsistent with it.
    eur_id = f"e-{uuid.uuid4().hex[:10]}"
    eur = await billing.CreatePlan(billing_pb2.CreatePlanRequest(plan_id=eur_id, plan=billing_pb2.Plan(
        display_name="Euro", currency_code="EUR", organization_requests_per_minute=5,
        api_key_requests_per_minute=5, publicly_available=True)), metadata=admin, timeout=10)
    await billing.GenerateInvoice(billing_pb2.GenerateInvoiceRequest(
        period_start_time=ts(previous_month(month_start(dt.datetime.now(UTC))))), metadata=who(org), timeout=30)
    assert reason(await change(eur.name)) == "CURRENCY_MISMATCH"

    ok = await billing.ChangePlan(billing_pb2.ChangePlanRequest(plan="plans/pro"), metadata=who(org), timeout=10)
    assert ok.pending_plan == "plans/pro"
    back = await billing.ChangePlan(billing_pb2.ChangePlanRequest(plan="plans/free"), metadata=who(org), timeout=10)
    assert back.pending_plan == ""  # changing back cancels the pending change

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.CreatePlan(billing_pb2.CreatePlanRequest(plan_id="X", plan=billing_pb2.Plan(
            display_name="", currency_code="usd", monthly_fee_micros=-1, tax_rate_micros=2_000_000,
            prices=[billing_pb2.PlanPrice(resource_type=1, overage_unit_price_micros=-5),
                    billing_pb2.PlanPrice(resource_type=1, price_unit_quantity=1)])),
            metadata=admin, timeout=10)
    fields = {f for f, _ in field_violations(status_from_rpc_error(err.value))}  # type: ignore[arg-type]
    assert {"plan_id", "plan.display_name", "plan.currency_code", "plan.monthly_fee_micros",
            "plan.tax_rate_micros", "plan.organization_requests_per_minute",
            "plan.prices[0].overage_unit_price_micros", "plan.prices[0].price_unit_quantity",
            "plan.prices[1].model"} <= fields
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.CreatePlan(billing_pb2.CreatePlanRequest(plan_id="xyz", plan=billing_pb2.Plan()),
                                 metadata=who(org), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    if mesh.mtls_only("BillingService refused to other services"):
        # Billing's API is public only: no service reaches it (it calls Usage, never the reverse).
        other = billing_pb2_grpc.BillingServiceStub(mesh.channel("billing", identity="orchestrator"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await other.ChangePlan(billing_pb2.ChangePlanRequest(plan="plans/pro"),
                                   metadata=who(org), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
