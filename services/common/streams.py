"""Streams every service shares: the idle limit of client streams, and coalescing of server
streams' small messages.

A client stream that stops sending (e.g. an upload that sent only its metadata) must not hold a
server task, a database transaction or a gateway connection open forever: after
CLIENT_STREAM_IDLE_SECONDS without a message it ends with OUT_OF_RANGE, reason
STREAM_IDLE_TIMEOUT, naming the field the client should have kept sending.

A token stream relayed hop by hop pays each hop's per-message cost once per token: `coalesced`
merges the tokens that pile up while a hop is busy sending the previous one, so a loaded mesh
sends fewer, larger messages (and an idle one the same messages, as soon as they come).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, TypeVar

from services.common.errors import out_of_range

CLIENT_STREAM_IDLE_SECONDS = 10.0
# From this many coalesced streams in progress in a process, the first text goes through the
# read-ahead like the rest: under load the first token waits for the queue anyway, and 100
# concurrent chat streams through the gateway measured worse with it read in the consumer's
# task (TTFT p95 +1.5-2 %, interleaved A/B runs at the Orchestrator and at Conversation).
BUSY_STREAMS = 8
_in_progress = 0  # coalesced streams of this process now (one event loop per process)
T = TypeVar("T")


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


async def coalesced(
    source: AsyncIterator[T],
    merge: Callable[[T, T], T | None],
    linger: float = 0.0,
    lingers: Callable[[T], bool] | None = None,
) -> AsyncIterator[T]:
    """`source`'s items in order, read ahead by a task: items that arrived while the consumer was
    busy with the previous one are merged pairwise by `merge` (None: those two stay apart).

    With `lingers`, the items up to the first one for which `lingers(item)` is true (the first
    text) are read in the consumer's own task, before the read-ahead starts: the first text
    reaches the consumer without waiting for another task to be scheduled (time to first token).
    From BUSY_STREAMS coalesced streams in progress in this process the read-ahead starts at
    once, so the first message carries whatever text piled up meanwhile.

    With `linger` (seconds), an item for which `lingers(item)` is true also waits until
    `linger` has passed since the previous such item went out, gathering what comes meanwhile:
    a fast source (a model streaming thousands of tokens per second) then costs every hop after
    this one a message per `linger` instead of one per token. The first such item never waits
    (time to first token), and whatever does not linger (the completion) goes out at once with
    what is pending.

    A failure of `source` is raised after the items before it; closing (or cancelling) this
    generator cancels the read-ahead, which ends `source` where it waits, and waits for that."""
    global _in_progress
    first_here = _in_progress < BUSY_STREAMS
    _in_progress += 1
    items = aiter(source)
    sent_at = float("-inf")
    try:
        if first_here and lingers is not None:
            try:
                while True:
                    try:
                        item = await anext(items)
                    except StopAsyncIteration:
                        return
                    yield item
                    if lingers(item):
                        sent_at = asyncio.get_running_loop().time()  # the linger counts from here
                        break
            except BaseException:
                # Closed (or failed) before the read-ahead: end the source where it stands.
                aclose = getattr(items, "aclose", None)
                if aclose is not None:
                    await aclose()
                raise
        async with aclosing(_read_ahead(items, merge, linger, lingers, sent_at)) as merged:
            async for item in merged:
                yield item
    finally:
        _in_progress -= 1


async def _read_ahead(
    items: AsyncIterator[T],
    merge: Callable[[T, T], T | None],
    linger: float,
    lingers: Callable[[T], bool] | None,
    sent_at: float,
) -> AsyncGenerator[T, None]:
    """coalesced's read-ahead part; `sent_at`: loop time the last lingering item went out."""
    ready: deque[T] = deque()
    wake = asyncio.Event()
    ended: list[BaseException | None] = []  # [None] when exhausted, [error] when it failed
    loop = asyncio.get_running_loop()
    lingering = False  # the consumer waits for the linger to pass, not for items

    async def read_ahead() -> None:
        try:
            async for item in items:
                ready.append(item)
                # A lingering consumer only needs an item that ends the linger (one per token
                # otherwise: a wake-up and a new timer for each, to wait on again).
                if not lingering or lingers is None or not lingers(item):
                    wake.set()
            ended.append(None)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there
            ended.append(exc)
        finally:
            wake.set()

    def holding(sent_at: float) -> float:
        """Seconds the pending items should still wait for more (0: send now)."""
        if not linger or ended or lingers is None or not all(map(lingers, ready)):
            return 0.0
        return sent_at + linger - loop.time()

    reader = asyncio.ensure_future(read_ahead())
    try:
        while True:
            if ready and (hold := holding(sent_at)) > 0:
                wake.clear()
                timer = loop.call_later(hold, wake.set)
                lingering = True
                try:
                    await wake.wait()
                finally:
                    lingering = False
                    timer.cancel()
            elif ready:
                item = ready.popleft()
                while ready and (merged := merge(item, ready[0])) is not None:
                    ready.popleft()
                    item = merged
                # The linger counts from the previous lingering item: the first text after
                # other events (the answer's metadata) goes out at once.
                sent_at = loop.time() if linger and lingers and lingers(item) else float("-inf")
                yield item
            elif ended:
                if ended[0] is not None:
                    raise ended[0]
                return
            else:
                wake.clear()
                await wake.wait()
    finally:
        if not reader.done():
            reader.cancel()
            await asyncio.wait([reader])


def is_text_delta(item: Any) -> bool:
    """`lingers` for coalesced streams of messages with a `delta` text event."""
    return bool(item.HasField("delta"))


def merge_text_deltas(first: Any, second: Any) -> Any | None:
    """`merge` for coalesced streams of messages with a `delta` text event (Orchestrator's
    GenerateResponse as Generate sends it and as Conversation relays it): two text deltas go
    on as one; anything else stays apart."""
    if first.HasField("delta") and second.HasField("delta"):
        return type(first)(delta=type(first.delta)(text=first.delta.text + second.delta.text))
    return None
