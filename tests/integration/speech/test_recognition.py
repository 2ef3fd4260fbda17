"""StreamingRecognize and Recognize on the real Triton ASR model: accuracy, event order, timings,
restarts with audio_offset, config errors before audio, limits, and concurrent streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from aimesh.speech.v1 import speech_pb2

from services.speech.codecs import encode
from tests.integration.speech.conftest import (
    RATE,
    Speech,
    finals,
    rpc_error_details,
    stream_recognize,
    streaming_config,
    with_pauses,
)
from tests.support.speech import SENTENCES, word_error_rate

# pocketsphinx on synthetic speech is far from perfect; this bound still fails on garbage,
# a wrong sample rate, truncated utterances or transcripts of another stream.
MAX_MEAN_WER = 0.5


async def _recognize(
    speech: Speech, content: bytes, **config: object
) -> speech_pb2.RecognizeResponse:
    request = speech_pb2.RecognizeRequest(
        config=speech_pb2.RecognitionConfig(language_code="en-US", **config),  # type: ignore[arg-type]
        content=content,
    )
    return await speech.stub.Recognize(request, metadata=speech.metadata, timeout=60)


async def test_recognize_wav_has_bounded_wer(
    gateway_speech: Speech, utterances: dict[str, np.ndarray]
) -> None:
    # Through Envoy: unary gRPC, bearer token, WAV in.
    wers = []
    for sentence in SENTENCES:
        reply = await _recognize(
            gateway_speech,
            encode(with_pauses(utterances[sentence], gap=0.5), RATE, "WAV"),
            encoding=speech_pb2.AUDIO_ENCODING_WAV,
            enable_word_time_offsets=True,
        )
        hypothesis = " ".join(r.alternatives[0].transcript for r in reply.results)
        wers.append(word_error_rate(sentence, hypothesis))
        assert reply.total_audio_processed.ToNanoseconds() > 0
    assert sum(wers) / len(wers) <= MAX_MEAN_WER, wers


async def test_streaming_interim_precedes_final_and_words_are_monotonic(
    gateway_speech: Speech, utterances: dict[str, np.ndarray]
) -> None:
    first, second = SENTENCES[2], SENTENCES[3]
    responses = await stream_recognize(
        gateway_speech,
        with_pauses(utterances[first], utterances[second]),
        realtime=1.0,
        interim_results=True,
    )
    kinds = []
    for resp in responses:
        for result in resp.results:
            kinds.append(("final" if result.is_final else "interim", result.utterance_index))
        if resp.speech_event_type:
            kinds.append(
                (speech_pb2.SpeechEventType.Name(resp.speech_event_type), resp.utterance_index)
            )
    for index in (0, 1):
        mine = [k for k, u in kinds if u == index]
        assert mine[0] == "SPEECH_EVENT_TYPE_SPEECH_BEGIN", kinds
        assert "interim" in mine and mine.index("interim") < mine.index("final"), kinds
        assert mine.index("SPEECH_EVENT_TYPE_END_OF_UTTERANCE") < mine.index("final"), mine
        assert mine.count("final") == 1
    results = finals(responses)
    assert [r.utterance_index for r in results] == [0, 1]
    # Each final is its own utterance (accuracy itself: the mean-WER test above).
    one, two = (r.alternatives[0].transcript for r in results)
    assert word_error_rate(first, one) < word_error_rate(second, one), one
    assert word_error_rate(second, two) < word_error_rate(first, two), two
    previous_end = 0
    for result in results:
        assert 0 <= result.alternatives[0].confidence <= 1
        for word in result.alternatives[0].words:
            start, end = word.start_offset.ToNanoseconds(), word.end_offset.ToNanoseconds()
            assert previous_end <= start <= end, (word.word, start, end, previous_end)
            previous_end = end
        assert result.result_end_offset.ToNanoseconds() >= previous_end
    # total_audio_processed only grows and ends at the whole audio.
    totals = [r.total_audio_processed.ToNanoseconds() for r in responses]
    assert totals == sorted(totals)


async def test_restart_with_audio_offset_continues_timestamps(
    speech: Speech, utterances: dict[str, np.ndarray]
) -> None:
    audio = with_pauses(utterances[SENTENCES[3]])
    base = finals(await stream_recognize(speech, audio))
    shifted = finals(await stream_recognize(speech, audio, audio_offset_seconds=301.5))
    assert len(base) == len(shifted) == 1
    # The decoder adapts across utterances (pooled on Triton), so words may differ slightly
    # between runs; the segmentation (ours, deterministic) must shift exactly.
    delta = shifted[0].result_end_offset.ToNanoseconds() - base[0].result_end_offset.ToNanoseconds()
    assert delta == pytest.approx(301.5e9, abs=2e6)
    end = shifted[0].result_end_offset.ToNanoseconds()
    words = shifted[0].alternatives[0].words
    assert words
    for word in words:
        assert (
            301.5e9 <= word.start_offset.ToNanoseconds() <= word.end_offset.ToNanoseconds() <= end
        )


def _bad_config(**changes: object) -> speech_pb2.StreamingRecognizeRequest:
    config = streaming_config()
    for key, value in changes.items():
        setattr(config.config, key, value)
    return speech_pb2.StreamingRecognizeRequest(streaming_config=config)


AUDIO = speech_pb2.StreamingRecognizeRequest(audio_content=b"\x01\x00" * 1600)
GOOD = speech_pb2.StreamingRecognizeRequest(streaming_config=streaming_config())


@pytest.mark.parametrize(
    ("messages", "code", "field"),
    [
        ([AUDIO], grpc.StatusCode.INVALID_ARGUMENT, "streaming_config"),
        ([], grpc.StatusCode.INVALID_ARGUMENT, "streaming_config"),
        ([GOOD, GOOD], grpc.StatusCode.INVALID_ARGUMENT, "streaming_config"),
        (
            [_bad_config(encoding=speech_pb2.AUDIO_ENCODING_WAV)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "streaming_config.config.encoding",
        ),
        (
            [_bad_config(sample_rate_hertz=4000)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "streaming_config.config.sample_rate_hertz",
        ),
        (
            [_bad_config(language_code="fr-FR")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "streaming_config.config.language_code",
        ),
        (
            [GOOD, speech_pb2.StreamingRecognizeRequest(audio_content=b"\x00\x00\x00")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "audio_content",
        ),
        (
            [GOOD, speech_pb2.StreamingRecognizeRequest(audio_content=b"\x00" * 32770)],
            grpc.StatusCode.OUT_OF_RANGE,
            "audio_content",
        ),
    ],
    ids=[
        "audio-first",
        "empty",
        "config-twice",
        "encoding",
        "sample-rate",
        "language",
        "odd-chunk",
        "chunk-too-large",
    ],
)
async def test_bad_streams_are_rejected(
    speech: Speech,
    messages: list[speech_pb2.StreamingRecognizeRequest],
    code: grpc.StatusCode,
    field: str,
) -> None:
    async def requests() -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
        for message in messages:
            yield message

    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for response in speech.stub.StreamingRecognize(
            requests(), metadata=speech.metadata, timeout=20
        ):
            received.append(response)
    assert info.value.code() == code, info.value.details()
    assert field in [f for f, _ in rpc_error_details(info.value)]
    # Rejected before any audio was recognized: no results, no speech events.
    assert not [r for r in received if r.results or r.speech_event_type]


async def test_stream_past_max_duration_is_out_of_range(speech: Speech) -> None:
    chunk = b"\x00\x00" * 16000  # 1 s of silence, 32,000 bytes

    async def requests() -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
        yield GOOD
        for _ in range(301):
            yield speech_pb2.StreamingRecognizeRequest(audio_content=chunk)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        # Every second is decoded (silence too: nothing is dropped before the recognizer), so
        # the 300 s take a while on a busy CPU before the limit is reached.
        async for _ in speech.stub.StreamingRecognize(
            requests(), metadata=speech.metadata, timeout=400
        ):
            pass
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "300 seconds" in (info.value.details() or "")


async def test_recognize_rejects_bad_requests(speech: Speech) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _recognize(speech, b"\x00\x00" * 10, encoding=speech_pb2.AUDIO_ENCODING_LINEAR16)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.sample_rate_hertz" in [f for f, _ in rpc_error_details(info.value)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _recognize(
            speech,
            encode(np.zeros(61 * 8000, dtype=np.int16), 8000, "WAV"),
            encoding=speech_pb2.AUDIO_ENCODING_WAV,
            sample_rate_hertz=16000,
        )
    fields = [f for f, _ in rpc_error_details(info.value)]
    assert "content" in fields and "config.sample_rate_hertz" in fields


async def test_ten_concurrent_streams_stay_separate(
    speech: Speech, utterances: dict[str, np.ndarray]
) -> None:
    a, b = SENTENCES[2], SENTENCES[3]
    plan = [a if i % 2 == 0 else b for i in range(10)]
    replies = await asyncio.gather(
        *(stream_recognize(speech, with_pauses(utterances[s])) for s in plan)
    )
    for sentence, responses in zip(plan, replies):
        results = finals(responses)
        errors = [r.error.message for r in responses if r.error.code]
        assert len(results) == 1, ([r.alternatives[0].transcript for r in results], errors)
        text = results[0].alternatives[0].transcript
        other = b if sentence == a else a
        assert word_error_rate(sentence, text) < word_error_rate(other, text), (sentence, text)
