"""Billing's gRPC surface: thin — decode, authorize, call the domain logic, encode.

Authorization: plans are readable by everyone; creating/updating plans, marking invoices paid,
reading another organization's data and subscribing to non-public plans need a platform admin
(an identity carrying the scope `platform:admin`). ChangePlan needs the OWNER role; generating,
finalizing and voiding invoices need ADMIN or higher.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import cast

import grpc
from aimesh.billing.v1 import billing_pb2, billing_pb2_grpc
from aimesh.usage.v1 import usage_pb2
from google.api import httpbody_pb2

from services.billing.invoices import INVOICE, Invoices
from services.billing.plans import PLAN, Plans
from services.billing.store import Row, Store
from services.billing.subscriptions import ORGANIZATION, SUBSCRIPTION, Subscriptions
from services.common.channels import Channels
from services.common.errors import (
    invalid_argument,
    permission_denied,
)
from services.common.identity import Identity, require_identity
from services.common.pagination import Paginator
from services.common.server import Binding, Runtime, ServiceSpec, spec_for
from services.common.timestamps import to_timestamp


def _require_platform_admin(identity: Identity, action: str) -> None:
    if not identity.is_platform_admin:
        raise permission_denied(
            f"{action} requires a platform admin", reason="PLATFORM_ADMIN_REQUIRED"
        )


def _plan_message(plan: Row) -> billing_pb2.Plan:
    return billing_pb2.Plan(
        name=PLAN.format(plan["id"]),
        display_name=plan["display_name"],
        description=plan["description"],
        currency_code=plan["currency_code"],
        monthly_fee_micros=plan["monthly_fee_micros"],
        prices=[
            billing_pb2.PlanPrice(
                resource_type=p["resource_type"],
                model=p["model"],
                included_quantity_micros=p["included_quantity_micros"],
                overage_unit_price_micros=p["overage_unit_price_micros"],
                price_unit_quantity=p["price_unit_quantity"],
            )
            for p in plan["prices"]
        ],
        organization_requests_per_minute=plan["org_rpm"],
        api_key_requests_per_minute=plan["key_rpm"],
        tax_rate_micros=plan["tax_rate_micros"],
        publicly_available=plan["publicly_available"],
        archived=plan["archived"],
        create_time=to_timestamp(plan["create_time"]),
        update_time=to_timestamp(plan["update_time"]),
        etag=str(plan["version"]),
    )


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        assert runtime.db is not None
        self.store = Store(runtime.db)
        channels = Channels(runtime.settings)
        runtime.on_shutdown(channels.close)
        self.subscriptions = Subscriptions(self.store, channels)
        self.invoices = Invoices(runtime.settings, self.store, self.subscriptions)
        self.plans = Plans(self.store, self.subscriptions)
        self.pages = Paginator(runtime.settings)
        runtime.spawn(self.subscriptions.sweep_forever(), "billing-subscription-sweep")

    # --- plans ---------------------------------------------------------------------------

    async def ListPlans(
        self, request: billing_pb2.ListPlansRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ListPlansResponse:
        identity = require_identity(context.invocation_metadata() or ())
        page = self.pages.start(request, identity.org)
        show_all = request.show_all and identity.is_platform_admin
        plans, token = page.split(await self.store.list_plans(show_all, page.size + 1, page.offset))
        return billing_pb2.ListPlansResponse(
            plans=[_plan_message(p) for p in plans], next_page_token=token
        )

    async def GetPlan(
        self, request: billing_pb2.GetPlanRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Plan:
        identity = require_identity(context.invocation_metadata() or ())
        plan_id = PLAN.id(request.name, "name")
        return _plan_message(
            await self.plans.get(plan_id, identity.org, identity.is_platform_admin)
        )

    async def CreatePlan(
        self, request: billing_pb2.CreatePlanRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Plan:
        require_identity(context.invocation_metadata() or ())
        plan = await self.plans.create(request.plan_id, request.plan, request.request_id)
        return _plan_message(plan)

    async def UpdatePlan(
        self, request: billing_pb2.UpdatePlanRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Plan:
        require_identity(context.invocation_metadata() or ())
        updated = await self.plans.update(request.plan, set(request.update_mask.paths))
        return _plan_message(updated)

    # --- subscription --------------------------------------------------------------------

    def _subscription_message(self, row: Row) -> billing_pb2.Subscription:
        return billing_pb2.Subscription(
            name=SUBSCRIPTION.format(),
            organization=ORGANIZATION.format(row["org"]),
            plan=PLAN.format(row["plan_id"]),
            pending_plan=PLAN.format(row["pending_plan_id"]) if row["pending_plan_id"] else "",
            current_period_start_time=to_timestamp(row["period_start"]),
            current_period_end_time=to_timestamp(row["period_end"]),
            state=row["state"],
            create_time=to_timestamp(row["create_time"]),
            update_time=to_timestamp(row["update_time"]),
        )

    async def GetSubscription(
        self, request: billing_pb2.GetSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Subscription:
        identity = require_identity(context.invocation_metadata() or ())
        return self._subscription_message(await self.subscriptions.subscription(identity.org))

    async def ChangePlan(
        self, request: billing_pb2.ChangePlanRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Subscription:
        identity = require_identity(context.invocation_metadata() or ())
        plan_id = PLAN.id(request.plan, "plan")
        row = await self.subscriptions.change_plan(
            identity.org, plan_id, identity.is_platform_admin, request.request_id
        )
        return self._subscription_message(row)

    # --- invoices ------------------------------------------------------------------------

    async def _invoice_message(self, row: Row) -> billing_pb2.Invoice:
        lines = await self.store.invoice_lines(row["id"])
        return billing_pb2.Invoice(
            name=INVOICE.format(row["id"]),
            number=row["number"],
            organization=ORGANIZATION.format(row["org"]),
            plan=PLAN.format(row["plan_id"]),
            period_start_time=to_timestamp(row["period_start"]),
            period_end_time=to_timestamp(row["period_end"]),
            state=row["state"],
            currency_code=row["currency_code"],
            line_items=[
                billing_pb2.InvoiceLineItem(
                    kind=cast(billing_pb2.InvoiceLineItem.Kind, ln.kind),
                    description=ln.description,
                    resource_type=cast(usage_pb2.ResourceType, ln.resource_type),
                    model=ln.model,
                    quantity_micros=ln.quantity_micros,
                    included_quantity_micros=ln.included_quantity_micros,
                    billable_quantity_micros=ln.billable_quantity_micros,
                    unit_price_micros=ln.unit_price_micros,
                    price_unit_quantity=ln.price_unit_quantity,
                    amount_micros=ln.amount_micros,
                )
                for ln in lines
            ],
            subtotal_micros=row["subtotal_micros"],
            tax_rate_micros=row["tax_rate_micros"],
            tax_micros=row["tax_micros"],
            total_micros=row["total_micros"],
            create_time=to_timestamp(row["create_time"]),
            update_time=to_timestamp(row["update_time"]),
            finalize_time=to_timestamp(row["finalize_time"]),
            due_time=to_timestamp(row["due_time"]),
            paid_time=to_timestamp(row["paid_time"]),
            payment_reference=row["payment_reference"],
            void_time=to_timestamp(row["void_time"]),
            void_reason=row["void_reason"],
        )

    async def GenerateInvoice(
        self, request: billing_pb2.GenerateInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Invoice:
        identity = require_identity(context.invocation_metadata() or ())
        org = identity.org
        if request.organization:
            requested = ORGANIZATION.id(request.organization, "organization")
            if requested != identity.org:
                _require_platform_admin(identity, "invoicing another organization")
            org = requested
        start = (
            request.period_start_time.ToDatetime(tzinfo=dt.UTC)
            if request.HasField("period_start_time")
            else None
        )
        row = await self.invoices.generate(
            org, start, request.allow_open_period, identity.to_headers()
        )
        return await self._invoice_message(row)

    async def _own_invoice(
        self, name: str, context: grpc.aio.ServicerContext
    ) -> tuple[Identity, uuid.UUID]:
        identity = require_identity(context.invocation_metadata() or ())
        invoice_id = INVOICE.uuid(name, "name")
        assert invoice_id is not None
        return identity, invoice_id

    async def GetInvoice(
        self, request: billing_pb2.GetInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Invoice:
        identity, invoice_id = await self._own_invoice(request.name, context)
        return await self._invoice_message(await self.invoices.get(identity.org, invoice_id))

    async def ListInvoices(
        self, request: billing_pb2.ListInvoicesRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ListInvoicesResponse:
        identity = require_identity(context.invocation_metadata() or ())
        page = self.pages.start(request, identity.org)
        if request.state not in (0, 1, 2, 3, 4):
            raise invalid_argument("unknown state", {"state": "unknown invoice state"})
        rows, token = page.split(
            await self.store.list_invoices(identity.org, request.state, page.size + 1, page.offset)
        )
        return billing_pb2.ListInvoicesResponse(
            invoices=[await self._invoice_message(r) for r in rows], next_page_token=token
        )

    async def FinalizeInvoice(
        self, request: billing_pb2.FinalizeInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Invoice:
        identity, invoice_id = await self._own_invoice(request.name, context)
        return await self._invoice_message(await self.invoices.finalize(identity.org, invoice_id))

    async def MarkInvoicePaid(
        self, request: billing_pb2.MarkInvoicePaidRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Invoice:
        identity, invoice_id = await self._own_invoice(request.name, context)
        paid = (
            request.paid_time.ToDatetime(tzinfo=dt.UTC) if request.HasField("paid_time") else None
        )
        return await self._invoice_message(
            await self.invoices.mark_paid(identity.org, invoice_id, request.payment_reference, paid)
        )

    async def VoidInvoice(
        self, request: billing_pb2.VoidInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Invoice:
        identity, invoice_id = await self._own_invoice(request.name, context)
        return await self._invoice_message(
            await self.invoices.void(identity.org, invoice_id, request.reason)
        )

    async def RenderInvoice(
        self, request: billing_pb2.RenderInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> httpbody_pb2.HttpBody:
        identity, invoice_id = await self._own_invoice(request.name, context)
        page = await self.invoices.render_html(await self.invoices.get(identity.org, invoice_id))
        return httpbody_pb2.HttpBody(content_type="text/html; charset=utf-8", data=page.encode())


def build_spec() -> ServiceSpec:
    return spec_for(
        "billing",
        Path(__file__).parent,
        [
            Binding(
                billing_pb2_grpc.add_BillingServiceServicer_to_server,
                BillingServicer,
                billing_pb2.DESCRIPTOR.services_by_name["BillingService"],
            )
        ],
    )
