"""Reservations: holds against the monthly money and token caps of budgets (budgets.py).

Where the numbers live:
- PostgreSQL holds the budgets and every reservation (its state and amounts); a budget's
  settled spend in a month is the sum of its settled reservations. That is the durable truth
  the live counters are seeded from.
- Redis holds the live counters used to decide reservations atomically: per budget and month a
  hash {spent, reserved, tokens_spent, tokens_reserved} plus a sorted set of open holds
  ("<reservation>:<amount>:<tokens>" scored by expiry in ms). A counter hash missing from
  Redis (first use in a month, or Redis lost its data) is seeded from PostgreSQL's settled
  spend by the reserve script itself (only if still absent, so concurrent seeds agree).

All decisions are single Lua scripts: reserve checks every applicable budget and holds the
amount in all of them or none; settle/release move a hold to spend exactly once; a hold past
its expiry is purged (and subtracted) by the next script that touches the budget. Hence spend
+ holds never exceeds a cap at reservation time, and actual spend can exceed a cap by at most
what in-flight reservations settle above their estimates.

Redis time (TIME) decides expiry, so several Usage instances agree on it. Amounts travel as
decimal strings (HINCRBY); comparisons use Lua doubles, exact because amounts and tokens are
capped at MAX_AMOUNT (10^15 micros = 10^9 currency units) by validation.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from google.rpc import error_details_pb2, status_pb2

from services.common.cache import ServiceCache
from services.common.errors import (
    FieldViolations,
    ServiceError,
    failed_precondition,
    not_found,
)
from services.common.names import resource
from services.common.timestamps import month_start, next_month
from services.usage import metrics as usage_metrics
from services.usage.budgets import BUDGET, MAX_AMOUNT, MAX_REQUEST_ID, valid_currency
from services.usage.ledger import check_api_key
from services.usage.store import Row, Store

STATE_OPEN, STATE_SETTLED, STATE_RELEASED, STATE_EXPIRED = 1, 2, 3, 4
_STATE_NAMES = {"open": STATE_OPEN, "settled": STATE_SETTLED, "released": STATE_RELEASED,
                "expired": STATE_EXPIRED}
RESERVATION = resource("usage.aimesh.dev/Reservation")
RESERVATION_NAMESPACE = uuid.UUID("6f1d7c52-3a8e-4f0a-9a44-1b2c3d4e5f60")
# Counters outlive their month by this much (late settles of reservations made in it).
COUNTER_GRACE_MS = 2 * 24 * 3600 * 1000
RESERVATION_KEEP_MS = 24 * 3600 * 1000
DEFAULT_TTL_MS, MIN_TTL_MS, MAX_TTL_MS = 300_000, 1000, 3_600_000

# Shared by every script: subtract and drop holds whose expiry passed. h = counter hash,
# z = holds set, now = Redis time in ms.
_PURGE = """
local function neg(s)
  if s == '0' then return '0' end
  return '-' .. s
end
local function purge(h, z, now)
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. now)
  for _, member in ipairs(gone) do
    local _, _, amount, tokens = string.find(member, '^[^:]+:(%d+):(%d+)$')
    redis.call('HINCRBY', h, 'reserved', neg(amount))
    redis.call('HINCRBY', h, 'tokens_reserved', neg(tokens))
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. now) end
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: reservation, then (counter hash, holds set) per budget.
# ARGV: ttl_ms, amount, tokens, counter_ttl_ms, reservation fields (k1, v1, ...) count,
#       the fields..., then per budget: money_limit (-1: unchecked), token_limit (-1: unchecked),
#       seed_spent (-1: not read from PostgreSQL), seed_tokens.
# Returns {'dup'} | {'seed'} (a counter is missing and no seed was given) |
#         {'over', budget index (1-based), spent, reserved, tokens_used} |
#         {'ok', create_ms, expire_ms}.
_RESERVE = (
    _PURGE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'dup'} end
