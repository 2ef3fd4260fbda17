"""Server-sent events over an httpx response (the WHATWG event-stream format both hosted
providers use): `event:`/`data:` fields, events end at a blank line, `:` lines are comments."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class SSEEvent:
    event: str
    data: str


async def iter_sse(response: httpx.Response) -> AsyncIterator[SSEEvent]:
    event = ""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data or event:
                yield SSEEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    # A stream that ends without the final blank line still delivers its last event.
    if data or event:
        yield SSEEvent(event or "message", "\n".join(data))
