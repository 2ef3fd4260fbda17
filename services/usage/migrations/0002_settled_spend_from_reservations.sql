-- depends: 0001_usage
-- Settled spend per budget and month is summed from settled reservations instead of a
-- per-budget counter row: a hot row serialized every concurrent settle of one budget.
CREATE INDEX reservations_settled_budgets ON reservations USING gin (budgets) WHERE state = 2;
DROP TABLE budget_spend;
