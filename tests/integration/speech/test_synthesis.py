"""Synthesize, StreamingSynthesize and ListVoices on the real Triton TTS model (eSpeak NG)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from aimesh.speech.v1 import speech_pb2

from services.speech.codecs import decode
from tests.integration.speech.conftest import Speech, rpc_error_details

LINEAR16 = speech_pb2.AUDIO_ENCODING_LINEAR16
WAV = speech_pb2.AUDIO_ENCODING_WAV


async def test_synthesize_wav_at_requested_rate(gateway_speech: Speech) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    reply = await gateway_speech.stub.Synthesize(
        speech_pb2.SynthesizeRequest(
            text=text,
            audio_config=speech_pb2.AudioOutputConfig(encoding=WAV, sample_rate_hertz=11025),
        ),
        metadata=gateway_speech.metadata,
        timeout=30,
    )
    samples, rate = decode(reply.audio_content, "WAV", 0)
    assert rate == reply.sample_rate_hertz == 11025  # not one the model renders: resampled here
    assert reply.audio_duration.ToNanoseconds() == pytest.approx(samples.size / rate * 1e9, abs=1e6)
    assert 1.0 < samples.size / rate < 6.0
    assert np.abs(samples.astype(np.int32)).max() > 1000  # speech, not silence
    assert reply.billed_characters == len(text)


async def test_streaming_synthesis_chunks_are_continuous(speech: Speech) -> None:
    text = "Hello there. This is the second sentence! And is this the third?"
    chunks = [
        c
        async for c in speech.stub.StreamingSynthesize(
            speech_pb2.StreamingSynthesizeRequest(
                text=text,
                audio_config=speech_pb2.AudioOutputConfig(
                    encoding=LINEAR16, sample_rate_hertz=16000
                ),
            ),
            metadata=speech.metadata,
            timeout=30,
        )
    ]
    assert len(chunks) > 3
    played = 0
    spans = []
    for i, chunk in enumerate(chunks):
        assert chunk.chunk_index == i
        assert chunk.sample_rate_hertz == 16000
        assert 0 < len(chunk.audio_content) <= 65536 and len(chunk.audio_content) % 2 == 0
        assert chunk.audio_offset.ToNanoseconds() == pytest.approx(played / 16000 * 1e9, abs=1e3)
        played += len(chunk.audio_content) // 2
        if not spans or spans[-1] != (chunk.text_start_offset, chunk.text_end_offset):
            spans.append((chunk.text_start_offset, chunk.text_end_offset))
    # Sentence by sentence, in order, covering the whole text.
    assert [text[a:b].strip() for a, b in spans] == [
        "Hello there.",
        "This is the second sentence!",
        "And is this the third?",
    ]


async def test_synthesis_errors(speech: Speech) -> None:
    cases = [
        (
            speech_pb2.SynthesizeRequest(
                text="", audio_config=speech_pb2.AudioOutputConfig(encoding=WAV)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            {"text"},
        ),
        (
            speech_pb2.SynthesizeRequest(
                text="x" * 5001, speaking_rate=9, audio_config=speech_pb2.AudioOutputConfig()
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            {"text", "speaking_rate", "audio_config.encoding"},
        ),
        (
            speech_pb2.SynthesizeRequest(
                text="hi",
                audio_config=speech_pb2.AudioOutputConfig(encoding=WAV, sample_rate_hertz=96000),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            {"audio_config.sample_rate_hertz"},
        ),
        (
            speech_pb2.SynthesizeRequest(
                text="hi",
                voice="voices/klingon",
                audio_config=speech_pb2.AudioOutputConfig(encoding=WAV),
            ),
            grpc.StatusCode.NOT_FOUND,
            set(),
        ),
    ]
    for request, code, fields in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await speech.stub.Synthesize(request, metadata=speech.metadata, timeout=30)
        assert info.value.code() == code, request
        assert fields <= {f for f, _ in rpc_error_details(info.value)}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in speech.stub.StreamingSynthesize(
            speech_pb2.StreamingSynthesizeRequest(
                text="hi", audio_config=speech_pb2.AudioOutputConfig(encoding=WAV)
            ),
            metadata=speech.metadata,
        ):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "audio_config.encoding" in {f for f, _ in rpc_error_details(info.value)}


async def test_list_voices_filters_and_pages(speech: Speech) -> None:
    english = await speech.stub.ListVoices(
        speech_pb2.ListVoicesRequest(language_code="en"), metadata=speech.metadata
    )
    names = [v.name for v in english.voices]
    assert "voices/en-us" in names and names == sorted(names)
    assert all(any(c.lower().startswith("en") for c in v.language_codes) for v in english.voices)
    paged: list[str] = []
    token = ""
    while True:
        page = await speech.stub.ListVoices(
            speech_pb2.ListVoicesRequest(language_code="en", page_size=3, page_token=token),
            metadata=speech.metadata,
        )
        assert len(page.voices) <= 3
        paged += [v.name for v in page.voices]
        token = page.next_page_token
        if not token:
            break
    assert paged == names
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await speech.stub.ListVoices(
            speech_pb2.ListVoicesRequest(page_token="garbage"), metadata=speech.metadata
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
