"""The ONE client every service uses to meter usage and to hold budget for work in progress.

Recording usage — durable, never dropped, counted once
------------------------------------------------------
    # in the servicer factory (the server's event loop is running there):
    self.usage = UsageClient(runtime)

    # after (or inside the same transaction as) the work being billed:
    await self.usage.record(
        org=identity.org, resource_type=ResourceType.RESOURCE_TYPE_COMPLETION_TOKENS,
        quantity=812, request_id=f"{request_id}/completion", model="models/llama-3-8b",
        api_key=..., user=..., conn=conn,   # conn: optional, to join the caller's transaction
    )

`record()` only INSERTs into the `usage_outbox` table in the CALLER's own schema (so it is as
durable as the caller's own data, and atomic with it when `conn` is passed). A background task
(started with `runtime.spawn`) drains the outbox to Usage's RecordUsage in batches of up to
500, deleting rows only after Usage acknowledged them; on failure it keeps the rows and retries
with exponential backoff and jitter (AIMESH_USAGE_OUTBOX_POLL_SECONDS when idle, up to
AIMESH_USAGE_OUTBOX_MAX_BACKOFF_SECONDS). Usage being down therefore delays counting but never
loses it, and because every record carries a `request_id` that Usage deduplicates per
organization, a batch re-sent after a lost acknowledgement is not counted twice. Several
instances of a service drain the same outbox safely (SELECT ... FOR UPDATE SKIP LOCKED).
Records Usage rejects as invalid (INVALID_ARGUMENT naming records[i]) are kept with
`dead_reason` set instead of blocking the queue; inspect them with SQL.

Services without a client object at hand can use the module-level shortcut, which keeps one
UsageClient per runtime (created on first use, drainer included):

    await record_usage(runtime, org=identity.org, resource_type="RESOURCE_TYPE_SEARCHES",
                       quantity=1, request_id=f"{request_id}/searches", subject=identity.subject,
                       api_key=identity.key_id or "", source="knowledge")

How the outbox table gets into the caller's schema: the client creates it itself, idempotently
(CREATE TABLE IF NOT EXISTS under an advisory lock), before its first insert or drain. No
migration is needed in the calling service; its yoyo migrations must simply not create a
table named `usage_outbox`. (`OUTBOX_DDL` is exported for anyone who prefers a migration.)

Budgets — reserve before, settle after
--------------------------------------
    async with self.usage.reserve(
        org=identity.org, estimated_amount_micros=estimate, currency_code="USD",
        estimated_tokens=prompt_tokens + max_tokens, api_key=key_name, identity=identity,
    ) as hold:
        ... do the work ...
        hold.settle(actual_amount_micros, actual_tokens)   # what it really cost

Entering raises `ServiceError` RESOURCE_EXHAUSTED (reason BUDGET_EXCEEDED or
TOKEN_BUDGET_EXCEEDED, with the budget and period in ErrorInfo metadata) when a cap would be
exceeded: let it propagate and the caller's RPC fails with the same status and details. On exit
the hold is settled with the amount given to `hold.settle()` (even if the block raised after
that: the work was done), otherwise released. Settle/release are retried with the same request id (idempotent); if
Usage stays unreachable the hold simply lapses at its TTL. Pass `fail_open=True` to run the
work anyway (logged) when Usage cannot be reached for the reservation.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import grpc
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from services.common import metrics
from services.common.channels import Channels
from services.common.errors import ServiceError, error_info, field_violations, status_from_rpc_error
from services.common.identity import Identity

log = logging.getLogger("aimesh.usage_client")

ResourceType = usage_pb2.ResourceType
OUTBOX_TABLE = "usage_outbox"
OUTBOX_DDL = f"""
CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} (
    id           bigserial PRIMARY KEY,
    record       bytea NOT NULL,          -- a serialized aimesh.usage.v1.UsageRecord
    dead_reason  text,                    -- set when Usage rejected the record as invalid
    create_time  timestamptz NOT NULL DEFAULT now()
)
"""
DRAIN_BATCH = 500
RPC_TIMEOUT_SECONDS = 10.0
_ADVISORY_LOCK = 0x75736167  # "usag": serializes concurrent CREATE TABLE IF NOT EXISTS
_RECORD_INDEX = re.compile(r"^records\[(\d+)\]")
_MICROS = Decimal(1_000_000)
_VALID_TYPES = frozenset(v.number for v in ResourceType.DESCRIPTOR.values if v.number)


def to_micros(quantity: float | Decimal | str) -> int:
    """Exact micro-units of a non-negative, finite quantity (floats round half-up to 1e-6)."""
    if isinstance(quantity, bool):
        raise TypeError("quantity must be a number, not bool")
    try:
        value = Decimal(repr(quantity)) if isinstance(quantity, float) else Decimal(quantity)
    except InvalidOperation:
        raise ValueError(f"quantity {quantity!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"quantity {quantity!r} must be finite and >= 0")
    return int((value * _MICROS).to_integral_value(rounding=ROUND_HALF_UP))


def _org_name(org: str) -> str:
    return org if org.startswith("organizations/") else f"organizations/{org}"


def service_error_from(error: grpc.aio.AioRpcError) -> ServiceError:
    """Re-raise a peer's failure as our own ServiceError, keeping reason and details."""
    status = status_from_rpc_error(error)
    info = error_info(status) if status is not None else None
    return ServiceError(
        error.code(),
        error.details() or error.code().name,
        reason=info.reason if info else None,
        violations=field_violations(status) if status is not None else (),
        metadata=dict(info.metadata) if info else None,
    )


