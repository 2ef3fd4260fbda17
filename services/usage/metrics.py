"""Usage's metrics: the gateway's rate-limit decisions and how much of each budget is used."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from services.common import metrics

RATELIMIT_DECISIONS = Counter(
    "aimesh_ratelimit_decisions_total",
    "Rate-limit checks answered for the gateway, by decision (allow/deny).",
    ("decision",),
)
RATELIMIT_LEASES = Counter(
    "aimesh_ratelimit_leases_total",
    "Redis round trips taking blocks of rate-limit windows for the gateway's callers "
    "(GatewayLimiter's leases; each admits up to a block of requests).",
)
_ALLOWED = RATELIMIT_DECISIONS.labels("allow")
_DENIED = RATELIMIT_DECISIONS.labels("deny")
BUDGET_UTILIZATION = Gauge(
    "aimesh_budget_utilization_ratio",
    "Share of a budget's monthly cap spent or held (the larger of money and tokens), as last seen.",
    ("org", "budget"),
)
BUDGET_REJECTIONS = Counter(
    "aimesh_budget_rejections_total",
    "Reservations refused because a budget would be exceeded, by organization.",
    ("org",),
)


def record_ratelimit(denied: bool) -> None:
    if metrics.enabled():
        (_DENIED if denied else _ALLOWED).inc()


def record_lease() -> None:
    if metrics.enabled():
        RATELIMIT_LEASES.inc()


def record_budget(org: str, budget: str, limit_micros: int, used_micros: int,
                  token_limit: int, used_tokens: int) -> None:
    if not metrics.enabled():
        return
    shares = [used_micros / limit_micros if limit_micros > 0 else 0.0,
              used_tokens / token_limit if token_limit > 0 else 0.0]
    BUDGET_UTILIZATION.labels(org, budget).set(max(shares))


def record_budget_rejection(org: str) -> None:
    if metrics.enabled():
        BUDGET_REJECTIONS.labels(org).inc()
