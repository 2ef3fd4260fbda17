"""Invoice arithmetic (plain Python, Decimal only — no floats anywhere).

Rules (the contract's, aimesh.billing.v1):
- The first line is the plan's monthly fee.
- Usage lines, one per (resource type, model) with usage, ordered by resource type then model.
  A line's price is the plan price for exactly that model, else the plan's model-less price
  for the resource type, else none (free).
- A price's included quantity is an allowance shared by every line it prices, consumed in line
  order (so a model-less allowance covers models in name order).
- amount = billable_quantity_micros * unit_price_micros / (price_unit_quantity * 1,000,000),
  rounded half-up to whole micros once per line; subtotal is the exact sum of lines.
- tax = subtotal * tax_rate_micros / 1,000,000, rounded half-up; total = subtotal + tax.
- The plan's tax rate applies when it is set (> 0), otherwise the platform rate
  (AIMESH_BILLING_TAX_RATE_MICROS).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

KIND_SUBSCRIPTION_FEE = 1
KIND_USAGE = 2
MICROS = Decimal(1_000_000)

RESOURCE_LABELS = {
    1: "Prompt tokens",
    2: "Completion tokens",
    3: "Audio seconds",
    4: "Characters synthesized",
    5: "Chunks embedded",
    6: "Searches",
    7: "Requests",
}


@dataclass(frozen=True)
class Price:
    resource_type: int
    model: str
    included_quantity_micros: int
    overage_unit_price_micros: int
    price_unit_quantity: int


@dataclass(frozen=True)
class UsageTotal:
    resource_type: int
    model: str
    quantity_micros: int


@dataclass(frozen=True)
class Line:
    kind: int
    description: str
    resource_type: int
    model: str
    quantity_micros: int
    included_quantity_micros: int
    billable_quantity_micros: int
    unit_price_micros: int
    price_unit_quantity: int
    amount_micros: int


@dataclass(frozen=True)
class Totals:
    lines: list[Line]
    subtotal_micros: int
    tax_rate_micros: int
    tax_micros: int
    total_micros: int


def round_half_up(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))


def line_amount(billable_micros: int, unit_price_micros: int, unit_quantity: int) -> int:
    return round_half_up(
        Decimal(billable_micros) * Decimal(unit_price_micros) / (Decimal(unit_quantity) * MICROS)
    )


def effective_tax_rate(plan_rate_micros: int, platform_rate_micros: int) -> int:
    return plan_rate_micros if plan_rate_micros > 0 else platform_rate_micros


def compute(
    fee_micros: int,
    prices: Sequence[Price],
    usage: Iterable[UsageTotal],
    tax_rate_micros: int,
    plan_name: str,
) -> Totals:
    by_key = {(p.resource_type, p.model): p for p in prices}
    allowance = {(p.resource_type, p.model): p.included_quantity_micros for p in prices}
    lines = [Line(KIND_SUBSCRIPTION_FEE, f"{plan_name} plan, monthly fee", 0, "", 0, 0, 0, 0, 1,
                  fee_micros)]
    merged: dict[tuple[int, str], int] = {}
    for u in usage:
        merged[(u.resource_type, u.model)] = (
            merged.get((u.resource_type, u.model), 0) + u.quantity_micros
        )
    for (rtype, model), quantity in sorted(merged.items()):
        label = RESOURCE_LABELS.get(rtype, f"Resource {rtype}")
        description = f"{label}, {model}" if model else label
        key = (rtype, model) if (rtype, model) in by_key else (rtype, "")
        price = by_key.get(key)
        if price is None:
            lines.append(
                Line(KIND_USAGE, description, rtype, model, quantity, 0, quantity, 0, 1, 0)
            )
            continue
        included = min(quantity, allowance[key])
        allowance[key] -= included
        billable = quantity - included
        lines.append(
            Line(
                KIND_USAGE,
                description,
                rtype,
                model,
                quantity,
                included,
                billable,
                price.overage_unit_price_micros,
                price.price_unit_quantity,
                line_amount(billable, price.overage_unit_price_micros, price.price_unit_quantity),
            )
        )
    subtotal = sum(line.amount_micros for line in lines)
    tax = round_half_up(Decimal(subtotal) * Decimal(tax_rate_micros) / MICROS)
    return Totals(lines, subtotal, tax_rate_micros, tax, subtotal + tax)


def format_money(micros: int, currency: str) -> str:
    """12345678 USD -> "USD 12.35" for display (half-up to cents; amounts stay exact)."""
    cents = (Decimal(micros) / MICROS).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"{currency} {cents:,}"


def format_quantity(micros: int) -> str:
    value = Decimal(micros) / MICROS
    text = f"{value:,f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
