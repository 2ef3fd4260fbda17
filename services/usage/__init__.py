"""The Usage service: the usage ledger, daily rollups, quotas and budgets, rate-limit counters;
Envoy's rate-limit service."""
