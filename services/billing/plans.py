"""Plan rules (plain Python): which plan fields a platform admin may set, their limits, and how
a Create/UpdatePlan request becomes rows for the store."""

from __future__ import annotations

import re
from typing import Any

from services.billing import pricing
from services.billing.store import Row
from services.common.errors import FieldViolations
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
