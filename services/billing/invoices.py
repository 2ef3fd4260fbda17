"""Invoices: computed from Usage's summary of a period and the plan in force for it
(services/billing/pricing.py does the arithmetic), their state transitions (DRAFT -> FINALIZED
-> PAID, or VOID) and their HTML rendering."""

from __future__ import annotations

import datetime as dt
import html
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
from aimesh.usage.v1 import usage_pb2

from services.billing import pricing
from services.billing.plans import PLAN
from services.billing.store import (
    INVOICE_DRAFT,
    INVOICE_FINALIZED,
    INVOICE_PAID,
    INVOICE_VOID,
    Row,
    Store,
)
from services.billing.subscriptions import ORGANIZATION, Subscriptions
from services.common.config import Settings
from services.common.errors import failed_precondition, invalid_argument, not_found, unavailable
from services.common.names import resource
from services.common.timestamps import month_start, next_month, to_timestamp

log = logging.getLogger("aimesh.billing")

DUE_DAYS = 30
# How far back an invoice may be generated (billing.proto, GenerateInvoice): older periods are
# outside any subscription this platform can have priced, e.g. a typo'd year 1.
MAX_LOOKBACK_MONTHS = 24
_STATE_WORDS = {INVOICE_DRAFT: "DRAFT", INVOICE_FINALIZED: "FINALIZED", INVOICE_PAID: "PAID",
                INVOICE_VOID: "VOID"}

INVOICE = resource("billing.aimesh.dev/Invoice")


def prices_of(plan: Row) -> list[pricing.Price]:
    return [
        pricing.Price(p["resource_type"], p["model"], p["included_quantity_micros"],
                      p["overage_unit_price_micros"], p["price_unit_quantity"])
        for p in plan["prices"]
    ]


