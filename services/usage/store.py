"""Usage's SQL: the only module that touches the `usage` schema."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.db import Database, Row


@dataclass(frozen=True)
class NewRecord:
    org: str
    request_id: str
    api_key: str
    user: str
    resource_type: int
    model: str
    quantity_micros: int
    occur_time: dt.datetime
    source: str


@dataclass(frozen=True)
class RecordFilter:
    org: str
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    resource_type: int = 0
    model: str = ""
    api_key: str = ""
    user: str = ""


# Ledger insert and rollup in ONE statement (one transaction): data-modifying CTEs always run
# to completion. Rows are sorted so concurrent overlapping batches lock unique-index entries
# and rollup rows in the same order (no deadlocks). Each session adds to its own shard of a
# rollup row (pg_backend_pid() % 8), so concurrent writers of one org do not queue on one row.
_RECORD_SQL = """
WITH input AS (
    SELECT * FROM unnest(
        %(org)s::text[], %(request_id)s::text[], %(api_key)s::text[], %(user_name)s::text[],
        %(resource_type)s::smallint[], %(model)s::text[], %(quantity)s::bigint[],
        %(occur_time)s::timestamptz[], %(source)s::text[]
    ) AS t(org, request_id, api_key, user_name, resource_type, model, quantity_micros,
           occur_time, source)
    ORDER BY org, request_id
),
inserted AS (
    INSERT INTO usage_records (org, request_id, api_key, user_name, resource_type, model,
                               quantity_micros, occur_time, source)
    SELECT org, request_id, api_key, user_name, resource_type, model, quantity_micros,
           occur_time, source
    FROM input
    ON CONFLICT (org, request_id) DO NOTHING
    RETURNING org, request_id, api_key, resource_type, model, quantity_micros, occur_time
),
rolled AS (
    INSERT INTO usage_daily AS d (org, day, resource_type, model, api_key, shard,
                                  quantity_micros, record_count)
    SELECT org, (occur_time AT TIME ZONE 'UTC')::date, resource_type, model, api_key,
           pg_backend_pid() %% 8, sum(quantity_micros), count(*)
    FROM inserted
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (org, day, resource_type, model, api_key, shard) DO UPDATE
        SET quantity_micros = d.quantity_micros + EXCLUDED.quantity_micros,
            record_count = d.record_count + EXCLUDED.record_count
    RETURNING 1
)
SELECT org, request_id FROM inserted
"""

_GROUP_COLUMNS = {"resource_type": "resource_type", "model": "model", "api_key": "api_key"}


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- rate-limit policies -------------------------------------------------------------

    async def get_rate_limit_policy(self, org: str) -> Row | None:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT org_rpm, key_rpm, plan, update_time FROM rate_limit_policies "
                "WHERE org = %s",
                (org,),
            )
            return await cur.fetchone()

    async def list_rate_limit_policies(self) -> list[Row]:
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT org, org_rpm, key_rpm, plan FROM rate_limit_policies")
            return await cur.fetchall()

    async def set_rate_limit_policy(self, org: str, org_rpm: int, key_rpm: int, plan: str) -> Row:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                """
                INSERT INTO rate_limit_policies (org, org_rpm, key_rpm, plan, update_time)
                VALUES (%s, %s, %s, %s, now())
                ON CONFLICT (org) DO UPDATE SET org_rpm = EXCLUDED.org_rpm,
                    key_rpm = EXCLUDED.key_rpm, plan = EXCLUDED.plan, update_time = now()
                RETURNING org_rpm, key_rpm, plan, update_time
                """,
                (org, org_rpm, key_rpm, plan),
            )
            row = await cur.fetchone()
            assert row is not None
            return row

    # --- ledger --------------------------------------------------------------------------

    async def record(self, records: Sequence[NewRecord]) -> set[tuple[str, str]]:
        """Append records (duplicates ignored); returns the (org, request_id) newly inserted."""
        params = {
            "org": [r.org for r in records],
            "request_id": [r.request_id for r in records],
            "api_key": [r.api_key for r in records],
            "user_name": [r.user for r in records],
            "resource_type": [r.resource_type for r in records],
            "model": [r.model for r in records],
            "quantity": [r.quantity_micros for r in records],
            "occur_time": [r.occur_time for r in records],
            "source": [r.source for r in records],
        }
        async with self.db.connection() as conn:
            cur = await conn.execute(_RECORD_SQL, params)
            return {(row["org"], row["request_id"]) for row in await cur.fetchall()}

    @staticmethod
    def _where(f: RecordFilter) -> tuple[list[str], list[Any]]:
        clauses: list[str] = ["org = %s"]
        args: list[Any] = [f.org]
        if f.start is not None:
            clauses.append("occur_time >= %s")
            args.append(f.start)
        if f.end is not None:
            clauses.append("occur_time < %s")
            args.append(f.end)
        equal = {"resource_type": f.resource_type, "model": f.model, "api_key": f.api_key,
                 "user_name": f.user}
        for column, value in equal.items():
            if value:  # unset filters are 0 / ""
                clauses.append(f"{column} = %s")
                args.append(value)
        return clauses, args

    async def list_records(
        self,
        f: RecordFilter,
        limit: int,
        after: tuple[dt.datetime, int] | None,
        newest_first: bool = True,
    ) -> list[Row]:
        """One page, keyset-paginated on (occur_time, id), newest or oldest first."""
        clauses, args = self._where(f)
        order, cmp = ("DESC", "<") if newest_first else ("ASC", ">")
        if after is not None:
            clauses.append(f"(occur_time, id) {cmp} (%s, %s)")
            args.extend(after)
        sql = (
            "SELECT * FROM usage_records WHERE "
            + " AND ".join(clauses)
            + f" ORDER BY occur_time {order}, id {order} LIMIT %s"
        )
        async with self.db.connection() as conn:
            cur = await conn.execute(sql, [*args, limit])
            return await cur.fetchall()

    async def stream_records(self, f: RecordFilter, batch: int = 2000) -> AsyncIterator[list[Row]]:
        """Oldest first, in batches, without holding one long transaction."""
        after: tuple[dt.datetime, int] | None = None
        while True:
            rows = await self.list_records(f, batch, after, newest_first=False)
            if rows:
                yield rows
            if len(rows) < batch:
                return
            after = (rows[-1]["occur_time"], rows[-1]["id"])

    async def summarize(
        self,
        org: str,
        start: dt.datetime,
        end: dt.datetime,
        group_by: Sequence[str],
        api_key: str,
        resource_types: Sequence[int],
    ) -> list[Row]:
        """Sums per resource type and the requested dimensions ("resource_type", "model",
        "day", "api_key"). Whole UTC days come from the rollup; other ranges from the ledger."""
        whole_days = all(t.hour == t.minute == t.second == t.microsecond == 0 for t in (start, end))
        if whole_days:
            table, day_expr = "usage_daily", "day"
            args: list[Any] = [org, start.date(), end.date()]
            where = ["org = %s", "day >= %s", "day < %s"]
            count_expr = "sum(record_count)"
        else:
            table, day_expr = "usage_records", "(occur_time AT TIME ZONE 'UTC')::date"
            args = [org, start, end]
            where = ["org = %s", "occur_time >= %s", "occur_time < %s"]
            count_expr = "count(*)"
        if api_key:
            where.append("api_key = %s")
            args.append(api_key)
        if resource_types:
            where.append("resource_type = ANY(%s)")
            args.append(list(resource_types))
        columns: list[str] = []
        for dim in group_by:
            expr = f"{day_expr} AS day" if dim == "day" else _GROUP_COLUMNS[dim]
            if expr not in columns:
                columns.append(expr)
        if "resource_type" not in columns:
            columns.append("resource_type")
        names = [c.split(" AS ")[-1] for c in columns]
        sql = (
            f"SELECT {', '.join(columns)}, sum(quantity_micros)::bigint AS quantity_micros, "
            f"{count_expr}::bigint AS record_count FROM {table} WHERE {' AND '.join(where)} "
            f"GROUP BY {', '.join(names)} ORDER BY {', '.join(names)}"
        )
        async with self.db.connection() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchall()

    # --- budgets -------------------------------------------------------------------------

    async def create_budget(self, values: Row) -> tuple[Row, bool]:
        """Insert; returns (row, created). A repeated request_id returns the first budget."""
        async with self.db.connection() as conn:
            if values.get("request_id"):
                cur = await conn.execute(
                    "SELECT * FROM budgets WHERE org = %s AND request_id = %s",
                    (values["org"], values["request_id"]),
                )
                existing = await cur.fetchone()
                if existing is not None:
                    return existing, False
            cur = await conn.execute(
                """
                INSERT INTO budgets (id, org, scope, api_key, display_name, monthly_limit_micros,
                                     currency_code, monthly_token_limit, request_id)
                VALUES (%(id)s, %(org)s, %(scope)s, %(api_key)s, %(display_name)s,
                        %(monthly_limit_micros)s, %(currency_code)s, %(monthly_token_limit)s,
                        %(request_id)s)
                ON CONFLICT DO NOTHING
                RETURNING *
                """,
                {**values, "id": values.get("id") or uuid.uuid4()},
            )
            row = await cur.fetchone()
            if row is None:
                return {}, False
            return row, True

    async def get_budget(self, org: str, budget_id: uuid.UUID) -> Row | None:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM budgets WHERE org = %s AND id = %s", (org, budget_id)
            )
            return await cur.fetchone()

    async def list_budgets(
        self, org: str, limit: int, after: tuple[dt.datetime, uuid.UUID] | None
    ) -> list[Row]:
        args: list[Any] = [org]
        extra = ""
        if after is not None:
            extra = " AND (create_time, id) > (%s, %s)"
            args.extend(after)
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM budgets WHERE org = %s"
                + extra
                + " ORDER BY create_time, id LIMIT %s",
                [*args, limit],
            )
            return await cur.fetchall()

    async def applicable_budgets(self, org: str, api_key: str) -> list[Row]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM budgets "
                "WHERE org = %s AND (scope = 1 OR (scope = 2 AND api_key = %s))"
                " ORDER BY id",
                (org, api_key),
            )
            return await cur.fetchall()

    async def update_budget(
        self, org: str, budget_id: uuid.UUID, changes: Row, version: int | None
    ) -> Row | None:
        sets = ", ".join(f"{column} = %({column})s" for column in changes)
        guard = " AND version = %(version)s" if version is not None else ""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"UPDATE budgets SET {sets}, version = version + 1, update_time = now() "
                f"WHERE org = %(org)s AND id = %(id)s{guard} RETURNING *",
                {**changes, "org": org, "id": budget_id, "version": version},
            )
            return await cur.fetchone()

    async def delete_budget(self, org: str, budget_id: uuid.UUID) -> bool:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM budgets WHERE org = %s AND id = %s", (org, budget_id)
            )
            return cur.rowcount > 0

    async def spent(
        self, budget_ids: Sequence[uuid.UUID], period: dt.datetime
    ) -> dict[uuid.UUID, Row]:
        """Settled spend of each budget in the period, summed from its settled reservations."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                """
                SELECT b.id AS budget_id, sum(r.settled_amount_micros)::bigint AS spent_micros,
                       sum(r.settled_tokens)::bigint AS spent_tokens
                FROM reservations r, unnest(r.budgets) AS b(id)
                WHERE r.state = 2 AND r.budgets && %s::uuid[] AND r.period_start = %s
                  AND b.id = ANY(%s::uuid[])
                GROUP BY b.id
                """,
                (list(budget_ids), period, list(budget_ids)),
            )
            return {row["budget_id"]: row for row in await cur.fetchall()}

    # --- reservations --------------------------------------------------------------------

    async def insert_reservation(self, values: Row) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                """
                INSERT INTO reservations (id, org, api_key, amount_micros, currency_code, tokens,
                    state, budgets, period_start, expire_time)
                VALUES (%(id)s, %(org)s, %(api_key)s, %(amount_micros)s, %(currency_code)s,
                    %(tokens)s, 1, %(budgets)s, %(period_start)s, %(expire_time)s)
                ON CONFLICT (id) DO NOTHING
                """,
                values,
            )

    async def get_reservation(self, org: str | None, reservation_id: uuid.UUID) -> Row | None:
        async with self.db.connection() as conn:
            if org is None:
                cur = await conn.execute(
                    "SELECT * FROM reservations WHERE id = %s", (reservation_id,)
                )
            else:
                cur = await conn.execute(
                    "SELECT * FROM reservations WHERE id = %s AND org = %s", (reservation_id, org)
                )
            return await cur.fetchone()

    async def close_reservation(
        self, reservation_id: uuid.UUID, state: int, amount: int, tokens: int
    ) -> Row | None:
        """Move an OPEN reservation to `state` (once); returns the row, unchanged when it was
        not open. Settled rows are what a budget's settled spend is summed from."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                """
                UPDATE reservations SET state = %s, settled_amount_micros = %s,
                    settled_tokens = %s, close_time = now()
                WHERE id = %s AND state = 1 RETURNING *
                """,
                (state, amount, tokens, reservation_id),
            )
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute(
                    "SELECT * FROM reservations WHERE id = %s", (reservation_id,)
                )
                row = await cur.fetchone()
            return row

    async def expire_reservations(self, now: dt.datetime) -> int:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "UPDATE reservations SET state = 4, close_time = expire_time "
                "WHERE state = 1 AND expire_time < %s",
                (now,),
            )
            return cur.rowcount