local now = now_ms()
local ttl, amount, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local counter_ttl = ARGV[4]
local nfields = tonumber(ARGV[5])
local base = 6 + nfields
local nb = (#KEYS - 1) / 2
for i = 1, nb do
  if tonumber(ARGV[base + (i - 1) * 4 + 2]) < 0 and redis.call('EXISTS', KEYS[2 * i]) == 0 then
    return {'seed'}
  end
end
for i = 1, nb do
  local h, z = KEYS[2 * i], KEYS[2 * i + 1]
  local a = base + (i - 1) * 4
  if redis.call('EXISTS', h) == 0 then
    redis.call('HSET', h, 'spent', ARGV[a + 2], 'tokens_spent', ARGV[a + 3], 'reserved', 0,
               'tokens_reserved', 0)
    redis.call('PEXPIRE', h, counter_ttl)
  end
  purge(h, z, now)
end
for i = 1, nb do
  local h = KEYS[2 * i]
  local a = base + (i - 1) * 4
  local money_limit, token_limit = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local v = redis.call('HMGET', h, 'spent', 'reserved', 'tokens_spent', 'tokens_reserved')
  local spent, reserved = tonumber(v[1]), tonumber(v[2])
  local used_tokens = tonumber(v[3]) + tonumber(v[4])
  if (money_limit >= 0 and spent + reserved + amount > money_limit) or
     (token_limit >= 0 and used_tokens + tokens > token_limit) then
    return {'over', i, spent, reserved, used_tokens}
  end
end
local expire = now + ttl
local member = ARGV[7] .. ':' .. ARGV[2] .. ':' .. ARGV[3]
for i = 1, nb do
  local h, z = KEYS[2 * i], KEYS[2 * i + 1]
  redis.call('HINCRBY', h, 'reserved', ARGV[2])
  redis.call('HINCRBY', h, 'tokens_reserved', ARGV[3])
  redis.call('ZADD', z, expire, member)
  redis.call('PEXPIRE', z, counter_ttl)
end
local fields = {}
for i = 6, 5 + nfields do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'state', 'open', 'create_ms', now, 'expire_ms', expire,
           'member', member, unpack(fields))
redis.call('PEXPIRE', KEYS[1], ttl + tonumber(ARGV[#ARGV]))
return {'ok', now, expire}
"""
)

# KEYS: reservation, then (counter hash, holds set) per budget. ARGV: mode ('settle' or
# 'release'), actual amount, actual tokens.
# Returns {'missing'} | {'closed', state} (not open; nothing changed) | {'ok', close_ms}.
_CLOSE = (
    _PURGE
    + """
local r = redis.call('HMGET', KEYS[1], 'state', 'expire_ms', 'member', 'amount', 'tokens')
if not r[1] then return {'missing'} end
local now = now_ms()
if r[1] == 'open' and now > tonumber(r[2]) then
  redis.call('HSET', KEYS[1], 'state', 'expired', 'close_ms', r[2])
  return {'closed', 'expired'}
end
if r[1] ~= 'open' then return {'closed', r[1]} end
for i = 1, (#KEYS - 1) / 2 do
  local h, z = KEYS[2 * i], KEYS[2 * i + 1]
  if redis.call('ZREM', z, r[3]) == 1 then
    redis.call('HINCRBY', h, 'reserved', neg(r[4]))
    redis.call('HINCRBY', h, 'tokens_reserved', neg(r[5]))
  end
  if ARGV[1] == 'settle' and redis.call('EXISTS', h) == 1 then
    redis.call('HINCRBY', h, 'spent', ARGV[2])
    redis.call('HINCRBY', h, 'tokens_spent', ARGV[3])
  end
  purge(h, z, now)
end
local state = ARGV[1] == 'settle' and 'settled' or 'released'
redis.call('HSET', KEYS[1], 'state', state, 'close_ms', now, 'settled_amount', ARGV[2],
           'settled_tokens', ARGV[3])
return {'ok', now}
"""
)

# KEYS: counter hash, holds set. Returns {} when the counters are absent, else
# {spent, tokens_spent, reserved, tokens_reserved} after purging lapsed holds.
_READ = (
    _PURGE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
purge(KEYS[1], KEYS[2], now_ms())
return redis.call('HMGET', KEYS[1], 'spent', 'tokens_spent', 'reserved', 'tokens_reserved')
"""
)


class BudgetExceeded(ServiceError):
    """RESOURCE_EXHAUSTED with ErrorInfo (budget, period, amounts) and QuotaFailure."""

    def __init__(
        self, budget: str, description: str, reason: str, metadata: dict[str, str]
    ) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, description, reason, metadata=metadata)
        self.budget = budget

    def to_status(self) -> status_pb2.Status:
        status = super().to_status()
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=self.budget, description=self.message
                )
            ]
        )
        status.details.add().Pack(quota)
        return status


