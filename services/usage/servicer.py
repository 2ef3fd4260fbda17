"""Usage's gRPC surface: thin — decode, authorize, call the domain logic, encode.

Serves two gRPC services from one process:
- aimesh.usage.v1.UsageService (ledger, summaries, export, budgets, rate-limit policy);
- envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit for the gateway's ratelimit
  filter. Descriptor entries understood: `org_id` (from x-aimesh-org) and `key_id` (from
  x-aimesh-key-id); see services/usage/ratelimit.py for how they map to per-minute windows.

Who may call what is enforced by the mesh policy (services/common/mesh_policy.py): ledger and
budget writes only from Orchestrator/Speech/Knowledge, SetRateLimitPolicy only from Billing.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from redis.exceptions import RedisError

from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from envoy_api.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from services.common.errors import FieldViolations, unavailable
from services.common.identity import identity_from_metadata
from services.common.server import Binding, Runtime, ServiceSpec, spec_for
from services.usage import names
from services.usage.ratelimit import Policy, RateLimiter
from services.usage.store import UsageStore

_MAX_RPM = 10_000_000


def _limiter(runtime: Runtime) -> RateLimiter:
    """One RateLimiter per process, shared by both servicers (same policy cache)."""
    existing = getattr(runtime, "_usage_rate_limiter", None)
    if existing is None:
        assert runtime.db is not None and runtime.cache is not None
        existing = RateLimiter(runtime.settings, UsageStore(runtime.db), runtime.cache)
        setattr(runtime, "_usage_rate_limiter", existing)
    return existing


def _policy_message(org: str, policy: Policy, update_time: object = None) -> usage_pb2.RateLimitPolicy:
    message = usage_pb2.RateLimitPolicy(
        name=f"{names.org_name(org)}/rateLimitPolicy",
        organization_requests_per_minute=policy.org_rpm,
        api_key_requests_per_minute=policy.key_rpm,
        plan=policy.plan,
    )
    if update_time is not None:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(update_time)  # type: ignore[arg-type]
        message.update_time.CopyFrom(stamp)
    return message


def _parse_policy_name(name: str, field: str, v: FieldViolations) -> str:
    suffix = "/rateLimitPolicy"
    if not name.endswith(suffix):
        v.add(field, 'must be "organizations/{organization}/rateLimitPolicy"')
        return ""
    return names.parse_org(name[: -len(suffix)], field, v)


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    """Envoy's rate-limit service (see services/usage/ratelimit.py for descriptor semantics)."""

    def __init__(self, runtime: Runtime) -> None:
        self.limiter = _limiter(runtime)

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        descriptors = [[(e.key, e.value) for e in d.entries] for d in request.descriptors]
        hits = request.hits_addend or 1
        try:
            decision = await self.limiter.check(descriptors, hits)
        except RedisError as exc:
            raise unavailable(f"rate-limit counters unavailable: {exc}") from None
        Code = rls_pb2.RateLimitResponse.Code
        reset = duration_pb2.Duration()
        reset.FromMilliseconds(max(int(decision.seconds_until_reset * 1000), 0))
        response = rls_pb2.RateLimitResponse(
            overall_code=Code.OVER_LIMIT if decision.over else Code.OK
        )
        for status in decision.statuses:
            item = response.statuses.add(code=Code.OVER_LIMIT if status.over else Code.OK)
            if status.limit:
                item.current_limit.CopyFrom(
                    rls_pb2.RateLimitResponse.RateLimit(
                        name=status.kind,
                        requests_per_unit=status.limit,
                        unit=rls_pb2.RateLimitResponse.RateLimit.Unit.MINUTE,
                    )
                )
                item.limit_remaining = status.remaining
                item.duration_until_reset.CopyFrom(reset)
        return response


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        assert runtime.db is not None
        self.store = UsageStore(runtime.db)
        self.limiter = _limiter(runtime)

    # --- rate-limit policy ---------------------------------------------------------------

    async def GetRateLimitPolicy(
        self, request: usage_pb2.GetRateLimitPolicyRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.RateLimitPolicy:
        v = FieldViolations()
        org = _parse_policy_name(request.name, "name", v)
        v.raise_if_any()
        names.resolve_org(identity_from_metadata(context.invocation_metadata() or ()),
                          names.org_name(org), "name", v)
        row = await self.store.get_rate_limit_policy(org)
        if row is None:
            return _policy_message(org, self.limiter.default_policy())
        return _policy_message(
            org, Policy(row["org_rpm"], row["key_rpm"], row["plan"]), row["update_time"]
        )

    async def SetRateLimitPolicy(
        self, request: usage_pb2.SetRateLimitPolicyRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.RateLimitPolicy:
        v = FieldViolations()
        p = request.policy
        org = _parse_policy_name(p.name, "policy.name", v)
        v.check(0 < p.organization_requests_per_minute <= _MAX_RPM,
                "policy.organization_requests_per_minute", f"must be 1..{_MAX_RPM}")
        v.check(0 < p.api_key_requests_per_minute <= _MAX_RPM,
                "policy.api_key_requests_per_minute", f"must be 1..{_MAX_RPM}")
        v.check(len(p.plan) <= 200, "policy.plan", "at most 200 characters")
        v.raise_if_any()
        row = await self.store.set_rate_limit_policy(
            org, p.organization_requests_per_minute, p.api_key_requests_per_minute, p.plan
        )
        policy = Policy(row["org_rpm"], row["key_rpm"], row["plan"])
        await self.limiter.policy_changed(org, policy)
        return _policy_message(org, policy, row["update_time"])


def build_spec() -> ServiceSpec:
    return spec_for(
        "usage",
        Path(__file__).parent,
        [
            Binding(
                usage_pb2_grpc.add_UsageServiceServicer_to_server,
                UsageServicer,
                usage_pb2.DESCRIPTOR.services_by_name["UsageService"],
            ),
            Binding(
                rls_pb2_grpc.add_RateLimitServiceServicer_to_server,
                RateLimitServicer,
                rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"],
            ),
        ],
    )
