"""The ONE client every service uses to meter usage and to hold budget for work in progress.

Recording usage — durable, never dropped, counted once
------------------------------------------------------
Every metering caller (Knowledge, Speech, Orchestrator) makes ONE call, typed:

    # in the servicer factory (the server's event loop is running there):
    self.usage = UsageClient(runtime)

    # inside the transaction of the work being billed (conn), or before the reply is sent:
    await self.usage.meter(
        identity, ResourceType.RESOURCE_TYPE_COMPLETION_TOKENS, 812, generation_id,
        model="models/llama-3-8b", conn=conn,
    )   # ledger request_id: f"{generation_id}/completion_tokens"

`meter()` INSERTs one record into the `usage_outbox` table in the CALLER's own schema: with
`conn`, inside the caller's open transaction, so the record commits if and only if the work
does; without it, the insert is awaited before `meter()` returns (the caller then replies), and
it runs in a tracked task, so a request cancelled meanwhile still finishes its insert; records
of callers that arrive while an insert runs share the next INSERT (one statement: all or
none), so a burst of finishing work costs a few statements instead of one each. Either
way, once a caller has replied, its usage survives a SIGKILL. The payer comes from the Identity:
the gateway subject "users/<id>" becomes the record's user, an API key (key_id) its api_key.
A zero quantity records nothing.

A background task (started with `runtime.spawn`) drains the outbox to Usage's RecordUsage in
batches of up to 500, deleting rows only after Usage acknowledged them; on failure it keeps the
rows and retries with exponential backoff and jitter (AIMESH_USAGE_OUTBOX_POLL_SECONDS when idle,
up to AIMESH_USAGE_OUTBOX_MAX_BACKOFF_SECONDS). Usage being down (or killed) therefore delays
counting but never loses it, and because every record carries a `request_id` that Usage
deduplicates per organization, a batch re-sent after a lost acknowledgement (the caller killed
between Usage's commit and its own DELETE) is not counted twice. Several instances of a service
drain the same outbox safely (SELECT ... FOR UPDATE SKIP LOCKED). Records Usage rejects as
invalid (INVALID_ARGUMENT naming records[i]) are kept with `dead_reason` set instead of
blocking the queue; inspect them with SQL.

The outbox table is created by each calling service's own migrations
(services/<svc>/migrations/NNNN_usage_outbox.sql; tests/unit/test_usage_outbox_migrations.py keeps
them identical).

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
that: the work was done), otherwise released. Settle/release are retried with the same request
id (idempotent); if Usage stays unreachable the hold simply lapses at its TTL. Pass
`fail_open=True` to run the work anyway (logged) when Usage cannot be reached for the reservation.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, cast

import grpc
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from services.common import metrics
from services.common.background import BackgroundTasks
from services.common.channels import Channels
from services.common.errors import ServiceError, error_info, field_violations, status_from_rpc_error
from services.common.identity import Identity

log = logging.getLogger("aimesh.usage_client")

ResourceType = usage_pb2.ResourceType
OUTBOX_TABLE = "usage_outbox"
DRAIN_BATCH = 500
# After a wake-up, the drain waits this long for more records, so that many pieces of work
# finishing together cost one delivery (a transaction and a RecordUsage), not one each. They
# are durable in the outbox meanwhile. A quarter second gathers the chats of a busy minute into
# a few deliveries: bench.chat's mesh CPU per stream, Usage 1.1 -> 0.35 ms with 0.05 -> 0.25 s.
DRAIN_GATHER_SECONDS = 0.25
RPC_TIMEOUT_SECONDS = 10.0
_RECORD_INDEX = re.compile(r"^records\[(\d+)\]")
_MICROS = Decimal(1_000_000)
_VALID_TYPES = frozenset(v.number for v in ResourceType.DESCRIPTOR.values if v.number)
Quantity = int | float | Decimal | str


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


def _settle(
    batch: Sequence[tuple[object, asyncio.Future[None]]], error: BaseException | None
) -> None:
    """Tell the callers of `batch` how their insert went (those still waiting)."""
    for _, committed in batch:
        if committed.done():
            continue
        if error is None:
            committed.set_result(None)
        elif isinstance(error, asyncio.CancelledError):
            committed.cancel()
        else:
            committed.set_exception(error)


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

    def __init__(
        self, runtime: Any, channels: Channels | None = None, start_drainer: bool = True
    ) -> None:
        if runtime.db is None:
            raise ValueError("UsageClient needs the service's database (its outbox lives there)")
        self.runtime = runtime
        self.db = runtime.db
        self.settings = runtime.settings
        self.channels = channels or Channels(runtime.settings)
        self._owns_channels = channels is None
        self._wake = asyncio.Event()
        self._drain_lock = asyncio.Lock()
        # Outbox inserts outlive a cancelled request; shutdown waits for them (close()).
        self._inserts = BackgroundTasks("usage-outbox")
        # Records waiting for the outbox writer (_insert_soon), each batch with its caller's
        # future; the writer is the one task inserting them.
        self._queued: list[tuple[Sequence[usage_pb2.UsageRecord], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        if start_drainer:
            runtime.spawn(self._drain_forever(), "usage-outbox-drain")
            runtime.on_shutdown(self.close)

    @property
    def stub(self) -> usage_pb2_grpc.UsageServiceStub:
        return usage_pb2_grpc.UsageServiceStub(self.channels.get("usage"))

    # --- recording -----------------------------------------------------------------------

    async def meter(
        self,
        payer: Identity,
        resource_type: int,
        quantity: Quantity,
        work_id: str,
        *,
        model: str = "",
        conn: Any = None,
        occur_time: dt.datetime | None = None,
    ) -> None:
        """Record `quantity` units of `resource_type` used by `payer` (see the module docstring).
        `work_id` names the work billed (the caller's request_id, a generation or document id;
        "" for work no retry can repeat, e.g. a stream without request_id): the ledger's
        request_id is "<work_id>/<kind>", so each kind of one piece of work counts once however
        often it is retried. `conn`: the caller's open transaction, to commit with the work
        itself; otherwise the insert is durable when this returns."""
        await self.meter_all(
            payer, [(resource_type, quantity)], work_id, model=model, conn=conn,
            occur_time=occur_time,
        )

    async def meter_all(
        self,
        payer: Identity,
        quantities: Sequence[tuple[int, Quantity]],
        work_id: str,
        *,
        model: str = "",
        conn: Any = None,
        occur_time: dt.datetime | None = None,
    ) -> None:
        """`meter()` for several resource types of one piece of work (a generation's prompt and
        completion tokens): the same records, in one INSERT."""
        records = []
        for resource_type, quantity in quantities:
            kind = (
                ResourceType.Name(resource_type).removeprefix("RESOURCE_TYPE_").lower()
                if resource_type in _VALID_TYPES
                else ""
            )
            request_id = f"{work_id or uuid.uuid4()}/{kind}"
            record = self._record(payer, resource_type, quantity, request_id, model, occur_time)
            if record is not None:
                records.append(record)
        if not records:
            return
        if conn is not None:
            await self._enqueue(records, conn)
            return
        # Shielded: the caller's cancellation (a client hanging up) cannot abort the insert.
        await asyncio.shield(self._insert_soon(records))

    def _insert_soon(self, records: Sequence[usage_pb2.UsageRecord]) -> asyncio.Future[None]:
        """Queue `records` for the outbox writer; the future is done once they are committed.
        Records queued while an INSERT runs go together in the next one (group commit): many
        generations finishing at once cost a few statements, not one each."""
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Retrieved here: a caller that went away (cancelled) must not leave it unobserved.
        committed.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queued.append((records, committed))
        if self._writer is None or self._writer.done():
            self._writer = self._inserts.start(self._write_queued(), "insert")
        return committed

    async def _write_queued(self) -> None:
        """Insert what is queued, one statement per batch, until nothing is left."""
        batch: list[tuple[Sequence[usage_pb2.UsageRecord], asyncio.Future[None]]] = []
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    await self._enqueue([r for records, _ in batch for r in records])
                except Exception as exc:  # noqa: BLE001 - each caller gets its batch's failure
                    _settle(batch, exc)
                else:
                    _settle(batch, None)
        finally:  # only if this task itself was cancelled: no caller may wait forever
            left, self._queued = [*batch, *self._queued], []
            _settle(left, asyncio.CancelledError())

    def _record(
        self,
        payer: Identity,
        resource_type: int,
        quantity: Quantity,
        request_id: str,
        model: str,
        occur_time: dt.datetime | None,
    ) -> usage_pb2.UsageRecord | None:
        """A validated UsageRecord, or None for a zero quantity (nothing to bill)."""
        if not payer.org:
            raise ValueError("the payer's organization is required")
        if not request_id:
            raise ValueError("request_id is required (it makes delivery retries safe)")
        if resource_type not in _VALID_TYPES:
            raise ValueError(f"unknown resource type {resource_type!r}")
        micros = to_micros(quantity)
        if micros == 0:
            return None
        org = payer.org.removeprefix("organizations/")
        subject = payer.subject or ""
        # The gateway's subject is "users/<id>" for people and "apiKeys/<id>" for keys (no user).
        user = (
            ""
            if not subject or subject.startswith("apiKeys/")
            else (subject if subject.startswith("users/") else f"users/{subject}")
        )
        api_key = f"organizations/{org}/apiKeys/{payer.key_id}" if payer.key_id else ""
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(occur_time or dt.datetime.now(dt.UTC))
        return usage_pb2.UsageRecord(
            organization=_org_name(org),
            request_id=request_id,
            resource_type=cast(ResourceType, resource_type),
            quantity_micros=micros,
            model=model,
            api_key=api_key,
            user=user,
            occur_time=stamp,
            source=getattr(self.runtime, "name", ""),
        )

    async def _enqueue(self, records: Sequence[usage_pb2.UsageRecord], conn: Any = None) -> None:
        rows = [(r.SerializeToString(),) for r in records]
        sql = f"INSERT INTO {OUTBOX_TABLE} (record) VALUES (%s)"
        if conn is not None:
            async with conn.cursor() as cur:
                await cur.executemany(sql, rows)
        else:  # one statement, one round trip; the same text for any count (prepared once)
            async with self.db.autocommit() as own:
                await own.execute(
                    f"INSERT INTO {OUTBOX_TABLE} (record) SELECT unnest(%s::bytea[])",
                    ([row for row, in rows],),
                )
        self._wake.set()

    async def pending(self) -> int:
        """Records waiting for delivery (dead ones excluded)."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"SELECT count(*) AS n FROM {OUTBOX_TABLE} WHERE dead_reason IS NULL"
            )
            row = await cur.fetchone()
            return int(row["n"])

    async def observe_outbox(self) -> None:
        """Outbox depth and the age of its oldest record, for the 'not draining' alert."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n, "
                "coalesce(extract(epoch FROM now() - min(create_time)), 0) AS age "
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
        log.error(
            "usage records rejected by Usage; parked in the outbox",
            extra={"count": len(bad), "reason": next(iter(bad.values()))},
        )
        async with conn.cursor() as cur:
            await cur.executemany(
                f"UPDATE {OUTBOX_TABLE} SET dead_reason = %s WHERE id = %s",
                [(reason, i) for i, reason in bad.items()],
            )

    async def _drain_forever(self) -> None:
        failures = 0
        observed_at = float("-inf")
        poll = self.settings.usage_outbox_poll_seconds
        cap = self.settings.usage_outbox_max_backoff_seconds
        while True:
            if failures:
                delay = min(cap, poll * (2 ** min(failures, 16)))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=poll)
                    await asyncio.sleep(DRAIN_GATHER_SECONDS)
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
                log.log(
                    level,
                    "usage outbox delivery failed; will retry",
                    extra={"failures": failures, "error": str(exc).splitlines()[0][:200]},
                )
            if time.monotonic() - observed_at < poll:
                continue  # the gauges are fresh enough (not a query per delivery under load)
            observed_at = time.monotonic()
            try:
                await self.observe_outbox()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the database is away: readiness reports it
                pass

    async def close(self) -> None:
        """Last delivery attempt at shutdown (what fails stays queued for the next start)."""
        await self._inserts.wait(timeout=5)
        try:
            await asyncio.wait_for(self.flush(), timeout=2)
        except Exception as exc:  # noqa: BLE001 - undelivered rows stay in the outbox
            log.info(
                "usage outbox not fully delivered at shutdown", extra={"error": str(exc)[:200]}
            )
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
            organization=_org_name(org),
            api_key=api_key,
            estimated_amount_micros=estimated_amount_micros,
            currency_code=currency_code,
            estimated_tokens=estimated_tokens,
            ttl=ttl,
            request_id=request_id or str(uuid.uuid4()),
        )
        reservation = await self._call_with_retries(
            lambda: self.stub.ReserveBudget(
                request, timeout=RPC_TIMEOUT_SECONDS, metadata=metadata
            ),
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
                name=hold.name,
                actual_amount_micros=hold.actual[0],
                actual_tokens=hold.actual[1],
                request_id=str(uuid.uuid5(uuid.NAMESPACE_URL, hold.name)),
            )
            call = functools.partial(
                self.stub.SettleReservation, request, timeout=RPC_TIMEOUT_SECONDS, metadata=metadata
            )
        else:
            release = usage_pb2.ReleaseReservationRequest(name=hold.name)
            call = functools.partial(
                self.stub.ReleaseReservation,
                release,
                timeout=RPC_TIMEOUT_SECONDS,
                metadata=metadata,
            )
        try:
            await self._call_with_retries(call, fail_open=False)
        except ServiceError as exc:
            # The work is done (or abandoned); an unsettled hold lapses at its TTL.
            log.error(
                "could not close reservation",
                extra={"reservation": hold.name, "settle": settle, "error": exc.message},
            )

    async def _call_with_retries(self, call: Any, fail_open: bool, attempts: int = 4) -> Any:
        delay = 0.1
        for attempt in range(attempts):
            try:
                return await call()
            except grpc.aio.AioRpcError as exc:
                transient = exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                if transient and attempt + 1 < attempts:
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, 2.0)
                    continue
                if transient and fail_open:
                    log.warning("Usage unreachable; running without a budget hold (fail_open)")
                    return None
                raise service_error_from(exc) from None
        raise AssertionError("unreachable")