@dataclass
class Reservation:
    id: uuid.UUID
    org: str
    api_key: str
    amount_micros: int
    currency_code: str
    tokens: int
    state: int
    budgets: list[uuid.UUID]
    expire_time: dt.datetime
    create_time: dt.datetime
    settled_amount_micros: int = 0
    settled_tokens: int = 0
    close_time: dt.datetime | None = None
    period_start: dt.datetime = field(default_factory=lambda: month_start(dt.datetime.now(dt.UTC)))


def _word(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _from_ms(ms: int | bytes | str) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(ms) / 1000, dt.UTC)


def _rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _reservation_id(org: str, request_id: str) -> uuid.UUID:
    """The same id for every retry of one request (AIP-155), a fresh one without request_id."""
    return uuid.uuid5(RESERVATION_NAMESPACE, f"{org}/{request_id}") if request_id else uuid.uuid4()


@dataclass(frozen=True)
class _Hold:
    """One ReserveBudget request, checked."""

    id: uuid.UUID
    org: str
    api_key: str
    amount: int
    currency: str
    tokens: int
    ttl_ms: int
    now: dt.datetime
    period: dt.datetime  # the month the hold counts in


@dataclass(frozen=True)
class _Cap:
    """A budget a reservation counts against, and which of its caps apply."""

    budget: Row
    money: bool
    tokens: bool

    def script_args(self, seeds: dict[uuid.UUID, Row] | None) -> list[int]:
        """The reserve script's per-budget ARGV: limits (-1: unchecked), then the settled
        spend to seed missing counters with (-1: not read from PostgreSQL)."""
        seed = seeds.get(self.budget["id"]) if seeds is not None else None
        return [
            self.budget["monthly_limit_micros"] if self.money else -1,
            self.budget["monthly_token_limit"] if self.tokens else -1,
            (seed["spent_micros"] if seed else 0) if seeds is not None else -1,
            (seed["spent_tokens"] if seed else 0) if seeds is not None else -1,
        ]


