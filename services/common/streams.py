"""Client-stream intake every service with a client stream shares: the idle limit.

A client stream that stops sending (e.g. an upload that sent only its metadata) must not hold a
server task, a database transaction or a gateway connection open forever: after
CLIENT_STREAM_IDLE_SECONDS without a message it ends with OUT_OF_RANGE, reason
STREAM_IDLE_TIMEOUT, naming the field the client should have kept sending.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from services.common.errors import out_of_range

CLIENT_STREAM_IDLE_SECONDS = 10.0


async def next_message(stream: AsyncIterator[Any], idle_seconds: float, field: str) -> Any | None:
    """The next client message, None when the client half-closed; OUT_OF_RANGE when idle."""
    try:
        return await asyncio.wait_for(stream.__anext__(), idle_seconds)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise out_of_range(
            f"no request message for {idle_seconds:.0f} seconds (idle timeout); "
            "the stream was ended",
            reason="STREAM_IDLE_TIMEOUT",
            violations=[(field, f"send a message at least every {idle_seconds:.0f} s")],
            metadata={"limit": "idle_timeout", "seconds": f"{idle_seconds:.0f}"},
        ) from None


async def idle_limited(
    stream: AsyncIterator[Any], idle_seconds: float, field: str
) -> AsyncIterator[Any]:
    """`stream`, ended with OUT_OF_RANGE when the client sends nothing for idle_seconds."""
    while (message := await next_message(stream, idle_seconds, field)) is not None:
        yield message