class Hold:
    """A reservation in progress; call `settle(actual_amount_micros, actual_tokens)` once."""

    def __init__(self, reservation: usage_pb2.Reservation | None) -> None:
        self.reservation = reservation
        self.actual: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return self.reservation.name if self.reservation is not None else ""

    def settle(self, actual_amount_micros: int, actual_tokens: int = 0) -> None:
        if actual_amount_micros < 0 or actual_tokens < 0:
            raise ValueError("actual amounts must be >= 0")
        self.actual = (int(actual_amount_micros), int(actual_tokens))


class UsageClient:
    """Usage metering and budget holds for one service process (see the module docstring)."""

    def __init__(self, runtime: Any, channels: Channels | None = None, start_drainer: bool = True) -> None:
        if runtime.db is None:
            raise ValueError("UsageClient needs the service's database (its outbox lives there)")
        self.runtime = runtime
        self.db = runtime.db
        self.settings = runtime.settings
        self.channels = channels or Channels(runtime.settings)
        self._owns_channels = channels is None
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._drain_lock = asyncio.Lock()
        # Outbox inserts started by record_usage_soon(), awaited (briefly) at shutdown.
        self._pending: set[asyncio.Task[None]] = set()
        if start_drainer:
            runtime.spawn(self._drain_forever(), "usage-outbox-drain")
            runtime.on_shutdown(self.close)

    @property
    def stub(self) -> usage_pb2_grpc.UsageServiceStub:
        return usage_pb2_grpc.UsageServiceStub(self.channels.get("usage"))

    async def ensure_outbox(self) -> None:
        """Create the outbox table in the caller's schema if it is not there yet."""
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            async with self.db.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK,))
                await conn.execute(OUTBOX_DDL)
            self._ready = True

    # --- recording -----------------------------------------------------------------------

    async def record(self, *, conn: Any = None, **fields: Any) -> None:
        """Queue one usage record durably (see module docstring). Keywords: those of
        `make_record`. `conn`: the caller's open connection, to commit with its own data."""
        await self.record_many([self.make_record(**fields)], conn=conn)

    def make_record(
        self,
        *,
        org: str,
        resource_type: int,
        quantity: float | Decimal | str | None = None,
        quantity_micros: int | None = None,
        request_id: str,
        model: str = "",
        api_key: str = "",
        user: str = "",
        occur_time: dt.datetime | None = None,
        source: str | None = None,
    ) -> usage_pb2.UsageRecord:
        """A validated UsageRecord: `quantity` in units (exact, see to_micros) or
        `quantity_micros`; `request_id` unique per organization (e.g. "<request>/<type>")."""
        if not org:
            raise ValueError("org is required")
        if not request_id:
            raise ValueError("request_id is required (it makes delivery retries safe)")
        if resource_type not in _VALID_TYPES:
            raise ValueError(f"unknown resource type {resource_type!r}")
        if (quantity is None) == (quantity_micros is None):
            raise ValueError("give exactly one of quantity and quantity_micros")
        micros = to_micros(quantity) if quantity is not None else int(quantity_micros)  # type: ignore[arg-type]
        if micros < 0:
            raise ValueError("quantity_micros must be >= 0")
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(occur_time or dt.datetime.now(dt.UTC))
        return usage_pb2.UsageRecord(
            organization=_org_name(org), request_id=request_id, resource_type=resource_type,
            quantity_micros=micros, model=model, api_key=api_key, user=user, occur_time=stamp,
            source=source if source is not None else getattr(self.runtime, "name", ""),
        )

    async def record_many(self, records: Sequence[usage_pb2.UsageRecord], conn: Any = None) -> None:
        await self.ensure_outbox()
        rows = [(r.SerializeToString(),) for r in records]
        sql = f"INSERT INTO {OUTBOX_TABLE} (record) VALUES (%s)"
        if conn is not None:
            async with conn.cursor() as cur:
                await cur.executemany(sql, rows)
        else:
            async with self.db.connection() as own, own.cursor() as cur:
                await cur.executemany(sql, rows)
        self._wake.set()

    async def pending(self) -> int:
        """Records waiting for delivery (dead ones excluded)."""
        await self.ensure_outbox()
        async with self.db.connection() as conn:
            cur = await conn.execute(f"SELECT count(*) AS n FROM {OUTBOX_TABLE} WHERE dead_reason IS NULL")
            row = await cur.fetchone()
            return int(row["n"])

    async def observe_outbox(self) -> None:
        """Outbox depth and the age of its oldest record, for the 'not draining' alert."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(create_time)), 0) AS age "
                f"FROM {OUTBOX_TABLE} WHERE dead_reason IS NULL"
            )
            row = await cur.fetchone()
        metrics.observe_outbox(self.runtime.name, int(row["n"]), float(row["age"]))

    async def flush(self) -> int:
        """Deliver everything queued now; returns records delivered. Raises if Usage fails."""
        delivered = 0
        while True:
            sent = await self._drain_batch()
            delivered += sent
            if sent < DRAIN_BATCH:
                return delivered

    async def _drain_batch(self) -> int:
        await self.ensure_outbox()
        async with self._drain_lock, self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"SELECT id, record FROM {OUTBOX_TABLE} WHERE dead_reason IS NULL "
                "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                (DRAIN_BATCH,),
            )
            rows = await cur.fetchall()
            if not rows:
                return 0
            ids = [r["id"] for r in rows]
            request = usage_pb2.RecordUsageRequest(
                records=[usage_pb2.UsageRecord.FromString(bytes(r["record"])) for r in rows]
            )
            try:
                await self.stub.RecordUsage(request, timeout=RPC_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                await self._bury(conn, ids, exc)
                return len(ids)
            await conn.execute(f"DELETE FROM {OUTBOX_TABLE} WHERE id = ANY(%s)", (ids,))
            return len(ids)

    async def _bury(self, conn: Any, ids: list[int], exc: grpc.aio.AioRpcError) -> None:
        """Park the records Usage rejected (the rest are retried at once)."""
        status = status_from_rpc_error(exc)
        bad: dict[int, str] = {}
        for field, description in field_violations(status) if status is not None else []:
            match = _RECORD_INDEX.match(field)
            if match and int(match.group(1)) < len(ids):
                bad.setdefault(ids[int(match.group(1))], f"{field}: {description}")
        if not bad:  # not attributable to single records: park the whole batch
            bad = {i: exc.details() or "INVALID_ARGUMENT" for i in ids}
        log.error("usage records rejected by Usage; parked in the outbox",
                  extra={"count": len(bad), "reason": next(iter(bad.values()))})
        async with conn.cursor() as cur:
            await cur.executemany(
                f"UPDATE {OUTBOX_TABLE} SET dead_reason = %s WHERE id = %s",
                [(reason, i) for i, reason in bad.items()],
            )

    async def _drain_forever(self) -> None:
        failures = 0
        poll = self.settings.usage_outbox_poll_seconds
        cap = self.settings.usage_outbox_max_backoff_seconds
        while True:
            if failures:
                delay = min(cap, poll * (2 ** min(failures, 16)))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=poll)
                except TimeoutError:
                    pass
            self._wake.clear()
            try:
                await self.flush()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: keep the rows, retry later
                failures += 1
                level = logging.WARNING if failures < 5 else logging.ERROR
                log.log(level, "usage outbox delivery failed; will retry",
                        extra={"failures": failures, "error": str(exc).splitlines()[0][:200]})
            try:
                await self.observe_outbox()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the database is away: readiness reports it
                pass

    async def close(self) -> None:
        """Last delivery attempt at shutdown (what fails stays queued for the next start)."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=5)
        try:
            await asyncio.wait_for(self.flush(), timeout=2)
        except Exception as exc:  # noqa: BLE001 - undelivered rows stay in the outbox
            log.info("usage outbox not fully delivered at shutdown", extra={"error": str(exc)[:200]})
        if self._owns_channels:
            await self.channels.close()

    # --- budgets -------------------------------------------------------------------------

    @asynccontextmanager
    async def reserve(
        self,
        *,
        org: str,
        estimated_amount_micros: int,
        currency_code: str,
        estimated_tokens: int = 0,
        api_key: str = "",
        ttl_seconds: float = 300.0,
        identity: Identity | None = None,
        request_id: str | None = None,
        fail_open: bool = False,
    ) -> AsyncIterator[Hold]:
        """Hold budget for the duration of the block (see the module docstring)."""
        metadata = identity.to_headers() if identity is not None else None
        ttl = duration_pb2.Duration()
        ttl.FromMilliseconds(int(max(1.0, min(ttl_seconds, 3600.0)) * 1000))
        request = usage_pb2.ReserveBudgetRequest(
            organization=_org_name(org), api_key=api_key,
            estimated_amount_micros=estimated_amount_micros, currency_code=currency_code,
            estimated_tokens=estimated_tokens, ttl=ttl, request_id=request_id or str(uuid.uuid4()),
        )
        reservation = await self._call_with_retries(
            lambda: self.stub.ReserveBudget(request, timeout=RPC_TIMEOUT_SECONDS, metadata=metadata),
            fail_open=fail_open,
        )
        hold = Hold(reservation)
        try:
            yield hold
        except BaseException:
            if reservation is not None:
                await self._close_hold(hold, metadata, settle=hold.actual is not None)
            raise
        if reservation is not None:
            await self._close_hold(hold, metadata, settle=hold.actual is not None)

    async def _close_hold(self, hold: Hold, metadata: Any, settle: bool) -> None:
        if settle:
            assert hold.actual is not None
            request = usage_pb2.SettleReservationRequest(
                name=hold.name, actual_amount_micros=hold.actual[0], actual_tokens=hold.actual[1],
                request_id=str(uuid.uuid5(uuid.NAMESPACE_URL, hold.name)),
            )
            call = lambda: self.stub.SettleReservation(
                request, timeout=RPC_TIMEOUT_SECONDS, metadata=metadata)
        else:
            release = usage_pb2.ReleaseReservationRequest(name=hold.name)
            call = lambda: self.stub.ReleaseReservation(
                release, timeout=RPC_TIMEOUT_SECONDS, metadata=metadata)
        try:
            await self._call_with_retries(call, fail_open=False)
        except ServiceError as exc:
            # The work is done (or abandoned); an unsettled hold lapses at its TTL.
            log.error("could not close reservation", extra={"reservation": hold.name,
                                                            "settle": settle, "error": exc.message})

    async def _call_with_retries(self, call: Any, fail_open: bool, attempts: int = 4) -> Any:
        delay = 0.1
        for attempt in range(attempts):
            try:
                return await call()
            except grpc.aio.AioRpcError as exc:
                transient = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if transient and attempt + 1 < attempts:
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, 2.0)
                    continue
                if transient and fail_open:
                    log.warning("Usage unreachable; running without a budget hold (fail_open)")
                    return None
                raise service_error_from(exc) from None
        raise AssertionError("unreachable")