class Reservations:
    """Holds against the caps of budgets, their live counters, and closing them."""

    def __init__(self, store: Store, cache: ServiceCache) -> None:
        self.store = store
        self.cache = cache
        self._reserve = cache.redis.register_script(_RESERVE)
        self._close = cache.redis.register_script(_CLOSE)
        self._read = cache.redis.register_script(_READ)

    def _counter_keys(self, budget_id: uuid.UUID, period: dt.datetime) -> list[str]:
        stamp = period.strftime("%Y%m")
        return [
            self.cache.key("budget", str(budget_id), stamp),
            self.cache.key("budget", str(budget_id), stamp, "holds"),
        ]

    def _reservation_key(self, reservation_id: uuid.UUID) -> str:
        return self.cache.key("resv", str(reservation_id))

    async def current(self, budget: Row, now: dt.datetime | None = None) -> dict[str, Any]:
        """The budget's current period: live counters from Redis, else PostgreSQL's settled sum."""
        period = month_start(now or dt.datetime.now(dt.UTC))
        live = await self._read(keys=self._counter_keys(budget["id"], period))
        if live:
            spent, spent_tokens, reserved, tokens_reserved = (int(x) for x in live)
        else:
            row = (await self.store.spent([budget["id"]], period)).get(budget["id"])
            spent = row["spent_micros"] if row else 0
            spent_tokens = row["spent_tokens"] if row else 0
            reserved = tokens_reserved = 0
        usage_metrics.record_budget(
            str(budget["org"]),
            BUDGET.format(budget["id"]),
            budget["monthly_limit_micros"],
            spent + max(reserved, 0),
            budget["monthly_token_limit"],
            spent_tokens + max(tokens_reserved, 0),
        )
        return {
            "period_start": period,
            "period_end": next_month(period),
            "spent_micros": spent,
            "spent_tokens": spent_tokens,
            "reserved_micros": max(reserved, 0),
            "reserved_tokens": max(tokens_reserved, 0),
        }

    async def reserve(
        self,
        org: str,
        api_key: str,
        amount: int,
        currency: str,
        tokens: int,
        ttl_ms: int | None,
        request_id: str,
    ) -> Reservation:
        """Hold `amount` (in `currency`) and `tokens` against every budget that applies to the
        org and key for `ttl_ms` (None: the default), all or none; a repeat of `request_id`
        returns the first reservation."""
        ttl_ms = check_reservation(org, api_key, amount, currency, tokens, ttl_ms, request_id)
        now = dt.datetime.now(dt.UTC)
        hold = _Hold(_reservation_id(org, request_id), org, api_key, amount, currency, tokens,
                     ttl_ms, now, month_start(now))
        caps = await self._caps(hold)
        result = await self._hold(hold, caps, seeds=None)
        if _word(result[0]) == "seed":
            # Live counters normally exist: read PostgreSQL's settled spend only to seed them.
            seeds = await self.store.spent([c.budget["id"] for c in caps], hold.period)
            result = await self._hold(hold, caps, seeds)
        outcome = _word(result[0])
        if outcome == "dup":
            return await self._existing(org, hold.id)
        if outcome == "over":
            self._reject(hold, caps, result)
        return await self._record(hold, caps, create_ms=int(result[1]), expire_ms=int(result[2]))

    async def _caps(self, hold: _Hold) -> list[_Cap]:
        """The org's and key's budgets with a cap this reservation counts against: a money
        cap in its currency, or a token cap."""
        caps = []
        for b in await self.store.applicable_budgets(hold.org, hold.api_key):
            money = b["monthly_limit_micros"] > 0 and b["currency_code"] == hold.currency
            tokens = b["monthly_token_limit"] > 0
            if money or tokens:
                caps.append(_Cap(b, money, tokens))
        return caps

    async def _hold(
        self, hold: _Hold, caps: list[_Cap], seeds: dict[uuid.UUID, Row] | None
    ) -> Any:
        """One run of the reserve script: the reply it documents. `seeds`: PostgreSQL's settled
        spend per budget, for counters Redis does not have (None: not read yet)."""
        keys = [self._reservation_key(hold.id)]
        for cap in caps:
            keys.extend(self._counter_keys(cap.budget["id"], hold.period))
        # "id" must be the first field (its value is ARGV[7]): the hold member starts with it.
        fields: list[Any] = [
            "id", str(hold.id), "org", hold.org, "api_key", hold.api_key,
            "amount", hold.amount, "currency", hold.currency, "tokens", hold.tokens,
            "period", hold.period.strftime("%Y%m"),
            "budgets", ",".join(str(c.budget["id"]) for c in caps),
        ]
        per_budget: list[Any] = []
        for cap in caps:
            per_budget.extend(cap.script_args(seeds))
        counter_ttl = (
            int((next_month(hold.period) - hold.now).total_seconds() * 1000) + COUNTER_GRACE_MS
        )
        return await self._reserve(
            keys=keys,
            args=[hold.ttl_ms, hold.amount, hold.tokens, counter_ttl, len(fields), *fields,
                  *per_budget, RESERVATION_KEEP_MS],
        )

    async def _existing(self, org: str, reservation_id: uuid.UUID) -> Reservation:
        """The reservation a previous attempt of the same request made."""
        existing = await self.get(org, reservation_id)
        if existing is None:
            raise not_found(f"{RESERVATION.format(reservation_id)} not found")
        return existing

    def _reject(self, hold: _Hold, caps: list[_Cap], result: Any) -> None:
        """The script's 'over' reply as BudgetExceeded, naming the first budget it would pass."""
        index, spent, reserved, used_tokens = (int(x) for x in result[1:5])
        usage_metrics.record_budget_rejection(hold.org)
        self._raise_exceeded(caps[index - 1].budget, hold.period, hold.currency, spent,
                             reserved, used_tokens, hold.amount, hold.tokens)

    async def _record(
        self, hold: _Hold, caps: list[_Cap], create_ms: int, expire_ms: int
    ) -> Reservation:
        """Keep the reservation Redis holds in PostgreSQL too (the durable truth)."""
        reservation = Reservation(
            id=hold.id,
            org=hold.org,
            api_key=hold.api_key,
            amount_micros=hold.amount,
            currency_code=hold.currency,
            tokens=hold.tokens,
            state=STATE_OPEN,
            budgets=[c.budget["id"] for c in caps],
            expire_time=_from_ms(expire_ms),
            create_time=_from_ms(create_ms),
            period_start=hold.period,
        )
        await self.store.insert_reservation(
            {
                "id": reservation.id,
                "org": hold.org,
                "api_key": hold.api_key,
                "amount_micros": hold.amount,
                "currency_code": hold.currency,
                "tokens": hold.tokens,
                "budgets": reservation.budgets,
                "period_start": hold.period,
                "expire_time": reservation.expire_time,
            }
        )
        return reservation

    @staticmethod
    def _raise_exceeded(
        budget: Row,
        period: dt.datetime,
        currency: str,
        spent: int,
        reserved: int,
        used_tokens: int,
        amount: int,
        tokens: int,
    ) -> None:
        name = BUDGET.format(budget["id"])
        metadata = {
            "budget": name,
            "period_start": _rfc3339(period),
            "period_end": _rfc3339(next_month(period)),
        }
        money_over = (
            budget["monthly_limit_micros"] > 0
            and budget["currency_code"] == currency
            and spent + reserved + amount > budget["monthly_limit_micros"]
        )
        if money_over:
            metadata.update(
                limit_micros=str(budget["monthly_limit_micros"]),
                spent_micros=str(spent),
                reserved_micros=str(reserved),
                currency_code=currency,
            )
            raise BudgetExceeded(
                name,
                f"{name} would be exceeded: {spent + reserved} of {budget['monthly_limit_micros']} "
                f"{currency} micros used or held this month, {amount} requested",
                "BUDGET_EXCEEDED",
                metadata,
            )
        metadata.update(
            limit_tokens=str(budget["monthly_token_limit"]), used_tokens=str(used_tokens)
        )
        raise BudgetExceeded(
            name,
            f"{name} token cap would be exceeded: {used_tokens} of "
            f"{budget['monthly_token_limit']} tokens used or held this month, {tokens} requested",
            "TOKEN_BUDGET_EXCEEDED",
            metadata,
        )

    async def get(self, org: str | None, reservation_id: uuid.UUID) -> Reservation | None:
        """From Redis while it holds the reservation (authoritative for its state), else
        PostgreSQL."""
        # redis-py types its commands for both clients (value or awaitable); this one is async.
        reply = self.cache.redis.hgetall(self._reservation_key(reservation_id))
        raw = await cast(Awaitable[dict[bytes, bytes]], reply)
        if raw:
            h = {k.decode(): v.decode() for k, v in raw.items()}
            if org is not None and h["org"] != org:
                return None
            state = _STATE_NAMES[h["state"]]
            expire = _from_ms(h["expire_ms"])
            if state == STATE_OPEN and expire < dt.datetime.now(dt.UTC):
                state = STATE_EXPIRED
            return Reservation(
                id=reservation_id,
                org=h["org"],
                api_key=h["api_key"],
                amount_micros=int(h["amount"]),
                currency_code=h["currency"],
                tokens=int(h["tokens"]),
                state=state,
                budgets=[uuid.UUID(b) for b in h["budgets"].split(",") if b],
                expire_time=expire,
                create_time=_from_ms(h["create_ms"]),
                settled_amount_micros=int(h.get("settled_amount", 0)),
                settled_tokens=int(h.get("settled_tokens", 0)),
                close_time=_from_ms(h["close_ms"])
                if "close_ms" in h
                else (expire if state == STATE_EXPIRED else None),
                period_start=dt.datetime.strptime(h["period"], "%Y%m").replace(tzinfo=dt.UTC),
            )
        row = await self.store.get_reservation(org, reservation_id)
        return _from_row(row) if row else None

    async def close(
        self, org: str | None, reservation_id: uuid.UUID, settle: bool, amount: int, tokens: int
    ) -> Reservation:
        """Settle (amount, tokens) or release an open reservation, exactly once."""
        current = await self.get(org, reservation_id)
        if current is None:
            raise not_found(
                f"{RESERVATION.format(reservation_id)} not found", reason="RESERVATION_NOT_FOUND"
            )
        keys = [self._reservation_key(reservation_id)]
        for budget_id in current.budgets:
            keys.extend(self._counter_keys(budget_id, current.period_start))
        result = await self._close(
            keys=keys, args=["settle" if settle else "release", amount, tokens]
        )
        outcome = _word(result[0])
        if outcome == "missing" and current.state == STATE_OPEN:
            # Redis lost the reservation: PostgreSQL still closes it exactly once.
            outcome = "ok"
        if outcome == "ok":
            row = await self.store.close_reservation(
                reservation_id,
                STATE_SETTLED if settle else STATE_RELEASED,
                amount if settle else 0,
                tokens if settle else 0,
            )
            closed = await self.get(org, reservation_id)
            assert closed is not None or row is not None
            return closed if closed is not None else _from_row(row)  # type: ignore[arg-type]
        closed = await self.get(org, reservation_id)
        assert closed is not None
        if closed.state in (STATE_SETTLED, STATE_RELEASED):
            # A retry after Redis closed it but before PostgreSQL did: finish the durable part.
            await self.store.close_reservation(
                reservation_id, closed.state, closed.settled_amount_micros, closed.settled_tokens
            )
        return closed

    async def settle(
        self, org: str | None, reservation_id: uuid.UUID, amount: int, tokens: int
    ) -> Reservation:
        """Settle an open reservation at its actual amounts; a repeat with the same amounts
        returns it, anything else on a closed one is FAILED_PRECONDITION."""
        check_actuals(amount, tokens)
        closed = await self.close(org, reservation_id, True, amount, tokens)
        state_check_for_settle(closed, amount, tokens)
        return closed

    async def release(self, org: str | None, reservation_id: uuid.UUID) -> Reservation:
        """Release an open reservation's hold (a repeat returns it; a settled one cannot)."""
        closed = await self.close(org, reservation_id, False, 0, 0)
        state_check_for_release(closed)
        return closed

    async def expire_stale(self) -> int:
        """Mark lapsed reservations EXPIRED in PostgreSQL (Redis purges their holds itself)."""
        return await self.store.expire_reservations(dt.datetime.now(dt.UTC))


