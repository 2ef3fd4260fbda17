"""Invoice arithmetic (services/billing/pricing.py) without services: half-up rounding once per
line, shared allowances consumed in model order, exact per-model prices, tax on the subtotal."""

from __future__ import annotations

from services.billing.pricing import (
    Price,
    UsageTotal,
    compute,
    effective_tax_rate,
    format_money,
    line_amount,
)


def test_rounding_is_half_up_once_per_line() -> None:
    # 1.5 micros -> 2; 2.5 -> 3 (banker's rounding would give 2); 0.4999 -> 0.
    assert line_amount(3, 500_000, 1) == 2
    assert line_amount(5, 500_000, 1) == 3
    assert line_amount(4_999, 100, 1) == 0
    # $0.50 per 1M tokens, 1 token (1e6 micro-units) -> 0.5 micros -> 1.
    assert line_amount(1_000_000, 500_000, 1_000_000) == 1


def test_allowance_shared_in_model_order_and_specific_prices_win() -> None:
    prices = [
        Price(1, "", included_quantity_micros=10_000_000, overage_unit_price_micros=2_000_000, price_unit_quantity=1),
        Price(1, "models/big", 0, 7_000_000, 1),
    ]
    usage = [UsageTotal(1, "models/b", 6_000_000), UsageTotal(1, "models/a", 6_000_000),
             UsageTotal(1, "models/big", 1_000_000), UsageTotal(6, "", 5_000_000)]
    totals = compute(1_000_000, prices, usage, 190_000, "Test")
    lines = [(ln.model, ln.included_quantity_micros, ln.billable_quantity_micros, ln.amount_micros)
             for ln in totals.lines]
    assert lines == [
        ("", 0, 0, 1_000_000),                   # the fee
        ("models/a", 6_000_000, 0, 0),           # allowance first to models/a ...
        ("models/b", 4_000_000, 2_000_000, 4_000_000),  # ... the rest to models/b, 2 units billed
        ("models/big", 0, 1_000_000, 7_000_000),  # its own price, no allowance
        ("", 0, 5_000_000, 0),                   # searches: no price, free
    ]
    assert totals.subtotal_micros == 12_000_000
    assert totals.tax_micros == 2_280_000 and totals.total_micros == 14_280_000


def test_tax_rounds_half_up_and_platform_rate_applies_when_plan_has_none() -> None:
    totals = compute(5, [], [], 100_000, "T")  # 10 % of 5 micros = 0.5 -> 1
    assert (totals.tax_micros, totals.total_micros) == (1, 6)
    assert effective_tax_rate(0, 190_000) == 190_000
    assert effective_tax_rate(70_000, 190_000) == 70_000
    assert format_money(12_345_000, "USD") == "USD 12.35"
    assert format_money(1_234_567_890_000, "EUR") == "EUR 1,234,567.89"