class Invoices:
    def __init__(self, settings: Settings, store: Store, subscriptions: Subscriptions) -> None:
        self.settings = settings
        self.store = store
        self.subscriptions = subscriptions

    # --- invoices ------------------------------------------------------------------------

    async def generate(
        self,
        org: str,
        start: dt.datetime | None,
        allow_open: bool,
        metadata: Sequence[tuple[str, str]] | None,
    ) -> Row:
        """The invoice of the month starting at `start` (None: missing in the request)."""
        if start is None:
            raise invalid_argument(
                "period_start_time is required", {"period_start_time": "required"}
            )
        now = dt.datetime.now(dt.UTC)
        if start != month_start(start) or start.tzinfo is None:
            raise invalid_argument(
                "period_start_time must be the first instant of a UTC month",
                {"period_start_time": "not the first instant of a UTC month"},
            )
        if start > now:
            raise invalid_argument(
                "the period has not started yet", {"period_start_time": "in the future"}
            )
        earliest = _months_before(month_start(now), MAX_LOOKBACK_MONTHS)
        if start < earliest:
            raise invalid_argument(
                f"period_start_time {start:%Y-%m} is more than {MAX_LOOKBACK_MONTHS} months ago",
                {"period_start_time": f"must be {earliest:%Y-%m-%d} or later"},
            )
        end = next_month(start)
        if end > now and not allow_open:
            raise failed_precondition(
                "the period has not ended yet (set allow_open_period for a preview)",
                reason="PERIOD_NOT_ENDED",
            )
        await self.subscriptions.subscription(org, now)
        plan_id = await self.store.plan_for_period(org, start)
        plan = await self.store.get_plan(plan_id or "free")
        assert plan is not None
        try:
            summary = await self.subscriptions.usage.GetUsageSummary(
                usage_pb2.GetUsageSummaryRequest(
                    organization=ORGANIZATION.format(org),
                    start_time=to_timestamp(start),
                    end_time=to_timestamp(end),
                    group_by=[
                        usage_pb2.GetUsageSummaryRequest.GROUP_BY_RESOURCE_TYPE,
                        usage_pb2.GetUsageSummaryRequest.GROUP_BY_MODEL,
                    ],
                ),
                timeout=30,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise unavailable(f"cannot read usage for the period: {exc.code().name}") from None
        usage = [
            pricing.UsageTotal(r.resource_type, r.model, r.quantity_micros) for r in summary.rows
        ]
        totals = pricing.compute(
            plan["monthly_fee_micros"],
            prices_of(plan),
            usage,
            pricing.effective_tax_rate(
                plan["tax_rate_micros"], self.settings.billing_tax_rate_micros
            ),
            plan["display_name"],
        )
        return await self.store.upsert_invoice(
            org, start, end, plan["id"], plan["currency_code"], totals
        )

    async def finalize(self, org: str, invoice_id: uuid.UUID) -> Row:
        async def apply(conn: Any, row: Row) -> Row:
            if row["state"] == INVOICE_FINALIZED:
                return row
            if row["state"] != INVOICE_DRAFT:
                raise _invalid_state(row, "finalize")
            now = dt.datetime.now(dt.UTC)
            if row["period_end"] > now:
                raise failed_precondition("the period has not ended yet", reason="PERIOD_NOT_ENDED")
            sequence = await self.store.numbered_invoices(conn, row["org"]) + 1
            number = f"{row['period_start']:%Y-%m}-{sequence:04d}"
            return await self.store.set_invoice_state(
                conn, row["id"], INVOICE_FINALIZED, number=number, finalize_time=now,
                due_time=now + dt.timedelta(days=DUE_DAYS),
            )

        return await self._transition(org, invoice_id, apply)

    async def get(self, org: str, invoice_id: uuid.UUID) -> Row:
        row = await self.store.get_invoice(org, invoice_id)
        if row is None:
            raise not_found(f"{INVOICE.format(invoice_id)} not found")
        return row

    async def mark_paid(
        self, org: str, invoice_id: uuid.UUID, reference: str, paid: dt.datetime | None
    ) -> Row:
        if not 1 <= len(reference) <= 200:
            raise invalid_argument(
                "payment_reference must be 1-200 characters",
                {"payment_reference": "1-200 characters"},
            )

        async def apply(conn: Any, row: Row) -> Row:
            if row["state"] == INVOICE_PAID and row["payment_reference"] == reference:
                return row
            if row["state"] != INVOICE_FINALIZED:
                raise _invalid_state(row, "mark paid")
            return await self.store.set_invoice_state(
                conn, row["id"], INVOICE_PAID, payment_reference=reference,
                paid_time=paid or dt.datetime.now(dt.UTC),
            )

        return await self._transition(org, invoice_id, apply)

    async def void(self, org: str, invoice_id: uuid.UUID, reason: str) -> Row:
        if len(reason) > 500:
            raise invalid_argument("reason too long", {"reason": "at most 500 characters"})

        async def apply(conn: Any, row: Row) -> Row:
            if row["state"] == INVOICE_VOID:
                return row
            if row["state"] == INVOICE_PAID:
                raise _invalid_state(row, "void")
            return await self.store.set_invoice_state(
                conn, row["id"], INVOICE_VOID, void_reason=reason,
                void_time=dt.datetime.now(dt.UTC),
            )

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

        def quantity(micros: int, kind: int) -> str:
            return e(pricing.format_quantity(micros)) if kind == pricing.KIND_USAGE else ""

        def money(micros: int) -> str:
            return e(pricing.format_money(micros, currency))

        rows = "".join(
            f"<tr><td>{e(ln.description)}</td>"
            f"<td class=n>{quantity(ln.quantity_micros, ln.kind)}</td>"
            f"<td class=n>{quantity(ln.included_quantity_micros, ln.kind)}</td>"
            f"<td class=n>{quantity(ln.billable_quantity_micros, ln.kind)}</td>"
            f"<td class=n>{money(ln.amount_micros)}</td></tr>"
            for ln in lines
        )
        number = invoice["number"] or "(draft)"
        tax_percent = pricing.format_quantity(invoice["tax_rate_micros"] * 100)
        return (
            "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>Invoice {e(number)}</title><style>body{{font-family:sans-serif;margin:2em}}"
            "table{border-collapse:collapse;width:100%}"
            "td,th{border-bottom:1px solid #ddd;padding:4px}"
            ".n{text-align:right}</style></head><body>"
            f"<h1>Invoice {e(number)}</h1>"
            f"<p>Organization: {e(invoice['org'])}<br>Plan: {e(PLAN.format(invoice['plan_id']))}"
            f"<br>Period: {invoice['period_start']:%Y-%m-%d} to {invoice['period_end']:%Y-%m-%d}"
            " (UTC, end exclusive)<br>"
            f"State: {_STATE_WORDS[invoice['state']]}</p>"
            "<table><thead><tr><th>Item</th><th class=n>Quantity</th><th class=n>Included</th>"
            "<th class=n>Billable</th><th class=n>Amount</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
            f"<p class=n>Subtotal: {money(invoice['subtotal_micros'])}<br>"
            f"Tax ({e(tax_percent)} %): {money(invoice['tax_micros'])}<br>"
            f"<strong>Total: {money(invoice['total_micros'])}</strong></p>"
            "</body></html>"
        )


def _invalid_state(row: Row, action: str) -> Exception:
    state = _STATE_WORDS[row["state"]]
    return failed_precondition(
        f"cannot {action} a {state} invoice", reason="INVALID_STATE", metadata={"state": state}
    )


def _months_before(start: dt.datetime, months: int) -> dt.datetime:
    index = start.year * 12 + start.month - 1 - months
    return start.replace(year=index // 12, month=index % 12 + 1)
