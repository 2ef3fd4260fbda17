"""Budgets: monthly money and token caps per organization or API key: the rules of their
fields and their create/read/update/delete. reservations.py enforces the caps."""

from __future__ import annotations

import re
import uuid
from typing import Any

from services.common.errors import (
    FieldViolations,
    already_exists,
    etag_mismatch,
    invalid_argument,
    not_found,
)
from services.common.names import resource
from services.usage.ledger import check_api_key
from services.usage.store import Row, Store

BUDGET = resource("usage.aimesh.dev/Budget")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
MAX_AMOUNT = 10**15  # micros and tokens: exact as Lua doubles (reservations.py)
BUDGET_MUTABLE = frozenset({"display_name", "monthly_limit_micros", "monthly_token_limit"})
SCOPE_ORGANIZATION, SCOPE_API_KEY = 1, 2  # usage.v1.Budget.Scope
MAX_REQUEST_ID = 200


def valid_currency(code: str) -> bool:
    """An ISO 4217-shaped currency code (three capital letters)."""
    return bool(_CURRENCY.match(code))


def _check_caps(b: Any, v: FieldViolations, fields: set[str] | frozenset[str]) -> None:
    if "display_name" in fields:
        v.check(len(b.display_name) <= 100, "budget.display_name", "at most 100 characters")
    for cap in ("monthly_limit_micros", "monthly_token_limit"):
        if cap in fields:
            v.check(0 <= getattr(b, cap) <= MAX_AMOUNT, f"budget.{cap}", f"must be 0..{MAX_AMOUNT}")


def new_budget(org: str, b: Any, request_id: str) -> Row:
    """A CreateBudget request's budget (a usage.v1.Budget) as a row, after checking every rule:
    a known scope (an API key of `org` only with scope API_KEY), a money or a token cap, an
    ISO 4217 currency with a money cap."""
    v = FieldViolations()
    _check_caps(b, v, BUDGET_MUTABLE)
    v.check(
        b.scope in (SCOPE_ORGANIZATION, SCOPE_API_KEY),
        "budget.scope",
        "must be ORGANIZATION or API_KEY",
    )
    if b.scope == SCOPE_API_KEY:
        v.check(bool(b.api_key), "budget.api_key", "required when scope is API_KEY")
        check_api_key(b.api_key, "budget.api_key", v, org)
    else:
        v.check(not b.api_key, "budget.api_key", "only with scope API_KEY")
    v.check(
        b.monthly_limit_micros > 0 or b.monthly_token_limit > 0,
        "budget.monthly_limit_micros",
        "set a money cap or a token cap",
    )
    if b.monthly_limit_micros > 0 or b.currency_code:
        v.check(
            valid_currency(b.currency_code),
            "budget.currency_code",
            "an ISO 4217 code like USD is required with a money cap",
        )
    v.check(len(request_id) <= MAX_REQUEST_ID, "request_id", f"at most {MAX_REQUEST_ID} characters")
    v.raise_if_any()
    return {
        "org": org,
        "scope": b.scope,
        "api_key": b.api_key,
        "display_name": b.display_name,
        "monthly_limit_micros": b.monthly_limit_micros,
        "currency_code": b.currency_code,
        "monthly_token_limit": b.monthly_token_limit,
        "request_id": request_id or None,
    }


def check_update_mask(b: Any, paths: list[str]) -> None:
    """UpdateBudget's mask names only mutable fields, and their new values are in range."""
    v = FieldViolations()
    v.check(bool(paths), "update_mask", "required")
    for path in paths:
        v.check(path in BUDGET_MUTABLE, "update_mask", f"{path!r} cannot be updated")
    _check_caps(b, v, set(paths) & BUDGET_MUTABLE)
    v.raise_if_any()


def budget_changes(row: Row, b: Any, paths: list[str]) -> tuple[Row, int | None]:
    """The column changes of an update of budget `row` and the version its etag expects (None:
    no etag). The result must still have a cap, and a money cap needs the budget's currency."""
    changes = {p: getattr(b, p) for p in paths}
    after = {**row, **changes}
    money, tokens = int(after["monthly_limit_micros"]), int(after["monthly_token_limit"])
    if money <= 0 and tokens <= 0:
        raise invalid_argument(
            "a budget needs a money cap or a token cap",
            {"budget.monthly_limit_micros": "set a money cap or a token cap"},
        )
    if money > 0 and not row["currency_code"]:
        raise invalid_argument(
            "this budget has no currency; create a money budget instead",
            {"budget.monthly_limit_micros": "budget has no currency_code"},
        )
    if not b.etag:
        return changes, None
    if not b.etag.isdigit():
        raise invalid_argument(
            "malformed etag", {"budget.etag": "not an etag this service returned"}
        )
    return changes, int(b.etag)


class Budgets:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def create_budget(self, org: str, budget: Any, request_id: str) -> Row:
        """CreateBudget: one budget per scope and currency."""
        row, _ = await self.store.create_budget(new_budget(org, budget, request_id))
        if not row:
            raise already_exists(
                "a budget for this scope and currency already exists", reason="BUDGET_EXISTS"
            )
        return row

    async def get_budget(self, org: str, name: str) -> Row:
        row = await self.store.get_budget(org, _budget_id(name))
        if row is None:
            raise not_found(f"{name} not found")
        return row

    async def update_budget(self, org: str, budget: Any, paths: list[str]) -> Row:
        """UpdateBudget: the fields in `paths`, guarded by the budget's etag when given."""
        budget_id = _budget_id(budget.name)
        row = await self.store.get_budget(org, budget_id)
        check_update_mask(budget, paths)
        if row is None:
            raise not_found(f"{budget.name} not found")
        changes, version = budget_changes(row, budget, paths)
        updated = await self.store.update_budget(org, budget_id, changes, version)
        if updated is None:
            raise etag_mismatch(budget.name)
        return updated

    async def delete_budget(self, org: str, name: str, allow_missing: bool) -> None:
        if not await self.store.delete_budget(org, _budget_id(name)) and not allow_missing:
            raise not_found(f"{name} not found")


def _budget_id(name: str) -> uuid.UUID:
    budget_id = BUDGET.uuid(name, "name")
    assert budget_id is not None
    return budget_id
