"""Billing's SQL: the only module that touches the `billing` schema."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from services.billing.pricing import Line, Totals
from services.common.db import Database, Row
from services.common.timestamps import month_start, next_month

STATE_ACTIVE, STATE_PAST_DUE, STATE_CANCELED = 1, 2, 3
INVOICE_DRAFT, INVOICE_FINALIZED, INVOICE_PAID, INVOICE_VOID = 1, 2, 3, 4


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- plans ---------------------------------------------------------------------------

    async def get_plan(self, plan_id: str, conn: Any = None) -> Row | None:
        if conn is None:
            async with self.db.connection() as own:
                return await self.get_plan(plan_id, own)
        cur = await conn.execute("SELECT * FROM plans WHERE id = %s", (plan_id,))
        plan = await cur.fetchone()
        if plan is not None:
            cur = await conn.execute(
                "SELECT * FROM plan_prices WHERE plan_id = %s ORDER BY resource_type, model",
                (plan_id,),
            )
            plan["prices"] = await cur.fetchall()
        return plan

    async def list_plans(self, show_all: bool, limit: int, offset: int) -> list[Row]:
        where = "" if show_all else "WHERE publicly_available AND NOT archived"
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"SELECT id FROM plans {where} ORDER BY monthly_fee_micros, id LIMIT %s OFFSET %s",
                (limit, offset),
            )
            ids = [r["id"] for r in await cur.fetchall()]
            return [p for p in [await self.get_plan(i, conn) for i in ids] if p is not None]

    async def create_plan(self, plan: Row, prices: Sequence[Row]) -> tuple[Row | None, bool]:
        async with self.db.connection() as conn:
            async with conn.transaction():
                if plan.get("request_id"):
                    cur = await conn.execute(
                        "SELECT id FROM plans WHERE request_id = %s", (plan["request_id"],)
                    )
                    found = await cur.fetchone()
                    if found is not None:
                        return await self.get_plan(found["id"], conn), False
                cur = await conn.execute(
                    """
                    INSERT INTO plans (id, display_name, description, currency_code,
                        monthly_fee_micros, org_rpm, key_rpm, tax_rate_micros, publicly_available,
                        archived, request_id)
                    VALUES (%(id)s, %(display_name)s, %(description)s, %(currency_code)s,
                        %(monthly_fee_micros)s, %(org_rpm)s, %(key_rpm)s, %(tax_rate_micros)s,
                        %(publicly_available)s, %(archived)s, %(request_id)s)
                    ON CONFLICT DO NOTHING RETURNING id
                    """,
                    plan,
                )
                if await cur.fetchone() is None:
                    return None, False
                await self._replace_prices(conn, plan["id"], prices)
                return await self.get_plan(plan["id"], conn), True

    async def _replace_prices(self, conn: Any, plan_id: str, prices: Sequence[Row]) -> None:
        await conn.execute("DELETE FROM plan_prices WHERE plan_id = %s", (plan_id,))
        async with conn.cursor() as cur:
            await cur.executemany(
                """
                INSERT INTO plan_prices (plan_id, resource_type, model, included_quantity_micros,
                    overage_unit_price_micros, price_unit_quantity)
                VALUES (%s, %s, %s, %s, %s, %s)
                """,
                [
                    (
                        plan_id,
                        p["resource_type"],
                        p["model"],
                        p["included_quantity_micros"],
                        p["overage_unit_price_micros"],
                        p["price_unit_quantity"],
                    )
                    for p in prices
                ],
            )

    async def update_plan(
        self, plan_id: str, changes: Row, prices: Sequence[Row] | None, version: int | None
    ) -> Row | None:
        """Apply `changes` (+ prices when given); None when the plan or its version is gone."""
        async with self.db.connection() as conn, conn.transaction():
            sets = "".join(f", {column} = %({column})s" for column in changes)
            guard = " AND version = %(version)s" if version is not None else ""
            cur = await conn.execute(
                f"UPDATE plans SET version = version + 1, update_time = now(){sets} "
                f"WHERE id = %(id)s{guard} RETURNING id",
                {**changes, "id": plan_id, "version": version},
            )
            if await cur.fetchone() is None:
                return None
            if prices is not None:
                await self._replace_prices(conn, plan_id, prices)
            return await self.get_plan(plan_id, conn)

    async def default_plan(self) -> Row | None:
        async with self.db.connection() as conn:
            return await self.get_plan(await self.default_plan_id(conn), conn)

    async def default_plan_id(self, conn: Any) -> str:
        cur = await conn.execute("SELECT id FROM plans WHERE is_default")
        row = await cur.fetchone()
        return row["id"] if row else "free"

    # --- subscriptions -------------------------------------------------------------------

    async def subscription(self, org: str, now: dt.datetime) -> tuple[Row, bool]:
        """The org's subscription, created on the default plan if missing and rolled over to
        the period containing `now` (pending plan applied at the first boundary). Returns
        (row, rate limits need pushing to Usage)."""
        async with self.db.connection() as conn:
            async with conn.transaction():
                cur = await conn.execute(
                    "SELECT * FROM subscriptions WHERE org = %s FOR UPDATE", (org,)
                )
                row = await cur.fetchone()
                if row is None:
                    start = month_start(now)
                    plan_id = await self.default_plan_id(conn)
                    cur = await conn.execute(
                        """
                        INSERT INTO subscriptions (org, plan_id, period_start, period_end)
                        VALUES (%s, %s, %s, %s) ON CONFLICT (org) DO NOTHING
                        """,
                        (org, plan_id, start, next_month(start)),
                    )
                    await conn.execute(
                        "INSERT INTO subscription_periods (org, period_start, plan_id) "
                        "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                        (org, start, plan_id),
                    )
                    cur = await conn.execute(
                        "SELECT * FROM subscriptions WHERE org = %s FOR UPDATE", (org,)
                    )
                    row = await cur.fetchone()
                assert row is not None
                if now >= row["period_end"]:
                    row = await self._rollover(conn, row, now)
                return row, not row["policy_synced"]

    async def _rollover(self, conn: Any, row: Row, now: dt.datetime) -> Row:
        start, plan_id = row["period_start"], row["plan_id"]
        changed = False
        while now >= next_month(start):
            start = next_month(start)
            if row["pending_plan_id"] and not changed:
                changed = row["pending_plan_id"] != plan_id
                plan_id = row["pending_plan_id"]
            await conn.execute(
                "INSERT INTO subscription_periods (org, period_start, plan_id) VALUES (%s, %s, %s) "
                "ON CONFLICT (org, period_start) DO UPDATE SET plan_id = EXCLUDED.plan_id",
                (row["org"], start, plan_id),
            )
        cur = await conn.execute(
            """
            UPDATE subscriptions SET plan_id = %s, pending_plan_id = NULL, period_start = %s,
                period_end = %s, policy_synced = policy_synced AND NOT %s, update_time = now()
            WHERE org = %s RETURNING *
            """,
            (plan_id, start, next_month(start), changed, row["org"]),
        )
        updated = await cur.fetchone()
        assert updated is not None
        return updated

    async def set_pending_plan(self, org: str, pending: str | None) -> Row:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "UPDATE subscriptions SET pending_plan_id = %s, update_time = now() "
                "WHERE org = %s RETURNING *",
                (pending, org),
            )
            row = await cur.fetchone()
            assert row is not None
            return row

    async def mark_policy_synced(self, org: str, plan_id: str) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                "UPDATE subscriptions SET policy_synced = true WHERE org = %s AND plan_id = %s",
                (org, plan_id),
            )

    async def orgs_needing_attention(self, now: dt.datetime, limit: int = 500) -> list[str]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT org FROM subscriptions WHERE period_end <= %s OR NOT policy_synced "
                "ORDER BY org LIMIT %s",
                (now, limit),
            )
            return [r["org"] for r in await cur.fetchall()]

    async def plan_for_period(self, org: str, period_start: dt.datetime) -> str | None:
        """The plan in force for the period: its record, else the earliest one (the org was on
        it before its subscription was recorded)."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                """
                SELECT plan_id FROM subscription_periods WHERE org = %s
                ORDER BY (period_start = %s) DESC, (period_start <= %s) DESC, period_start DESC
                LIMIT 1
                """,
                (org, period_start, period_start),
            )
            row = await cur.fetchone()
            return row["plan_id"] if row else None

    async def open_invoice_currencies(self, org: str) -> set[str]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT currency_code FROM invoices WHERE org = %s AND state IN (1, 2)",
                (org,),
            )
            return {r["currency_code"] for r in await cur.fetchall()}

    # --- invoices ------------------------------------------------------------------------

    async def upsert_invoice(
        self,
        org: str,
        start: dt.datetime,
        end: dt.datetime,
        plan_id: str,
        currency: str,
        totals: Totals,
    ) -> Row:
        """Create the period's invoice, or recompute it while DRAFT; other states unchanged."""
        async with self.db.connection() as conn:
            async with conn.transaction():
                await conn.execute(
                    """
                    INSERT INTO invoices (id, org, period_start, period_end, plan_id, currency_code)
                    VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (org, period_start) DO NOTHING
                    """,
                    (uuid.uuid4(), org, start, end, plan_id, currency),
                )
                cur = await conn.execute(
                    "SELECT * FROM invoices WHERE org = %s AND period_start = %s FOR UPDATE",
                    (org, start),
                )
                invoice = await cur.fetchone()
                assert invoice is not None
                if invoice["state"] != INVOICE_DRAFT:
                    return invoice
                cur = await conn.execute(
                    """
                    UPDATE invoices SET plan_id = %s, currency_code = %s, subtotal_micros = %s,
                        tax_rate_micros = %s, tax_micros = %s, total_micros = %s,
                        update_time = now()
                    WHERE id = %s RETURNING *
                    """,
                    (
                        plan_id,
                        currency,
                        totals.subtotal_micros,
                        totals.tax_rate_micros,
                        totals.tax_micros,
                        totals.total_micros,
                        invoice["id"],
                    ),
                )
                invoice = await cur.fetchone()
                assert invoice is not None
                await conn.execute(
                    "DELETE FROM invoice_lines WHERE invoice_id = %s", (invoice["id"],)
                )
                async with conn.cursor() as c:
                    await c.executemany(
                        """
                        INSERT INTO invoice_lines (invoice_id, position, kind, description,
                            resource_type, model, quantity_micros, included_quantity_micros,
                            billable_quantity_micros, unit_price_micros, price_unit_quantity,
                            amount_micros)
                        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                        """,
                        [
                            (
                                invoice["id"],
                                i,
                                ln.kind,
                                ln.description,
                                ln.resource_type,
                                ln.model,
                                ln.quantity_micros,
                                ln.included_quantity_micros,
                                ln.billable_quantity_micros,
                                ln.unit_price_micros,
                                ln.price_unit_quantity,
                                ln.amount_micros,
                            )
                            for i, ln in enumerate(totals.lines)
                        ],
                    )
                return invoice

    async def invoice_lines(self, invoice_id: uuid.UUID) -> list[Line]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM invoice_lines WHERE invoice_id = %s ORDER BY position", (invoice_id,)
            )
            return [
                Line(
                    r["kind"],
                    r["description"],
                    r["resource_type"],
                    r["model"],
                    r["quantity_micros"],
                    r["included_quantity_micros"],
                    r["billable_quantity_micros"],
                    r["unit_price_micros"],
                    r["price_unit_quantity"],
                    r["amount_micros"],
                )
                for r in await cur.fetchall()
            ]

    async def get_invoice(self, org: str, invoice_id: uuid.UUID) -> Row | None:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM invoices WHERE org = %s AND id = %s", (org, invoice_id)
            )
            return await cur.fetchone()

    async def list_invoices(self, org: str, state: int, limit: int, offset: int) -> list[Row]:
        extra, args = ("", [org]) if not state else (" AND state = %s", [org, state])
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM invoices WHERE org = %s"
                + extra
                + " ORDER BY period_start DESC LIMIT %s OFFSET %s",
                [*args, limit, offset],
            )
            return await cur.fetchall()

    async def numbered_invoices(self, conn: Any, org: str) -> int:
        """How many of the org's invoices have a number (were finalized)."""
        cur = await conn.execute(
            "SELECT count(*) AS n FROM invoices WHERE org = %s AND number <> ''", (org,)
        )
        return int((await cur.fetchone())["n"])

    async def set_invoice_state(
        self, conn: Any, invoice_id: uuid.UUID, state: int, **columns: Any
    ) -> Row:
        """Move an invoice (locked by `transition`) to `state`, setting `columns` with it.
        Column names are ours, never input."""
        sets = "".join(f", {column} = %({column})s" for column in columns)
        cur = await conn.execute(
            f"UPDATE invoices SET state = %(state)s, update_time = now(){sets} "
            "WHERE id = %(id)s RETURNING *",
            {**columns, "state": state, "id": invoice_id},
        )
        row = await cur.fetchone()
        assert row is not None  # locked by transition()
        return row

    async def transition(self, org: str, invoice_id: uuid.UUID, apply: Any) -> Row | None:
        """Lock the invoice and let `apply(conn, row)` move it (returns the new row)."""
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT * FROM invoices WHERE org = %s AND id = %s FOR UPDATE", (org, invoice_id)
            )
            row = await cur.fetchone()
            if row is None:
                return None
            return await apply(conn, row)