def _from_row(row: Row) -> Reservation:
    return Reservation(
        id=row["id"],
        org=row["org"],
        api_key=row["api_key"],
        amount_micros=row["amount_micros"],
        currency_code=row["currency_code"],
        tokens=row["tokens"],
        state=row["state"],
        budgets=list(row["budgets"]),
        expire_time=row["expire_time"],
        create_time=row["create_time"],
        settled_amount_micros=row["settled_amount_micros"],
        settled_tokens=row["settled_tokens"],
        close_time=row["close_time"],
        period_start=row["period_start"],
    )


def state_check_for_settle(r: Reservation, amount: int, tokens: int) -> None:
    """After close(settle=True): the reservation must be settled with these amounts."""
    if (
        r.state == STATE_SETTLED
        and r.settled_amount_micros == amount
        and r.settled_tokens == tokens
    ):
        return
    raise failed_precondition(
        f"{RESERVATION.format(r.id)} is not open (state {_state_word(r.state)})",
        reason="RESERVATION_NOT_OPEN",
        metadata={"state": _state_word(r.state)},
    )


def state_check_for_release(r: Reservation) -> None:
    if r.state == STATE_SETTLED:
        raise failed_precondition(
            f"{RESERVATION.format(r.id)} is already settled", reason="RESERVATION_SETTLED"
        )


