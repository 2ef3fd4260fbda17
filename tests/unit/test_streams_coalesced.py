"""streams.coalesced: text deltas that pile up while the consumer is busy go on as one message,
in order; nothing is merged when the consumer keeps up; a source failure comes after the items
before it; closing the consumer ends the source where it waits (its cleanup runs); with a
linger, the first text goes out at once and later text is gathered, never holding back the end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aimesh.orchestrator.v1 import orchestrator_pb2 as pb

from services.common.streams import BUSY_STREAMS, coalesced, is_text_delta, merge_text_deltas


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


async def test_lingering_sends_the_first_text_at_once_then_gathers_the_rest() -> None:
    items = [pb.GenerateResponse(metadata=pb.GenerationMetadata(model="m")),
             *(delta(f"t{i} ") for i in range(20)),
             pb.GenerateResponse(completion=pb.Completion())]
    out = [e async for e in coalesced(source(items, pause=0.002), merge_text_deltas, 0.05,
                                      is_text_delta)]
    kinds = [e.WhichOneof("event") for e in out]
    assert kinds[0] == "metadata" and kinds[1] == "delta" and kinds[-1] == "completion"
    # The first text went out alone: it did not wait (else the next ones would be in it).
    assert out[1].delta.text == "t0 "
    # 20 deltas, 2 ms apart, 50 ms linger: gathered into a few messages, none lost or reordered.
    assert len(out) < 12
    assert "".join(e.delta.text for e in out if e.HasField("delta")) == "".join(
        f"t{i} " for i in range(20))


async def test_lingering_never_holds_back_the_end_of_the_stream() -> None:
    items = [delta("a"), delta("b"), pb.GenerateResponse(completion=pb.Completion())]
    loop = asyncio.get_running_loop()
    started = loop.time()
    out = [e async for e in coalesced(source(items), merge_text_deltas, 5.0, is_text_delta)]
    assert loop.time() - started < 1.0  # not the 5 s linger: the completion flushes what waits
    assert [e.WhichOneof("event") for e in out][-1] == "completion"
    assert "".join(e.delta.text for e in out if e.HasField("delta")) == "ab"


def _recording(readers: list[asyncio.Task[object] | None]) -> AsyncIterator[pb.GenerateResponse]:
    """metadata, two deltas, a completion; `readers` gets the task reading each."""

    async def items() -> AsyncIterator[pb.GenerateResponse]:
        for item in [pb.GenerateResponse(metadata=pb.GenerationMetadata(model="m")),
                     delta("a "), delta("b "), pb.GenerateResponse(completion=pb.Completion())]:
            readers.append(asyncio.current_task())
            yield item

    return items()


async def test_items_up_to_the_first_text_are_read_in_the_consumers_own_task() -> None:
    """No task switch before the first text (time to first token); read ahead after it."""
    readers: list[asyncio.Task[object] | None] = []
    out = [e async for e in coalesced(_recording(readers), merge_text_deltas,
                                      lingers=is_text_delta)]
    consumer = asyncio.current_task()
    assert readers[:2] == [consumer, consumer]
    assert consumer not in readers[2:]  # the rest by the read-ahead task
    assert [e.WhichOneof("event") for e in out][:2] == ["metadata", "delta"]
    assert "".join(e.delta.text for e in out if e.HasField("delta")) == "a b "


async def test_under_load_every_item_is_read_ahead() -> None:
    """With BUSY_STREAMS coalesced streams in progress in the process, the read-ahead reads
    from the start, as without lingers, so text that piles up before the first message goes
    out merged with it."""
    busy = [coalesced(_held_after_first_text(), merge_text_deltas, lingers=is_text_delta)
            for _ in range(BUSY_STREAMS)]
    for stream in busy:
        assert (await stream.__anext__()).HasField("delta")
    try:
        readers: list[asyncio.Task[object] | None] = []
        out = [e async for e in coalesced(_recording(readers), merge_text_deltas,
                                          lingers=is_text_delta)]
    finally:
        for stream in busy:
            await stream.aclose()
    assert asyncio.current_task() not in readers
    assert "".join(e.delta.text for e in out if e.HasField("delta")) == "a b "
    # Once they are done, the next stream reads its first text here again.
    readers = []
    [e async for e in coalesced(_recording(readers), merge_text_deltas, lingers=is_text_delta)]
    assert readers[:2] == [asyncio.current_task()] * 2


async def _held_after_first_text() -> AsyncIterator[pb.GenerateResponse]:
    yield delta("x")
    await asyncio.sleep(3600)  # a stream in progress
    yield delta("never")


async def test_closing_the_consumer_before_the_first_text_ends_the_source() -> None:
    cleaned = asyncio.Event()

    async def held() -> AsyncIterator[pb.GenerateResponse]:
        try:
            yield pb.GenerateResponse(metadata=pb.GenerationMetadata(model="m"))
            await asyncio.sleep(3600)  # the model works on the first token
            yield delta("never")
        finally:
            cleaned.set()

    stream = coalesced(held(), merge_text_deltas, lingers=is_text_delta)
    assert (await stream.__anext__()).HasField("metadata")
    await stream.aclose()
    assert cleaned.is_set()
