"""Billing's domain: subscriptions rolling over at period boundaries (pushing the plan's rate
limits to Usage), invoices computed from Usage summaries, invoice state transitions, HTML.

Plan changes never apply mid-period: ChangePlan records a pending plan; the first access after
the boundary (or the background sweep, every minute) rolls the subscription into the new period
with the pending plan, records which plan was in force for that period (invoices use it), and
pushes the plan's limits to Usage's SetRateLimitPolicy. A push that fails is retried by the
sweep until Usage acknowledges it (`policy_synced`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

from services.billing import invoicing
from services.billing.store import (
    INVOICE_DRAFT,
    INVOICE_FINALIZED,
    INVOICE_PAID,
    INVOICE_VOID,
    STATE_CANCELED,
    BillingStore,
    Row,
)
from services.common.channels import Channels
from services.common.config import Settings
from services.common.errors import failed_precondition, invalid_argument, not_found, unavailable
from services.common.names import resource
from services.common.timestamps import month_start, next_month, to_timestamp

log = logging.getLogger("aimesh.billing")

SWEEP_SECONDS = 60
DUE_DAYS = 30
# How far back an invoice may be generated (billing.proto, GenerateInvoice): older periods are
# outside any subscription this platform can have priced, e.g. a typo'd year 1.
MAX_LOOKBACK_MONTHS = 24
_STATE_WORDS = {INVOICE_DRAFT: "DRAFT", INVOICE_FINALIZED: "FINALIZED", INVOICE_PAID: "PAID",
                INVOICE_VOID: "VOID"}

PLAN = resource("billing.aimesh.dev/Plan")
INVOICE = resource("billing.aimesh.dev/Invoice")
SUBSCRIPTION = resource("billing.aimesh.dev/Subscription")
ORGANIZATION = resource("auth.aimesh.dev/Organization")
RATE_LIMIT_POLICY = resource("usage.aimesh.dev/RateLimitPolicy")
DEFAULT_POLICY_ORG = "-"  # organizations/-/rateLimitPolicy: for organizations without their own




def prices_of(plan: Row) -> list[invoicing.Price]:
    return [
        invoicing.Price(p["resource_type"], p["model"], p["included_quantity_micros"],
                        p["overage_unit_price_micros"], p["price_unit_quantity"])
        for p in plan["prices"]
    ]


class Billing:
    def __init__(self, settings: Settings, store: BillingStore, channels: Channels) -> None:
        self.settings = settings
        self.store = store
        self.channels = channels
        self._default_pushed: tuple[str, int, int] | None = None

    @property
    def usage(self) -> usage_pb2_grpc.UsageServiceStub:
        return usage_pb2_grpc.UsageServiceStub(self.channels.get("usage"))

    # --- subscriptions -------------------------------------------------------------------

    async def subscription(self, org: str, now: dt.datetime | None = None) -> Row:
        row, push = await self.store.subscription(org, now or dt.datetime.now(dt.UTC))
        if push:
            await self.push_policy(row, strict=False)
        return row

    async def push_policy(self, subscription: Row, strict: bool) -> bool:
        """Tell Usage the rate limits of the subscription's plan; False (or raise if strict)
        when Usage cannot be reached — the sweep retries."""
        plan = await self.store.get_plan(subscription["plan_id"])
        assert plan is not None
        request = usage_pb2.SetRateLimitPolicyRequest(policy=usage_pb2.RateLimitPolicy(
            name=RATE_LIMIT_POLICY.format(subscription["org"]),
            organization_requests_per_minute=plan["org_rpm"],
            api_key_requests_per_minute=plan["key_rpm"],
            plan=PLAN.format(plan["id"]),
        ))
        try:
            await self.usage.SetRateLimitPolicy(request, timeout=5)
        except grpc.aio.AioRpcError as exc:
            log.warning("rate-limit policy push failed; will retry",
                        extra={"org": subscription["org"], "code": exc.code().name})
            if strict:
                raise unavailable("Usage did not accept the rate-limit policy") from None
            return False
        await self.store.mark_policy_synced(subscription["org"], plan["id"])
        return True

    async def push_default_policy(self) -> bool:
        """Make the default plan's limits Usage's default policy (organizations without their
        own), so a new organization has its plan's limits from sign-up, before Billing first
        sees it. Pushed at start, by every sweep when they changed, and after UpdatePlan."""
        plan = await self.store.default_plan()
        if plan is None:
            return False
        limits = (plan["id"], plan["org_rpm"], plan["key_rpm"])
        if limits == self._default_pushed:
            return True
        request = usage_pb2.SetRateLimitPolicyRequest(policy=usage_pb2.RateLimitPolicy(
            name=RATE_LIMIT_POLICY.format(DEFAULT_POLICY_ORG),
            organization_requests_per_minute=plan["org_rpm"],
            api_key_requests_per_minute=plan["key_rpm"], plan=PLAN.format(plan["id"])))
        try:
            await self.usage.SetRateLimitPolicy(request, timeout=5)
        except grpc.aio.AioRpcError as exc:
            log.warning("default rate-limit policy push failed; will retry",
                        extra={"code": exc.code().name})
            return False
        self._default_pushed = limits
        return True

    async def sweep_forever(self) -> None:
        """Roll over subscriptions at period boundaries and retry unsynced policy pushes."""
        while True:
            try:
                await self.push_default_policy()
                for org in await self.store.orgs_needing_attention(dt.datetime.now(dt.UTC)):
                    await self.subscription(org)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("subscription sweep failed", exc_info=True)
            await asyncio.sleep(SWEEP_SECONDS)

    async def change_plan(self, org: str, plan_id: str, may_use_private: bool) -> Row:
        subscription = await self.subscription(org)
        plan = await self.store.get_plan(plan_id)
        if plan is None:
            raise not_found(f"{PLAN.format(plan_id)} not found", reason="PLAN_NOT_FOUND")
        if subscription["state"] == STATE_CANCELED:
            raise failed_precondition("the subscription is canceled", reason="SUBSCRIPTION_CANCELED")
        if plan_id == subscription["plan_id"]:
            if not subscription["pending_plan_id"]:
                raise failed_precondition(f"already on {PLAN.format(plan_id)}", reason="PLAN_UNCHANGED")
            return await self.store.set_pending_plan(org, None)  # cancels the pending change
        if plan["archived"]:
            raise failed_precondition(f"{PLAN.format(plan_id)} is no longer offered", reason="PLAN_ARCHIVED")
        if not plan["publicly_available"] and not may_use_private:
            raise failed_precondition(f"{PLAN.format(plan_id)} is not offered to this organization",
                                      reason="PLAN_NOT_PUBLIC")
        currencies = await self.store.open_invoice_currencies(org)
        if currencies - {plan["currency_code"]}:
            raise failed_precondition(
                f"{PLAN.format(plan_id)} bills in {plan['currency_code']} but the organization has open "
                f"invoices in {', '.join(sorted(currencies))}; settle or void them first",
                reason="CURRENCY_MISMATCH",
                metadata={"plan_currency": plan["currency_code"],
                          "open_invoice_currencies": ",".join(sorted(currencies))},
            )
        return await self.store.set_pending_plan(org, plan_id)

    # --- invoices ------------------------------------------------------------------------

    async def generate(
        self, org: str, start: dt.datetime, allow_open: bool, metadata: Sequence[tuple[str, str]] | None
    ) -> Row:
        now = dt.datetime.now(dt.UTC)
        if start != month_start(start) or start.tzinfo is None:
            raise invalid_argument("period_start_time must be the first instant of a UTC month",
                                   {"period_start_time": "not the first instant of a UTC month"})
        if start > now:
            raise invalid_argument("the period has not started yet",
                                   {"period_start_time": "in the future"})
        earliest = _months_before(month_start(now), MAX_LOOKBACK_MONTHS)
        if start < earliest:
            raise invalid_argument(
                f"period_start_time {start:%Y-%m} is more than {MAX_LOOKBACK_MONTHS} months ago",
                {"period_start_time": f"must be {earliest:%Y-%m-%d} or later"})
        end = next_month(start)
        if end > now and not allow_open:
            raise failed_precondition("the period has not ended yet (set allow_open_period for a preview)",
                                      reason="PERIOD_NOT_ENDED")
        await self.subscription(org, now)
        plan_id = await self.store.plan_for_period(org, start)
        plan = await self.store.get_plan(plan_id or "free")
        assert plan is not None
        try:
            summary = await self.usage.GetUsageSummary(
                usage_pb2.GetUsageSummaryRequest(
                    organization=ORGANIZATION.format(org), start_time=to_timestamp(start), end_time=to_timestamp(end),
                    group_by=[usage_pb2.GetUsageSummaryRequest.GROUP_BY_RESOURCE_TYPE,
                              usage_pb2.GetUsageSummaryRequest.GROUP_BY_MODEL],
                ),
                timeout=30, metadata=metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise unavailable(f"cannot read usage for the period: {exc.code().name}") from None
        usage = [invoicing.UsageTotal(r.resource_type, r.model, r.quantity_micros) for r in summary.rows]
        totals = invoicing.compute(
            plan["monthly_fee_micros"], prices_of(plan), usage,
            invoicing.effective_tax_rate(plan["tax_rate_micros"], self.settings.billing_tax_rate_micros),
            plan["display_name"],
        )
        return await self.store.upsert_invoice(org, start, end, plan["id"], plan["currency_code"], totals)

    async def finalize(self, org: str, invoice_id: uuid.UUID) -> Row:
        async def apply(conn: Any, row: Row) -> Row:
            if row["state"] == INVOICE_FINALIZED:
                return row
            if row["state"] != INVOICE_DRAFT:
                raise _invalid_state(row, "finalize")
            now = dt.datetime.now(dt.UTC)
            if row["period_end"] > now:
                raise failed_precondition("the period has not ended yet", reason="PERIOD_NOT_ENDED")
            cur = await conn.execute(
                "SELECT count(*) AS n FROM invoices WHERE org = %s AND number <> ''", (row["org"],)
            )
            sequence = (await cur.fetchone())["n"] + 1
            number = f"{row['period_start']:%Y-%m}-{sequence:04d}"
            cur = await conn.execute(
                "UPDATE invoices SET state = %s, number = %s, finalize_time = %s, due_time = %s, "
                "update_time = now() WHERE id = %s RETURNING *",
                (INVOICE_FINALIZED, number, now, now + dt.timedelta(days=DUE_DAYS), row["id"]),
            )
            return await cur.fetchone()

        return await self._transition(org, invoice_id, apply)

    async def mark_paid(self, org: str, invoice_id: uuid.UUID, reference: str, paid: dt.datetime | None) -> Row:
        async def apply(conn: Any, row: Row) -> Row:
            if row["state"] == INVOICE_PAID and row["payment_reference"] == reference:
                return row
            if row["state"] != INVOICE_FINALIZED:
                raise _invalid_state(row, "mark paid")
            cur = await conn.execute(
                "UPDATE invoices SET state = %s, payment_reference = %s, paid_time = %s, "
                "update_time = now() WHERE id = %s RETURNING *",
                (INVOICE_PAID, reference, paid or dt.datetime.now(dt.UTC), row["id"]),
            )
            return await cur.fetchone()

        return await self._transition(org, invoice_id, apply)

    async def void(self, org: str, invoice_id: uuid.UUID, reason: str) -> Row:
        async def apply(conn: Any, row: Row) -> Row:
            if row["state"] == INVOICE_VOID:
                return row
            if row["state"] == INVOICE_PAID:
                raise _invalid_state(row, "void")
            cur = await conn.execute(
                "UPDATE invoices SET state = %s, void_reason = %s, void_time = now(), "
                "update_time = now() WHERE id = %s RETURNING *",
                (INVOICE_VOID, reason, row["id"]),
            )
            return await cur.fetchone()

        return await self._transition(org, invoice_id, apply)

    async def _transition(self, org: str, invoice_id: uuid.UUID, apply: Any) -> Row:
        row = await self.store.transition(org, invoice_id, apply)
        if row is None:
            raise not_found(f"{INVOICE.format(invoice_id)} not found")
        return row

    async def render_html(self, invoice: Row) -> str:
        lines = await self.store.invoice_lines(invoice["id"])
        currency = invoice["currency_code"]
        e = html.escape
        rows = "".join(
            f"<tr><td>{e(ln.description)}</td>"
            f"<td class=n>{e(invoicing.format_quantity(ln.quantity_micros)) if ln.kind == invoicing.KIND_USAGE else ''}</td>"
            f"<td class=n>{e(invoicing.format_quantity(ln.included_quantity_micros)) if ln.kind == invoicing.KIND_USAGE else ''}</td>"
            f"<td class=n>{e(invoicing.format_quantity(ln.billable_quantity_micros)) if ln.kind == invoicing.KIND_USAGE else ''}</td>"
            f"<td class=n>{e(invoicing.format_money(ln.amount_micros, currency))}</td></tr>"
            for ln in lines
        )
        number = invoice["number"] or "(draft)"
        tax_percent = invoicing.format_quantity(invoice["tax_rate_micros"] * 100)
        return (
            "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>Invoice {e(number)}</title><style>body{{font-family:sans-serif;margin:2em}}"
            "table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:4px}"
            ".n{text-align:right}</style></head><body>"
            f"<h1>Invoice {e(number)}</h1>"
            f"<p>Organization: {e(invoice['org'])}<br>Plan: {e(PLAN.format(invoice['plan_id']))}<br>"
            f"Period: {invoice['period_start']:%Y-%m-%d} to {invoice['period_end']:%Y-%m-%d} (UTC, end exclusive)<br>"
            f"State: {_STATE_WORDS[invoice['state']]}</p>"
            "<table><thead><tr><th>Item</th><th class=n>Quantity</th><th class=n>Included</th>"
            "<th class=n>Billable</th><th class=n>Amount</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
            f"<p class=n>Subtotal: {e(invoicing.format_money(invoice['subtotal_micros'], currency))}<br>"
            f"Tax ({e(tax_percent)} %): {e(invoicing.format_money(invoice['tax_micros'], currency))}<br>"
            f"<strong>Total: {e(invoicing.format_money(invoice['total_micros'], currency))}</strong></p>"
            "</body></html>"
        )


def _invalid_state(row: Row, action: str) -> Exception:
    state = _STATE_WORDS[row["state"]]
    return failed_precondition(f"cannot {action} a {state} invoice", reason="INVALID_STATE",
                               metadata={"state": state})


def _months_before(start: dt.datetime, months: int) -> dt.datetime:
    index = start.year * 12 + start.month - 1 - months
    return start.replace(year=index // 12, month=index % 12 + 1)
