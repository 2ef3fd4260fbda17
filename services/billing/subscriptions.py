"""Subscriptions: one per organization, rolling over at calendar-month boundaries and pushing
the plan's rate limits to Usage.

Plan changes never apply mid-period: ChangePlan records a pending plan; the first access after
the boundary (or the background sweep, every minute) rolls the subscription into the new period
with the pending plan, records which plan was in force for that period (invoices use it), and
pushes the plan's limits to Usage's SetRateLimitPolicy. A push that fails is retried by the
sweep until Usage acknowledges it (`policy_synced`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import grpc
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

from services.billing.plans import MAX_REQUEST_ID, PLAN
from services.billing.store import STATE_CANCELED, Row, Store
from services.common.channels import Channels
from services.common.errors import failed_precondition, invalid_argument, not_found, unavailable
from services.common.names import resource

log = logging.getLogger("aimesh.billing")

SWEEP_SECONDS = 60
SUBSCRIPTION = resource("billing.aimesh.dev/Subscription")
ORGANIZATION = resource("auth.aimesh.dev/Organization")
RATE_LIMIT_POLICY = resource("usage.aimesh.dev/RateLimitPolicy")
DEFAULT_POLICY_ORG = "-"  # organizations/-/rateLimitPolicy: for organizations without their own


class Subscriptions:
    def __init__(self, store: Store, channels: Channels) -> None:
        self.store = store
        self.channels = channels
        self._default_pushed: tuple[str, int, int] | None = None

    @property
    def usage(self) -> usage_pb2_grpc.UsageServiceStub:
        return usage_pb2_grpc.UsageServiceStub(self.channels.get("usage"))

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

    async def change_plan(
        self, org: str, plan_id: str, may_use_private: bool, request_id: str
    ) -> Row:
        if len(request_id) > MAX_REQUEST_ID:
            raise invalid_argument(
                "request_id too long", {"request_id": f"at most {MAX_REQUEST_ID} characters"}
            )
        subscription = await self.subscription(org)
        plan = await self.store.get_plan(plan_id)
        if plan is None:
            raise not_found(f"{PLAN.format(plan_id)} not found", reason="PLAN_NOT_FOUND")
        if subscription["state"] == STATE_CANCELED:
            raise failed_precondition(
                "the subscription is canceled", reason="SUBSCRIPTION_CANCELED"
            )
        if plan_id == subscription["plan_id"]:
            if not subscription["pending_plan_id"]:
                raise failed_precondition(
                    f"already on {PLAN.format(plan_id)}", reason="PLAN_UNCHANGED"
                )
            return await self.store.set_pending_plan(org, None)  # cancels the pending change
        if plan["archived"]:
            raise failed_precondition(
                f"{PLAN.format(plan_id)} is no longer offered", reason="PLAN_ARCHIVED"
            )
        if not plan["publicly_available"] and not may_use_private:
            raise failed_precondition(
                f"{PLAN.format(plan_id)} is not offered to this organization",
                reason="PLAN_NOT_PUBLIC",
            )
        currencies = await self.store.open_invoice_currencies(org)
        if currencies - {plan["currency_code"]}:
            raise failed_precondition(
                f"{PLAN.format(plan_id)} bills in {plan['currency_code']} but the organization has "
                f"open invoices in {', '.join(sorted(currencies))}; settle or void them first",
                reason="CURRENCY_MISMATCH",
                metadata={
                    "plan_currency": plan["currency_code"],
                    "open_invoice_currencies": ",".join(sorted(currencies)),
                },
            )
        return await self.store.set_pending_plan(org, plan_id)
