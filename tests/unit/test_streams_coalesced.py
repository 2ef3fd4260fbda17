"""streams.coalesced: text deltas that pile up while the consumer is busy go on as one message,
in order; nothing is merged when the consumer keeps up; a source failure comes after the items
before it; closing the consumer ends the source where it waits (its cleanup runs)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aimesh.orchestrator.v1 import orchestrator_pb2 as pb

from services.common.streams import coalesced, merge_text_deltas


def delta(text: str) -> pb.GenerateResponse:
    return pb.GenerateResponse(delta=pb.TextDelta(text=text))


async def source(items: list[pb.GenerateResponse], pause: float = 0.0,
                 fail: Exception | None = None) -> AsyncIterator[pb.GenerateResponse]:
    for item in items:
        if pause:
            await asyncio.sleep(pause)
        yield item
    if fail is not None:
        raise fail


async def test_a_busy_consumer_gets_merged_deltas_in_order() -> None:
    items = [pb.GenerateResponse(metadata=pb.GenerationMetadata(model="m")),
             *(delta(f"t{i} ") for i in range(10)),
             pb.GenerateResponse(completion=pb.Completion())]
    out = []
    async for event in coalesced(source(items), merge_text_deltas):
        out.append(event)
        await asyncio.sleep(0.01)  # busy sending: everything else arrives meanwhile
    kinds = [e.WhichOneof("event") for e in out]
    assert kinds[0] == "metadata" and kinds[-1] == "completion"
    assert len(out) < len(items)
    assert "".join(e.delta.text for e in out if e.HasField("delta")) == "".join(
        f"t{i} " for i in range(10))


async def test_a_consumer_that_keeps_up_gets_every_message() -> None:
    items = [delta(str(i)) for i in range(5)]
    out = [e async for e in coalesced(source(items, pause=0.005), merge_text_deltas)]
    assert [e.delta.text for e in out] == ["0", "1", "2", "3", "4"]


async def test_a_failure_comes_after_the_items_before_it() -> None:
    out = []
    with pytest.raises(RuntimeError, match="provider"):
        async for event in coalesced(source([delta("a"), delta("b")], fail=RuntimeError("provider")),
                                     merge_text_deltas):
            out.append(event.delta.text)
    assert "".join(out) == "ab"


async def test_closing_the_consumer_ends_the_source() -> None:
    cleaned = asyncio.Event()

    async def endless() -> AsyncIterator[pb.GenerateResponse]:
        try:
            while True:
                await asyncio.sleep(0.001)
                yield delta("x")
        finally:
            cleaned.set()

    stream = coalesced(endless(), merge_text_deltas)
    await stream.__anext__()
    await stream.aclose()
    assert cleaned.is_set()
