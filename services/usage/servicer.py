"""Usage's gRPC surface: thin — decode, authorize, call the domain logic, encode.

Serves two gRPC services from one process:
- aimesh.usage.v1.UsageService (ledger, summaries, export, budgets, rate-limit policy);
- envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit, for an Envoy ratelimit filter.
  Descriptor entries understood: `org_id` (from x-aimesh-org) and `key_id` (from
  x-aimesh-key-id); see services/usage/ratelimit.py for how they map to per-minute windows.
  Our gateway counts the same windows with the same limiter inside Auth's ext_authz Check (one
  hop per request), so this RPC is off its request path.

Who may call what is enforced by the mesh policy (services/common/mesh_policy.py): ledger and
budget writes only from Orchestrator/Speech/Knowledge, SetRateLimitPolicy only from Billing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import grpc
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from envoy_api.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.api import httpbody_pb2
from google.protobuf import duration_pb2, empty_pb2, timestamp_pb2
from google.type import date_pb2
from redis.exceptions import RedisError

from services.common import mesh_policy, tls
from services.common.errors import (
    invalid_argument,
    permission_denied,
    unauthenticated,
    unavailable,
)
from services.common.identity import Identity, identity_from_metadata, require_identity
from services.common.pagination import Paginator
from services.common.server import Binding, Runtime, ServiceSpec, spec_for
from services.common.timestamps import to_timestamp
from services.usage import ledger
from services.usage.budgets import BUDGET, Budgets
from services.usage.ledger import ORGANIZATION
from services.usage.ratelimit import (
    DEFAULT_POLICY_NAME,
    DEFAULT_POLICY_ORG,
    RATE_LIMIT_POLICY,
    Policies,
    Policy,
    RateLimiter,
)
from services.usage.reservations import RESERVATION, Reservation, Reservations
from services.usage.store import RecordFilter, Row, Store

log = logging.getLogger("aimesh.usage")

_EXPIRY_SWEEP_SECONDS = 30




def _identity(context: grpc.aio.ServicerContext) -> Identity | None:
    """The end user the call acts for, or None for a service acting on its own account (which
    then names the organization in the request). The gateway always acts for an end user:
    an identity-less call from it would let the request pick any organization."""
    identity = identity_from_metadata(context.invocation_metadata() or ())
    if identity is None and tls.current_peer.get() == mesh_policy.GATEWAY:
        raise unauthenticated(
            "calls through the gateway must carry the caller's identity", reason="IDENTITY_MISSING"
        )
    return identity


def _limiter(runtime: Runtime) -> RateLimiter:
    """One RateLimiter per process, shared by both servicers (same policy cache)."""
    existing = runtime.shared.get("usage.rate_limiter")
    if existing is None:
        assert runtime.db is not None and runtime.cache is not None
        limiter = RateLimiter(runtime.settings, Store(runtime.db), runtime.cache)
        runtime.spawn(limiter.keep_published(), "ratelimit-policy-publish")
        runtime.shared["usage.rate_limiter"] = existing = limiter
    return cast(RateLimiter, existing)


def _policy_message(
    org: str, policy: Policy, update_time: object = None
) -> usage_pb2.RateLimitPolicy:
    message = usage_pb2.RateLimitPolicy(
        name=RATE_LIMIT_POLICY.format(org),
        organization_requests_per_minute=policy.org_rpm,
        api_key_requests_per_minute=policy.key_rpm,
        plan=policy.plan,
    )
    if update_time is not None:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(update_time)
        message.update_time.CopyFrom(stamp)
    return message


def _resolve_org(identity: Identity | None, requested: str, field: str) -> str:
    """The organization an RPC acts on: the requested one (must be the caller's unless the
    caller is a platform admin or an internal service call without user identity), else the
    caller's. The mesh policy restricts which peers may call without identity."""
    if requested:
        org = ORGANIZATION.id(requested, field)
        if identity is not None and identity.org != org and not identity.is_platform_admin:
            raise permission_denied(
                f"{requested} is not the caller's organization", reason="ORGANIZATION_MISMATCH"
            )
        return org
    if identity is None:
        raise invalid_argument(
            f"{field} is required for calls without a caller identity",
            [(field, "required for calls without a caller identity")],
        )
    return identity.org


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
        assert runtime.db is not None and runtime.cache is not None
        self.store = Store(runtime.db)
        self.limiter = _limiter(runtime)
        self.budgets = Budgets(self.store)
        self.reservations = Reservations(self.store, runtime.cache)
        self.policies = Policies(self.store, self.limiter)
        self.pages = Paginator(runtime.settings)
        runtime.spawn(self._sweep_expired(), "usage-reservation-expiry")

    async def _sweep_expired(self) -> None:
        """Keeps PostgreSQL's reservation states in step with lapsed holds."""
        while True:
            await asyncio.sleep(_EXPIRY_SWEEP_SECONDS)
            try:
                await self.reservations.expire_stale()
            except Exception:  # keep sweeping after a database hiccup
                log.warning("reservation expiry sweep failed", exc_info=True)

    # --- ledger --------------------------------------------------------------------------

    async def RecordUsage(
        self, request: usage_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.RecordUsageResponse:
        records = ledger.validate_records(request.records, dt.datetime.now(dt.UTC))
        repeated = ledger.duplicates(records, await self.store.record(records))
        return usage_pb2.RecordUsageResponse(
            accepted_count=len(records) - len(repeated),
            duplicate_count=len(repeated),
            duplicate_request_ids=repeated,
        )

    async def GetUsageSummary(
        self, request: usage_pb2.GetUsageSummaryRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.UsageSummary:
        org = _resolve_org(_identity(context), request.organization, "organization")
        start, end, groups = ledger.summary_query(org, request)
        rows = await self.store.summarize(
            org, start, end, groups, request.api_key, list(request.resource_types)
        )
        summary = usage_pb2.UsageSummary(
            organization=ORGANIZATION.format(org),
            start_time=to_timestamp(start),
            end_time=to_timestamp(end),
        )
        for row in rows:
            item = summary.rows.add(
                resource_type=row["resource_type"],
                quantity_micros=row["quantity_micros"],
                record_count=row["record_count"],
                model=row.get("model", "") or "",
                api_key=row.get("api_key", "") or "",
            )
            if row.get("day") is not None:
                day = row["day"]
                item.day.CopyFrom(date_pb2.Date(year=day.year, month=day.month, day=day.day))
        return summary

    def _record_filter(
        self,
        request: usage_pb2.ListUsageRecordsRequest | usage_pb2.ExportUsageRecordsRequest,
        context: grpc.aio.ServicerContext,
        required: bool,
    ) -> RecordFilter:
        org = _resolve_org(_identity(context), request.organization, "organization")
        return ledger.record_filter(org, request, required)

    async def ListUsageRecords(
        self, request: usage_pb2.ListUsageRecordsRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.ListUsageRecordsResponse:
        f = self._record_filter(request, context, required=False)
        page = self.pages.start(request, f.org)
        rows = await self.store.list_records(f, page.size + 1, page.cursor)
        rows, token = page.split(rows, lambda r: (r["occur_time"], r["id"]))
        return usage_pb2.ListUsageRecordsResponse(
            usage_records=[_record_message(r) for r in rows], next_page_token=token
        )

    async def ExportUsageRecords(
        self, request: usage_pb2.ExportUsageRecordsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        f = self._record_filter(request, context, required=True)
        chunks = ledger.CsvChunks()
        async for rows in self.store.stream_records(f):
            for chunk in chunks.feed(rows):
                yield httpbody_pb2.HttpBody(content_type="text/csv", data=chunk)
        yield httpbody_pb2.HttpBody(content_type="text/csv", data=chunks.finish())

    # --- budgets -------------------------------------------------------------------------

    async def _budget_message(self, row: Row) -> usage_pb2.Budget:
        live = await self.reservations.current(row)
        return usage_pb2.Budget(
            name=BUDGET.format(row["id"]),
            display_name=row["display_name"],
            scope=row["scope"],
            api_key=row["api_key"],
            monthly_limit_micros=row["monthly_limit_micros"],
            currency_code=row["currency_code"],
            monthly_token_limit=row["monthly_token_limit"],
            period_start_time=to_timestamp(live["period_start"]),
            period_end_time=to_timestamp(live["period_end"]),
            spent_micros=live["spent_micros"],
            reserved_micros=live["reserved_micros"],
            used_tokens=live["spent_tokens"] + live["reserved_tokens"],
            create_time=to_timestamp(row["create_time"]),
            update_time=to_timestamp(row["update_time"]),
            etag=str(row["version"]),
        )

    async def CreateBudget(
        self, request: usage_pb2.CreateBudgetRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.Budget:
        identity = require_identity(context.invocation_metadata() or ())
        row = await self.budgets.create_budget(identity.org, request.budget, request.request_id)
        return await self._budget_message(row)

    async def GetBudget(
        self, request: usage_pb2.GetBudgetRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.Budget:
        identity = require_identity(context.invocation_metadata() or ())
        return await self._budget_message(
            await self.budgets.get_budget(identity.org, request.name)
        )

    async def ListBudgets(
        self, request: usage_pb2.ListBudgetsRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.ListBudgetsResponse:
        identity = require_identity(context.invocation_metadata() or ())
        page = self.pages.start(request, identity.org)
        rows = await self.store.list_budgets(identity.org, page.size + 1, page.cursor)
        rows, token = page.split(rows, lambda r: (r["create_time"], r["id"]))
        return usage_pb2.ListBudgetsResponse(
            budgets=[await self._budget_message(r) for r in rows], next_page_token=token
        )

    async def UpdateBudget(
        self, request: usage_pb2.UpdateBudgetRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.Budget:
        identity = require_identity(context.invocation_metadata() or ())
        updated = await self.budgets.update_budget(
            identity.org, request.budget, list(request.update_mask.paths)
        )
        return await self._budget_message(updated)

    async def DeleteBudget(
        self, request: usage_pb2.DeleteBudgetRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        identity = require_identity(context.invocation_metadata() or ())
        await self.budgets.delete_budget(identity.org, request.name, request.allow_missing)
        return empty_pb2.Empty()

    # --- reservations --------------------------------------------------------------------

    async def ReserveBudget(
        self, request: usage_pb2.ReserveBudgetRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.Reservation:
        org = _resolve_org(_identity(context), request.organization, "organization")
        reservation = await self.reservations.reserve(
            org,
            request.api_key,
            request.estimated_amount_micros,
            request.currency_code,
            request.estimated_tokens,
            request.ttl.ToMilliseconds() if request.HasField("ttl") else None,
            request.request_id,
        )
        return _reservation_message(reservation)

    def _reservation_target(
        self, name: str, context: grpc.aio.ServicerContext
    ) -> tuple[str | None, uuid.UUID]:
        reservation_id = RESERVATION.uuid(name, "name")
        assert reservation_id is not None
        identity = _identity(context)
        return (identity.org if identity else None), reservation_id

    async def SettleReservation(
        self, request: usage_pb2.SettleReservationRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.Reservation:
        org, reservation_id = self._reservation_target(request.name, context)
        r = await self.reservations.settle(
            org, reservation_id, request.actual_amount_micros, request.actual_tokens
        )
        return _reservation_message(r)

    async def ReleaseReservation(
        self, request: usage_pb2.ReleaseReservationRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.Reservation:
        org, reservation_id = self._reservation_target(request.name, context)
        return _reservation_message(await self.reservations.release(org, reservation_id))

    # --- rate-limit policy ---------------------------------------------------------------

    async def GetRateLimitPolicy(
        self, request: usage_pb2.GetRateLimitPolicyRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.RateLimitPolicy:
        org = (
            DEFAULT_POLICY_ORG
            if request.name == DEFAULT_POLICY_NAME
            else RATE_LIMIT_POLICY.id(request.name, "name")
        )
        if org != DEFAULT_POLICY_ORG:
            _resolve_org(_identity(context), ORGANIZATION.format(org), "name")
        policy, update_time = await self.policies.get(org)
        return _policy_message(org, policy, update_time)

    async def SetRateLimitPolicy(
        self, request: usage_pb2.SetRateLimitPolicyRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.RateLimitPolicy:
        org, policy, update_time = await self.policies.set(request.policy)
        return _policy_message(org, policy, update_time)


def _record_message(row: Row) -> usage_pb2.UsageRecord:
    return usage_pb2.UsageRecord(
        name=ledger.record_name(row),
        organization=ORGANIZATION.format(row["org"]),
        api_key=row["api_key"],
        user=row["user_name"],
        resource_type=row["resource_type"],
        model=row["model"],
        quantity_micros=row["quantity_micros"],
        occur_time=to_timestamp(row["occur_time"]),
        request_id=row["request_id"],
        source=row["source"],
        create_time=to_timestamp(row["create_time"]),
    )


def _reservation_message(r: Reservation) -> usage_pb2.Reservation:
    return usage_pb2.Reservation(
        name=RESERVATION.format(r.id),
        organization=ORGANIZATION.format(r.org),
        api_key=r.api_key,
        amount_micros=r.amount_micros,
        currency_code=r.currency_code,
        tokens=r.tokens,
        state=cast(usage_pb2.Reservation.State, r.state),
        budgets=[BUDGET.format(b) for b in r.budgets],
        expire_time=to_timestamp(r.expire_time),
        settled_amount_micros=r.settled_amount_micros,
        settled_tokens=r.settled_tokens,
        create_time=to_timestamp(r.create_time),
        close_time=to_timestamp(r.close_time),
    )


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