def _state_word(state: int) -> str:
    return {v: k for k, v in _STATE_NAMES.items()}.get(state, "unknown").upper()


def check_reservation(
    org: str, api_key: str, amount: int, currency: str, tokens: int, ttl_ms: int | None,
    request_id: str,
) -> int:
    """A ReserveBudget request's amounts, currency, key and ttl; returns the hold's lifetime
    (`ttl_ms`, or the default when None)."""
    v = FieldViolations()
    check_api_key(api_key, "api_key", v, org)
    v.check(0 <= amount <= MAX_AMOUNT, "estimated_amount_micros", f"must be 0..{MAX_AMOUNT}")
    v.check(valid_currency(currency), "currency_code", "an ISO 4217 code like USD")
    v.check(0 <= tokens <= MAX_AMOUNT, "estimated_tokens", f"must be 0..{MAX_AMOUNT}")
    if ttl_ms is None:
        ttl_ms = DEFAULT_TTL_MS
    else:
        v.check(MIN_TTL_MS <= ttl_ms <= MAX_TTL_MS, "ttl", "must be between 1 s and 1 h")
    v.check(len(request_id) <= MAX_REQUEST_ID, "request_id", f"at most {MAX_REQUEST_ID} characters")
    v.raise_if_any()
    return ttl_ms


def check_actuals(amount_micros: int, tokens: int) -> None:
    """SettleReservation's actual amounts are within the representable range."""
    v = FieldViolations()
    v.check(0 <= amount_micros <= MAX_AMOUNT, "actual_amount_micros", f"must be 0..{MAX_AMOUNT}")
    v.check(0 <= tokens <= MAX_AMOUNT, "actual_tokens", f"must be 0..{MAX_AMOUNT}")
    v.raise_if_any()
