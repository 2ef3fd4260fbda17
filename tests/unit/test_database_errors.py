"""Database failures as clients see them (issue 12 item 10): unreachable → UNAVAILABLE,
unstorable value → INVALID_ARGUMENT, and an idempotent read that met a broken connection runs
once more while a write does not."""

from __future__ import annotations

from typing import Any

import grpc
import psycopg
import pytest
from psycopg_pool import PoolTimeout

from services.common import server
from services.common.db import database_error, is_broken_connection


def test_database_errors_map_to_client_statuses() -> None:
    for exc in (psycopg.OperationalError("server closed the connection unexpectedly"),
                PoolTimeout("couldn't get a connection after 3.00 sec")):
        error = database_error(exc)
        assert error is not None and error.code == grpc.StatusCode.UNAVAILABLE
        assert error.reason == "DATABASE_UNAVAILABLE" and "Error" not in error.message
    stored = database_error(psycopg.errors.NumericValueOutOfRange("integer out of range"))
    assert stored is not None and stored.code == grpc.StatusCode.INVALID_ARGUMENT
    assert database_error(ValueError("bug")) is None
    assert is_broken_connection(psycopg.OperationalError("x"))
    assert not is_broken_connection(PoolTimeout("waited"))


class _Context:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def time_remaining(self) -> None:
        return None

    async def abort(self, code: grpc.StatusCode, message: str, trailing_metadata: Any = ()) -> None:
        self.aborted = (code, message)
        raise RuntimeError("aborted")


@pytest.mark.parametrize("retry_once, expected_calls", [(True, 2), (False, 1)])
async def test_reads_retry_once_after_a_broken_connection(retry_once: bool, expected_calls: int) -> None:
    calls = []

    async def behavior(request: Any, context: Any) -> str:
        calls.append(request)
        if len(calls) == 1:
            raise psycopg.OperationalError("terminating connection due to administrator command")
        return "answer"

    wrapped = server._wrap_unary(behavior, "/aimesh.test.v1.T/Get", retry_once)
    context = _Context()
    try:
        result = await wrapped(None, context)
    except RuntimeError:
        result = None
    assert len(calls) == expected_calls
    if retry_once:
        assert result == "answer" and context.aborted is None
    else:
        assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.UNAVAILABLE