def client_for(runtime: Any) -> UsageClient:
    """The runtime's shared UsageClient (created, with its drainer, on first use)."""
    client = getattr(runtime, "_usage_client", None)
    if client is None:
        client = UsageClient(runtime)
        setattr(runtime, "_usage_client", client)  # noqa: B010 - Runtime has no slot for it
    return client


def resource_type_of(value: int | str) -> int:
    """ResourceType from its number, its name or its short name ("searches")."""
    if isinstance(value, int):
        return value
    name = value.strip().upper()
    if not name.startswith("RESOURCE_TYPE_"):
        name = f"RESOURCE_TYPE_{name}"
    try:
        return ResourceType.Value(name)
    except ValueError:
        raise ValueError(f"unknown resource type {value!r}") from None


async def record_usage(
    runtime: Any,
    *,
    org: str,
    resource_type: int | str,
    quantity: float | Decimal | str,
    request_id: str,
    source: str | None = None,
    subject: str = "",
    api_key: str = "",
    model: str = "",
    occur_time: dt.datetime | None = None,
    conn: Any = None,
) -> None:
    """Queue one usage record through the runtime's shared client. `subject` is the gateway's
    subject (a user: bare id or "users/..."; an API key subject records no user), `api_key` a
    key id or its full resource name."""
    bare_org = org.removeprefix("organizations/")
    # The gateway's subject is "users/<id>" for people and "apiKeys/<id>" for keys (no user).
    if not subject or subject.startswith("apiKeys/"):
        user = ""
    else:
        user = subject if subject.startswith("users/") else f"users/{subject}"
    key = api_key if not api_key or api_key.startswith("organizations/") else (
        f"organizations/{bare_org}/apiKeys/{api_key}")
    await client_for(runtime).record(
        org=bare_org, resource_type=resource_type_of(resource_type), quantity=quantity,
        request_id=request_id, source=source, user=user, api_key=key, model=model,
        occur_time=occur_time, conn=conn,
    )


def record_usage_soon(runtime: Any, **fields: Any) -> None:
    """record_usage() without waiting: the outbox insert runs in the background, so a stream or
    an RPC never waits on metering. Failures are logged; the client's shutdown waits for inserts
    still running. Keywords: those of record_usage()."""
    client = client_for(runtime)

    async def insert() -> None:
        try:
            await record_usage(runtime, **fields)
        except Exception:
            log.exception("could not queue a usage record",
                          extra={"request_id": fields.get("request_id")})

    task = asyncio.ensure_future(insert())
    client._pending.add(task)
    task.add_done_callback(client._pending.discard)
