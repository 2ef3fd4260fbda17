"""OpenAI-compatible and Anthropic adapters, routing, fallback and circuit breakers.

Hosted APIs cannot be reached from here, so these tests run the adapters against a LOCAL HTTP
server that replays each provider's documented streaming wire format: OpenAI chat-completions
`data: {"object": "chat.completion.chunk", ...}` events ending with `data: [DONE]`, and
Anthropic Messages `event: message_start` / `content_block_start` / `ping` /
`content_block_delta` / `content_block_stop` / `message_delta` / `message_stop`, plus their
error bodies (`{"error": {...}}`, `{"type": "error", "error": {...}}`), 429 rate-limit replies
with retry-after, in-stream error events, malformed JSON and truncated streams. The scenario
is chosen by the requested model id.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from services.common.config import Settings
from services.orchestrator.catalog import Deployment, ModelEntry
from services.orchestrator.providers import Finish, Piece, ProviderError, ProviderRequest
from services.orchestrator.providers.anthropic import AnthropicProvider
from services.orchestrator.providers.http import make_client
from services.orchestrator.providers.openai import OpenAIProvider
from services.orchestrator.routing import AllProvidersFailed, CircuitBreaker, Router, Served, Started
from tests.integration.chat.replay_server import ANSWER, Replay, start_replay


@pytest.fixture(scope="module")
async def replay() -> AsyncIterator[tuple[Replay, str]]:
    server, runner, base = await start_replay()
    yield server, base
    await runner.cleanup()


def _settings(base: str) -> Settings:
    return Settings.from_env({"AIMESH_OPENAI_BASE_URL": f"{base}/v1", "AIMESH_OPENAI_API_KEY": "sk-test",
                              "AIMESH_ANTHROPIC_BASE_URL": base, "AIMESH_ANTHROPIC_API_KEY": "ak-test"})


def _request() -> ProviderRequest:
    return ProviderRequest(messages=[("system", "Be brief."), ("user", "What colour is the sky?")],
                           max_output_tokens=50, temperature=0.0, stop=["\n\n"])


async def _collect(stream: AsyncIterator[Piece | Finish | Started]) -> tuple[str, Finish | None]:
    text, finish = [], None
    async for item in stream:
        if isinstance(item, Piece):
            text.append(item.text)
        elif isinstance(item, Finish):
            finish = item
    return "".join(text), finish


@pytest.fixture
async def providers(replay: tuple[Replay, str]) -> AsyncIterator[tuple[OpenAIProvider, AnthropicProvider]]:
    settings = _settings(replay[1])
    client = make_client()
    yield OpenAIProvider(settings, client), AnthropicProvider(settings, client)
    await client.aclose()


async def test_openai_stream_wire_format(replay: tuple[Replay, str], providers: tuple[OpenAIProvider, AnthropicProvider]) -> None:
    server, _ = replay
    text, finish = await _collect(providers[0].stream(Deployment("openai", "ok"), _request()))
    assert text == "".join(ANSWER)
    assert finish == Finish("stop", prompt_tokens=11, completion_tokens=4)
    sent, headers = server.requests[-1], server.headers[-1]
    assert headers["Authorization"] == "Bearer sk-test"
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.0 and sent["stop"] == ["\n\n"]


async def test_anthropic_stream_wire_format(replay: tuple[Replay, str], providers: tuple[OpenAIProvider, AnthropicProvider]) -> None:
    server, _ = replay
    text, finish = await _collect(providers[1].stream(Deployment("anthropic", "length"), _request()))
    assert text == "".join(ANSWER)
    assert finish == Finish("length", prompt_tokens=25, completion_tokens=4)
    sent, headers = server.requests[-1], server.headers[-1]
    assert headers["x-api-key"] == "ak-test" and headers["anthropic-version"] == "2023-06-01"
    assert sent["system"] == "Be brief." and sent["messages"] == [{"role": "user", "content": "What colour is the sky?"}]
    assert sent["stop_sequences"] == ["\n\n"] and sent["max_tokens"] == 50


@pytest.mark.parametrize(
    "which,scenario,code,needle",
    [
        (0, "rate-limited", grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limit_exceeded"),
        (0, "overloaded", grpc.StatusCode.UNAVAILABLE, "overloaded"),
        (0, "truncated", grpc.StatusCode.UNAVAILABLE, "truncated"),
        (0, "malformed", grpc.StatusCode.UNAVAILABLE, "malformed"),
        (0, "error-mid-stream", grpc.StatusCode.UNAVAILABLE, "upstream model crashed"),
        (0, "die-before-first", grpc.StatusCode.UNAVAILABLE, "openai"),
        (1, "rate-limited", grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limit_error"),
        (1, "overloaded", grpc.StatusCode.UNAVAILABLE, "overloaded_error"),
        (1, "error-event", grpc.StatusCode.UNAVAILABLE, "overloaded_error"),
        (1, "truncated", grpc.StatusCode.UNAVAILABLE, "truncated"),
        (1, "malformed", grpc.StatusCode.UNAVAILABLE, "malformed"),
    ],
)
async def test_provider_failures_are_named(
    providers: tuple[OpenAIProvider, AnthropicProvider], which: int, scenario: str, code: grpc.StatusCode, needle: str
) -> None:
    provider = providers[which]
    with pytest.raises(ProviderError) as caught:
        await _collect(provider.stream(Deployment(provider.name, scenario), _request()))
    assert caught.value.code == code
    assert needle in caught.value.message
    if scenario == "rate-limited":
        assert caught.value.retry_after_seconds == (7.0 if which == 0 else 3.0)


def _model(*deployments: Deployment) -> ModelEntry:
    return ModelEntry(name="models/test", display_name="t", description="", context_window_tokens=1000,
                      max_output_tokens=100, prompt_price_micros_per_million_tokens=0,
                      completion_price_micros_per_million_tokens=0, currency_code="USD",
                      capabilities=("CHAT", "STREAMING"), deployments=deployments)


def _router(providers: tuple[OpenAIProvider, AnthropicProvider], threshold: int = 3, open_seconds: float = 30,
            first_token: float = 5) -> Router:
    return Router({"openai": providers[0], "anthropic": providers[1]}, threshold, open_seconds, first_token,
                  rng=random.Random(7))


async def test_fallback_before_first_token_has_no_duplicates(providers: tuple[OpenAIProvider, AnthropicProvider]) -> None:
    model = _model(Deployment("openai", "die-before-first", priority=0), Deployment("anthropic", "ok", priority=1))
    served: list[Served] = []
    text, finish = await _collect(_router(providers).generate([model], lambda m: _request(), served))
    assert text == "".join(ANSWER)  # exactly once: nothing of the dead primary leaked through
    assert finish is not None and finish.reason == "stop"
    attempts = served[0].attempts
    assert [(a.provider, a.code) for a in attempts] == [
        ("openai", grpc.StatusCode.UNAVAILABLE), ("anthropic", grpc.StatusCode.OK)]


async def test_first_token_timeout_falls_back(providers: tuple[OpenAIProvider, AnthropicProvider]) -> None:
    model = _model(Deployment("openai", "slow-first", priority=0), Deployment("openai", "ok", priority=1))
    served: list[Served] = []
    text, _ = await _collect(_router(providers, first_token=0.5).generate([model], lambda m: _request(), served))
    assert text == "".join(ANSWER)
    assert served[0].attempts[0].code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_failure_after_first_token_is_not_retried(providers: tuple[OpenAIProvider, AnthropicProvider]) -> None:
    model = _model(Deployment("openai", "truncated", priority=0), Deployment("anthropic", "ok", priority=1))
    pieces: list[str] = []
    started: list[str] = []
    with pytest.raises(ProviderError):
        async for item in _router(providers).generate([model], lambda m: _request(), []):
            if isinstance(item, Started):  # the announcement of the deployment that serves
                started.append(item.deployment.deployment)
                continue
            assert isinstance(item, Piece)
            pieces.append(item.text)
    assert "".join(pieces) == "".join(ANSWER[:2])  # the fallback never started: no duplicated text
    assert started == ["truncated"]


async def test_all_failed_names_every_provider(providers: tuple[OpenAIProvider, AnthropicProvider]) -> None:
    model = _model(Deployment("openai", "overloaded"), Deployment("anthropic", "rate-limited", priority=1))
    with pytest.raises(AllProvidersFailed) as caught:
        await _collect(_router(providers).generate([model], lambda m: _request(), []))
    assert "openai/overloaded" in str(caught.value) and "anthropic/rate-limited" in str(caught.value)


async def test_circuit_opens_after_failures_and_recovers(
    replay: tuple[Replay, str], providers: tuple[OpenAIProvider, AnthropicProvider]
) -> None:
    server, _ = replay
    router = _router(providers, threshold=2, open_seconds=0.5)
    model = _model(Deployment("openai", "flaky"))
    server.fail_next["flaky"] = 2
    count_before = len(server.requests)
    for _ in range(2):
        with pytest.raises(AllProvidersFailed):
            await _collect(router.generate([model], lambda m: _request(), []))
    # Open: the deployment is skipped without a request reaching the server.
    with pytest.raises(AllProvidersFailed) as caught:
        await _collect(router.generate([model], lambda m: _request(), []))
    assert caught.value.attempts[0].message == "circuit open"
    assert len(server.requests) == count_before + 2
    await asyncio.sleep(0.6)
    # Half-open: one probe goes through; it succeeds, so the circuit closes.
    text, _ = await _collect(router.generate([model], lambda m: _request(), []))
    assert text == "".join(ANSWER)
    assert router.breaker(model.deployments[0]).state == CircuitBreaker.CLOSED


def test_half_open_allows_one_probe_and_failure_reopens() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=1, open_seconds=10, clock=lambda: now[0])
    breaker.failure()
    assert not breaker.allow()
    now[0] = 10.0
    assert breaker.allow() and not breaker.allow()  # exactly one probe
    breaker.failure()
    assert breaker.state == CircuitBreaker.OPEN and not breaker.allow()


async def test_weighted_routing_spreads_load(providers: tuple[OpenAIProvider, AnthropicProvider]) -> None:
    from services.orchestrator.routing import plan

    model = _model(Deployment("openai", "a", weight=3), Deployment("openai", "b", weight=1))
    rng = random.Random(1)
    firsts = [plan([model], rng)[0][1].deployment for _ in range(2000)]
    share = firsts.count("a") / len(firsts)
    assert 0.68 < share < 0.82  # weight 3:1 -> 75 %


async def test_closing_the_stream_cancels_upstream(
    replay: tuple[Replay, str], providers: tuple[OpenAIProvider, AnthropicProvider]
) -> None:
    server, _ = replay
    server.disconnected.clear()
    stream = _router(providers).generate([_model(Deployment("openai", "endless"))], lambda m: _request(), [])
    got = 0
    async for _ in stream:
        got += 1
        if got == 3:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(server.disconnected.wait(), 5)


class _FakeTriton:
    """Stands in for services.common.triton.TritonClient: records the request, replays responses
    shaped like Triton's vLLM backend (decoupled, one `text_output` piece per response)."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.calls: list[tuple[str, dict]] = []  # type: ignore[type-arg]

    async def stream(self, model: str, inputs: dict, outputs: object = None, *, timeout: float | None = None,  # type: ignore[type-arg]
                     request_id: str | None = None, on_sent: Callable[[], None] | None = None) -> AsyncIterator[object]:
        import numpy as np

        from services.common.triton import StreamResponse

        self.calls.append((model, inputs))
        if on_sent is not None:
            on_sent()  # as the real client does once the request is written
        for i, piece in enumerate(self.pieces):
            yield StreamResponse("r", {"text_output": np.array([piece.encode()], dtype=object)},
                                 final=i == len(self.pieces) - 1)


async def test_triton_llm_deployment_uses_the_vllm_backend_interface() -> None:
    import json as json_mod

    from services.orchestrator.providers.triton import TritonProvider

    fake = _FakeTriton(["Hel", "lo", " there"])
    provider = TritonProvider(fake)  # type: ignore[arg-type]
    request = ProviderRequest(messages=[("system", "Be brief."), ("user", "Hi")], max_output_tokens=10,
                              temperature=0.0, stop=["\n"])
    reported: list[bool] = []
    request.on_sent = lambda: reported.append(True)
    text, finish = await _collect(provider.stream(Deployment("triton", "llama_vllm"), request))
    assert text == "Hello there" and finish == Finish("stop")
    assert reported == [True]  # the router's announcement hook reaches the Triton client
    model, inputs = fake.calls[0]
    assert model == "llama_vllm"
    prompt = inputs["text_input"][0].decode()
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>") and prompt.endswith("<|im_start|>assistant\n")
    assert bool(inputs["stream"][0]) and bool(inputs["exclude_input_in_output"][0])
    assert json_mod.loads(inputs["sampling_parameters"][0]) == {"max_tokens": 10, "temperature": 0.0, "stop": ["\n"]}
