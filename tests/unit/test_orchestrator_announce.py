"""When the router announces the deployment that serves (`Started`, from which the Orchestrator
sends Generate's metadata): the last deployment of the plan once its request is sent, before its
first piece (issue 15, chat TTFT: the metadata travels while the model works); any other only at
its first piece, since a fallback could still follow it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from services.orchestrator.catalog import Deployment, ModelEntry
from services.orchestrator.providers import Finish, Piece, ProviderError, ProviderRequest
from services.orchestrator.routing import AllProvidersFailed, Router, Served, Started

PRIMARY = Deployment(provider="fake", deployment="primary", priority=0)
BACKUP = Deployment(provider="fake", deployment="backup", priority=1)


def _model(*deployments: Deployment) -> ModelEntry:
    return ModelEntry(name="models/m", display_name="m", description="", context_window_tokens=100,
                      max_output_tokens=10, prompt_price_micros_per_million_tokens=0,
                      completion_price_micros_per_million_tokens=0, currency_code="USD",
                      capabilities=("CHAT",), deployments=deployments)


class HeldProvider:
    """Reports each request sent, then holds it until `release` is set; then answers, or fails
    before any output for deployments in `failing`."""

    name = "fake"

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.failing = failing
        self.release = asyncio.Event()
        self.sent = asyncio.Event()
        self.closed: list[str] = []

    async def stream(self, deployment: Deployment, request: ProviderRequest) -> AsyncIterator[Piece | Finish]:
        try:
            request.sent()
            self.sent.set()
            await self.release.wait()
            if deployment.deployment in self.failing:
                raise ProviderError("died before the first token")
            yield Piece("ok")
            yield Finish("stop")
        finally:
            self.closed.append(deployment.deployment)

    async def close(self) -> None:
        return None


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _router(provider: HeldProvider, threshold: int = 5) -> Router:
    return Router({"fake": provider}, threshold, open_seconds=60, first_token_seconds=5)


async def _collect(router: Router, model: ModelEntry, items: list[object], served: list[Served],
                   early: bool = True) -> None:
    request = ProviderRequest(messages=[("user", "hi")], max_output_tokens=10)
    async for item in router.generate([model], lambda _m: request, served, early):
        items.append(item)


async def test_last_deployment_is_announced_once_sent_before_its_first_piece() -> None:
    provider = HeldProvider()
    items: list[object] = []
    served: list[Served] = []
    task = asyncio.ensure_future(_collect(_router(provider), _model(PRIMARY), items, served))
    await provider.sent.wait()
    await _settle()
    assert items == [Started(_model(PRIMARY), PRIMARY)]  # while the provider holds its answer
    assert served == []  # nothing produced yet: nothing to meter
    provider.release.set()
    await task
    assert items[1:] == [Piece("ok"), Finish("stop")]
    assert [s.deployment for s in served] == [PRIMARY]


async def test_without_early_announcement_it_comes_with_the_first_piece() -> None:
    provider = HeldProvider()
    items: list[object] = []
    task = asyncio.ensure_future(_collect(_router(provider), _model(PRIMARY), items, [], early=False))
    await provider.sent.wait()
    await _settle()
    assert items == []
    provider.release.set()
    await task
    assert items == [Started(_model(PRIMARY), PRIMARY), Piece("ok"), Finish("stop")]


async def test_a_deployment_with_a_fallback_after_it_is_announced_only_at_output() -> None:
    provider = HeldProvider()
    model = _model(PRIMARY, BACKUP)
    items: list[object] = []
    task = asyncio.ensure_future(_collect(_router(provider), model, items, []))
    await provider.sent.wait()
    await _settle()
    assert items == []  # the primary could still fail and fall back
    provider.release.set()
    await task
    assert items == [Started(model, PRIMARY), Piece("ok"), Finish("stop")]


async def test_fallback_announces_the_deployment_that_serves() -> None:
    provider = HeldProvider(failing=("primary",))
    provider.release.set()
    model = _model(PRIMARY, BACKUP)
    items: list[object] = []
    served: list[Served] = []
    await _collect(_router(provider), model, items, served)
    assert items == [Started(model, BACKUP), Piece("ok"), Finish("stop")]
    assert [a.deployment for a in served[0].attempts] == ["primary", "backup"]


async def test_last_deployment_failing_after_its_announcement_fails_the_generation() -> None:
    provider = HeldProvider(failing=("primary",))
    items: list[object] = []
    served: list[Served] = []
    task = asyncio.ensure_future(_collect(_router(provider), _model(PRIMARY), items, served))
    await provider.sent.wait()
    await _settle()
    provider.release.set()
    with pytest.raises(AllProvidersFailed) as caught:
        await task
    assert items == [Started(_model(PRIMARY), PRIMARY)]
    assert served == []  # the pipeline meters nothing for it
    assert [(a.deployment, a.code) for a in caught.value.attempts] == [("primary", grpc.StatusCode.UNAVAILABLE)]


async def test_an_open_circuit_on_the_last_deployment_announces_nothing() -> None:
    provider = HeldProvider(failing=("primary",))
    provider.release.set()
    router = _router(provider, threshold=1)
    with pytest.raises(AllProvidersFailed):
        await _collect(router, _model(PRIMARY), [], [])
    items: list[object] = []
    with pytest.raises(AllProvidersFailed) as caught:
        await _collect(router, _model(PRIMARY), items, [])
    assert items == [] and caught.value.attempts[-1].message == "circuit open"


async def test_closing_after_the_announcement_closes_the_provider_stream() -> None:
    provider = HeldProvider()
    router = _router(provider, threshold=1)
    request = ProviderRequest(messages=[("user", "hi")], max_output_tokens=10)
    stream = router.generate([_model(PRIMARY)], lambda _m: request, [])
    assert isinstance(await stream.__anext__(), Started)
    await stream.aclose()  # the caller went away while the model works
    assert provider.closed == ["primary"]
    # No verdict on the deployment: its circuit stays closed.
    assert router.breaker(PRIMARY).state == router.breaker(PRIMARY).CLOSED
