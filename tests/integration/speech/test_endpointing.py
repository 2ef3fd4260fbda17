"""Endpointing per stream, through the gateway: the silence that ends an utterance
(EndpointingConfig.silence_duration, default 500 ms) and speech_start_timeout.

Offsets are positions in the audio, so these checks are exact whatever the machine's speed; the
wall-clock end of speech -> final latency at several settings is measured by bench.speech.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
from aimesh.speech.v1 import speech_pb2

from tests.integration.speech.conftest import RATE, Speech, finals, streaming_config
from tests.support.speech import SENTENCES

FRAME = 0.03  # the voice activity classifier's frame


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


async def run(
    speech: Speech, pcm: np.ndarray, endpointing: speech_pb2.EndpointingConfig | None
) -> list[speech_pb2.StreamingRecognizeResponse]:
    config = streaming_config()
    if endpointing is not None:
        config.endpointing.CopyFrom(endpointing)

    async def requests() -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
        yield speech_pb2.StreamingRecognizeRequest(streaming_config=config)
        data = pcm.tobytes()
        for i in range(0, len(data), 3200):
            yield speech_pb2.StreamingRecognizeRequest(audio_content=data[i : i + 3200])

    return [
        r
        async for r in speech.stub.StreamingRecognize(
            requests(), metadata=speech.metadata, timeout=120
        )
    ]


def events(responses: list[speech_pb2.StreamingRecognizeResponse], kind: int) -> list[float]:
    return [
        r.speech_event_offset.ToNanoseconds() / 1e9
        for r in responses
        if r.speech_event_type == kind
    ]


def endpointing(silence_ms: int) -> speech_pb2.EndpointingConfig:
    config = speech_pb2.EndpointingConfig()
    config.silence_duration.FromMilliseconds(silence_ms)
    return config


@pytest.mark.parametrize(("silence_ms", "utterances_expected"), [(300, 2), (900, 1)])
async def test_the_silence_duration_decides_where_utterances_end(
    gateway_speech: Speech,
    utterances: dict[str, np.ndarray],
    silence_ms: int,
    utterances_expected: int,
) -> None:
    # Two sentences 600 ms apart: two utterances at 300 ms of silence, one at 900 ms.
    first, second = utterances[SENTENCES[0]], utterances[SENTENCES[3]]
    pcm = np.concatenate([silence(0.4), first, silence(0.6), second, silence(1.5)])
    responses = await run(gateway_speech, pcm, endpointing(silence_ms))
    ends = events(responses, speech_pb2.SPEECH_EVENT_TYPE_SPEECH_END)
    closes = events(responses, speech_pb2.SPEECH_EVENT_TYPE_END_OF_UTTERANCE)
    results = [r for r in finals(responses) if r.alternatives[0].transcript]
    assert len(results) == utterances_expected, [r.alternatives[0].transcript for r in results]
    assert len(closes) == len(ends) == utterances_expected
    # Each utterance is closed exactly the configured silence after its speech ended (within
    # one classifier frame), and its final follows its END_OF_UTTERANCE.
    for end, close in zip(ends, closes):
        assert close - end == pytest.approx(silence_ms / 1000, abs=FRAME + 0.001)
    order = [
        "eou" if r.speech_event_type == speech_pb2.SPEECH_EVENT_TYPE_END_OF_UTTERANCE else "final"
        for r in responses
        if r.speech_event_type == speech_pb2.SPEECH_EVENT_TYPE_END_OF_UTTERANCE
        or any(x.is_final and x.alternatives[0].transcript for x in r.results)
    ]
    assert order == ["eou", "final"] * utterances_expected


async def test_default_silence_is_500_ms(
    gateway_speech: Speech, utterances: dict[str, np.ndarray]
) -> None:
    pcm = np.concatenate([silence(0.3), utterances[SENTENCES[1]], silence(1.2)])
    responses = await run(gateway_speech, pcm, None)
    ends = events(responses, speech_pb2.SPEECH_EVENT_TYPE_SPEECH_END)
    closes = events(responses, speech_pb2.SPEECH_EVENT_TYPE_END_OF_UTTERANCE)
    assert len(ends) == len(closes) == 1
    assert closes[0] - ends[0] == pytest.approx(0.5, abs=FRAME + 0.001)


async def test_a_pause_the_caller_speaks_through_stays_one_utterance(
    gateway_speech: Speech, utterances: dict[str, np.ndarray]
) -> None:
    # ~400 ms of pause (with the voice's own trailing silence) at the default 500 ms: one
    # utterance, whose one final has both phrases' words in order and in time.
    first, second = utterances[SENTENCES[3]], utterances[SENTENCES[1]]
    pcm = np.concatenate([silence(0.3), first, silence(0.3), second, silence(1.2)])
    responses = await run(gateway_speech, pcm, None)
    assert len(events(responses, speech_pb2.SPEECH_EVENT_TYPE_END_OF_UTTERANCE)) == 1
    results = [r for r in finals(responses) if r.alternatives[0].transcript]
    assert len(results) == 1, [r.alternatives[0].transcript for r in results]
    words = list(results[0].alternatives[0].words)
    heard = [w.word for w in words]
    assert "meeting" in heard and "weather" in heard, heard
    assert heard.index("meeting") < heard.index("weather")
    second_starts = 0.3 + (first.size / RATE) + 0.3
    weather = words[heard.index("weather")]
    assert weather.start_offset.ToNanoseconds() / 1e9 >= second_starts - 0.1
    starts = [w.start_offset.ToNanoseconds() for w in words]
    assert starts == sorted(starts)


async def test_speech_start_timeout_ends_a_silent_stream(gateway_speech: Speech) -> None:
    config = speech_pb2.EndpointingConfig()
    config.speech_start_timeout.FromMilliseconds(1000)
    noise = np.random.default_rng(3).normal(0, 20, 3 * RATE).astype(np.int16)
    responses = await run(gateway_speech, noise, config)
    timeouts = events(responses, speech_pb2.SPEECH_EVENT_TYPE_SPEECH_START_TIMEOUT)
    assert len(timeouts) == 1 and timeouts[0] == pytest.approx(1.0, abs=0.11)
    assert not events(responses, speech_pb2.SPEECH_EVENT_TYPE_SPEECH_BEGIN)


async def test_endpointing_limits_are_checked(gateway_speech: Speech) -> None:
    import grpc

    config = speech_pb2.EndpointingConfig()
    config.silence_duration.FromMilliseconds(50)
    config.speech_start_timeout.FromMilliseconds(100)
    streaming = streaming_config()
    streaming.endpointing.CopyFrom(config)
    # The configuration alone is refused, so only it is sent: audio written while the refusal
    # is on its way fails in grpc.aio's sender, which then reports INTERNAL ("Failed
    # execute_batch") as the call's status in place of the server's (seen once in CI).
    call = gateway_speech.stub.StreamingRecognize(metadata=gateway_speech.metadata, timeout=60)
    await call.write(speech_pb2.StreamingRecognizeRequest(streaming_config=streaming))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "speech_start_timeout" in (info.value.details() or "")
