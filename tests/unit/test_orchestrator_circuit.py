"""The circuit breaker counts only the deployment's own failures: client errors from one
organization's requests never open it for everyone (issue 12 item 3)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from services.orchestrator.catalog import Deployment, ModelEntry
from services.orchestrator.providers import Finish, Piece, ProviderError, ProviderRequest
from services.orchestrator.routing import AllProvidersFailed, Router

DEPLOYMENT = Deployment(provider="fake", deployment="d1")
MODEL = ModelEntry(name="models/m", display_name="m", description="", context_window_tokens=100,
                   max_output_tokens=10, prompt_price_micros_per_million_tokens=0,
                   completion_price_micros_per_million_tokens=0, currency_code="USD",
                   capabilities=("CHAT",), deployments=(DEPLOYMENT,))
THRESHOLD = 2


class FakeProvider:
    """Refuses requests whose last message is "bad" with `code`; answers the others."""

    name = "fake"

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    async def stream(self, deployment: Deployment, request: ProviderRequest) -> AsyncIterator[Piece | Finish]:
        if request.messages[-1][1] == "bad":
            raise ProviderError("refused", self.code)
        yield Piece("ok")
        yield Finish("stop")

    async def close(self) -> None:
        return None


async def _generate(router: Router, text: str) -> list[Piece | Finish]:
    request = ProviderRequest(messages=[("user", text)], max_output_tokens=10)
    return [item async for item in router.generate([MODEL], lambda _m: request, [])]


@pytest.mark.parametrize("code", [
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OUT_OF_RANGE,
])
async def test_client_errors_never_open_the_circuit(code: grpc.StatusCode) -> None:
    router = Router({"fake": FakeProvider(code)}, THRESHOLD, open_seconds=60, first_token_seconds=5)
    for _ in range(THRESHOLD * 3):  # org P's bad requests
        with pytest.raises(AllProvidersFailed) as caught:
            await _generate(router, "bad")
        assert caught.value.attempts[-1].code == code
    items = await _generate(router, "good")  # org V's valid request still served
    assert isinstance(items[-1], Finish)


async def test_provider_failures_still_open_it() -> None:
    router = Router({"fake": FakeProvider(grpc.StatusCode.UNAVAILABLE)}, THRESHOLD,
                    open_seconds=60, first_token_seconds=5)
    for _ in range(THRESHOLD):
        with pytest.raises(AllProvidersFailed):
            await _generate(router, "bad")
    with pytest.raises(AllProvidersFailed) as caught:
        await _generate(router, "good")
    assert caught.value.attempts[-1].message == "circuit open"
