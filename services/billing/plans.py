"""Plans (plain Python): which plan fields a platform admin may set, their limits, how a
Create/UpdatePlan request becomes rows for the store, and who may see a plan."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Protocol

from services.billing import pricing
from services.billing.store import Row, Store
from services.common.errors import FieldViolations, already_exists, etag_mismatch, not_found
from services.common.names import resource

PLAN = resource("billing.aimesh.dev/Plan")
PLAN_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
MUTABLE = frozenset({"display_name", "description", "monthly_fee_micros", "prices",
                     "organization_requests_per_minute", "api_key_requests_per_minute",
                     "tax_rate_micros", "publicly_available", "archived"})
MAX_MONEY = 10**15
MAX_REQUEST_ID = 200
# Proto field -> column, where they differ.
_COLUMNS = {"organization_requests_per_minute": "org_rpm", "api_key_requests_per_minute": "key_rpm"}


def check_plan(plan: Any, fields: set[str] | frozenset[str], v: FieldViolations) -> list[Row]:
    """Check the named fields of `plan` (a billing.v1.Plan); returns its prices as rows."""
    if "display_name" in fields:
        v.check(1 <= len(plan.display_name) <= 100, "plan.display_name", "1-100 characters")
    if "description" in fields:
        v.check(len(plan.description) <= 2000, "plan.description", "at most 2000 characters")
    if "currency_code" in fields:
        v.check(
            bool(CURRENCY.match(plan.currency_code)),
            "plan.currency_code",
            "an ISO 4217 code like USD",
        )
    if "monthly_fee_micros" in fields:
        v.check(
            0 <= plan.monthly_fee_micros <= MAX_MONEY,
            "plan.monthly_fee_micros",
            f"must be 0..{MAX_MONEY}",
        )
    if "organization_requests_per_minute" in fields:
        v.check(
            plan.organization_requests_per_minute > 0,
            "plan.organization_requests_per_minute",
            "must be > 0",
        )
    if "api_key_requests_per_minute" in fields:
        v.check(
            plan.api_key_requests_per_minute > 0, "plan.api_key_requests_per_minute", "must be > 0"
        )
    if "tax_rate_micros" in fields:
        v.check(
            0 <= plan.tax_rate_micros <= 1_000_000, "plan.tax_rate_micros", "must be 0..1000000"
        )
    prices: list[Row] = []
    if "prices" in fields:
        seen: set[tuple[int, str]] = set()
        valid_types = set(pricing.RESOURCE_LABELS)
        for i, p in enumerate(plan.prices):
            at = f"plan.prices[{i}]"
            v.check(p.resource_type in valid_types, f"{at}.resource_type", "unknown resource type")
            v.check(
                0 <= p.included_quantity_micros <= MAX_MONEY,
                f"{at}.included_quantity_micros",
                f"must be 0..{MAX_MONEY}",
            )
            v.check(
                0 <= p.overage_unit_price_micros <= MAX_MONEY,
                f"{at}.overage_unit_price_micros",
                f"must be 0..{MAX_MONEY}",
            )
            v.check(p.price_unit_quantity >= 1, f"{at}.price_unit_quantity", "must be >= 1")
            v.check(
                (p.resource_type, p.model) not in seen,
                f"{at}.model",
                "this resource type and model are priced twice",
            )
            seen.add((p.resource_type, p.model))
            prices.append(
                {
                    "resource_type": p.resource_type,
                    "model": p.model,
                    "included_quantity_micros": p.included_quantity_micros,
                    "overage_unit_price_micros": p.overage_unit_price_micros,
                    "price_unit_quantity": p.price_unit_quantity,
                }
            )
    return prices


def new_plan(plan_id: str, plan: Any, request_id: str) -> tuple[Row, list[Row]]:
    """A CreatePlan request as (plan row, price rows), after checking every field."""
    v = FieldViolations()
    v.check(bool(PLAN_ID.match(plan_id)), "plan_id", "3-40 characters of [a-z0-9-]")
    prices = check_plan(plan, MUTABLE | {"currency_code"}, v)
    v.check(len(request_id) <= MAX_REQUEST_ID, "request_id", f"at most {MAX_REQUEST_ID} characters")
    v.raise_if_any()
    row = {
        _COLUMNS.get(f, f): getattr(plan, f) for f in MUTABLE | {"currency_code"} if f != "prices"
    }
    return {**row, "id": plan_id, "request_id": request_id or None}, prices


def plan_update(plan: Any, paths: set[str]) -> tuple[Row, list[Row] | None, int | None]:
    """An UpdatePlan request as (column changes, new prices or None, expected version or None)."""
    v = FieldViolations()
    v.check(bool(paths), "update_mask", "required")
    for path in sorted(paths - MUTABLE):
        v.add("update_mask", f"{path!r} cannot be updated")
    prices = check_plan(plan, paths & MUTABLE, v)
    if plan.etag:
        v.check(plan.etag.isdigit(), "plan.etag", "malformed")
    v.raise_if_any()
    changes = {_COLUMNS.get(f, f): getattr(plan, f) for f in paths if f != "prices"}
    return changes, (prices if "prices" in paths else None), (int(plan.etag) if plan.etag else None)


class _Subscriptions(Protocol):
    """What plans need of subscriptions.Subscriptions (which imports this module)."""

    async def subscription(self, org: str, now: dt.datetime | None = None) -> Row: ...

    async def push_default_policy(self) -> bool: ...


class Plans:
    def __init__(self, store: Store, subscriptions: _Subscriptions) -> None:
        self.store = store
        self.subscriptions = subscriptions

    async def get(self, plan_id: str, org: str, is_platform_admin: bool) -> Row:
        """A plan as `org` may see it: public ones, and a private one only by platform admins
        and organizations subscribed (or changing) to it; any other is NOT_FOUND."""
        plan = await self.store.get_plan(plan_id)
        if plan is None or (
            not plan["publicly_available"]
            and not is_platform_admin
            and not await self._subscribed_to(org, plan_id)
        ):
            raise not_found(f"{PLAN.format(plan_id)} not found")
        return plan

    async def _subscribed_to(self, org: str, plan_id: str) -> bool:
        subscription = await self.subscriptions.subscription(org)
        return plan_id in (subscription["plan_id"], subscription["pending_plan_id"])

    async def create(self, plan_id: str, plan: Any, request_id: str) -> Row:
        created, _ = await self.store.create_plan(*new_plan(plan_id, plan, request_id))
        if created is None:
            raise already_exists(f"{PLAN.format(plan_id)} already exists")
        return created

    async def update(self, plan: Any, paths: set[str]) -> Row:
        """UpdatePlan (guarded by the plan's etag when given); Usage learns the default plan's
        new limits (the sweep retries if Usage is away)."""
        plan_id = PLAN.id(plan.name, "plan.name")
        changes, prices, version = plan_update(plan, paths)
        updated = await self.store.update_plan(plan_id, changes, prices, version)
        if updated is None:
            if await self.store.get_plan(plan_id) is None:
                raise not_found(f"{plan.name} not found")
            raise etag_mismatch(plan.name)
        await self.subscriptions.push_default_policy()
        return updated
