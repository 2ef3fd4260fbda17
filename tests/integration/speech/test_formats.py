"""Audio formats users have, end to end: every input encoding is recognized exactly as the
engine recognizes the same samples (encode -> Recognize), every output encoding of Synthesize
decodes back to speech the recognizer understands (Synthesize -> decode -> recognize), mu-law
streams work, and mislabelled or unreadable audio is INVALID_ARGUMENT before recognition."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
import soundfile
from aimesh.speech.v1 import speech_pb2

from services.speech import codecs
from services.speech.audio import StreamResampler, resample
from tests.integration.speech.conftest import (
    RATE,
    Speech,
    finals,
    rpc_error_details,
)
from tests.support.speech import engine_transcript, piper_speech, word_error_rate

SENTENCE = "I would like to book a table for two at seven tonight."
WORDS = "i would like to book a table for two at seven tonight"


@pytest.fixture(scope="module")
def speech16k() -> np.ndarray:
    return np.concatenate([np.zeros(RATE // 4, np.int16), piper_speech(SENTENCE)])


def telephony(pcm16k: np.ndarray, encoding: str) -> bytes:
    """8 kHz mu-law or A-law bytes, as a phone line carries them."""
    out = io.BytesIO()
    subtype = codecs.TELEPHONY[encoding]
    soundfile.write(out, resample(pcm16k, RATE, 8000), 8000, format="RAW", subtype=subtype)
    return out.getvalue()


def as_recognizer_hears(samples: np.ndarray, rate: int) -> np.ndarray:
    """What Recognize feeds the recognizer: one-second pushes through the stream resampler."""
    resampler = StreamResampler(rate, RATE)
    parts = [resampler.push(samples[i : i + rate]) for i in range(0, samples.size, rate)]
    return np.concatenate([*parts, resampler.flush()])


async def recognize(speech: Speech, content: bytes, encoding: str, rate: int = 0) -> str:
    reply = await speech.stub.Recognize(
        speech_pb2.RecognizeRequest(
            config=speech_pb2.RecognitionConfig(
                encoding=speech_pb2.AudioEncoding.Value(f"AUDIO_ENCODING_{encoding}"),
                sample_rate_hertz=rate,
                language_code="en-US",
            ),
            content=content,
        ),
        metadata=speech.metadata,
        timeout=120,
    )
    return " ".join(r.alternatives[0].transcript for r in reply.results)


@pytest.mark.parametrize("encoding", ["LINEAR16", "WAV", "FLAC", "OGG_OPUS", "MP3", "MULAW", "ALAW"])
async def test_every_input_encoding_is_recognized_like_the_engine(
    speech: Speech, speech16k: np.ndarray, encoding: str
) -> None:
    if encoding in codecs.TELEPHONY:
        content, rate = telephony(speech16k, encoding), 8000
    else:
        content, rate = codecs.encode(speech16k, RATE, encoding), RATE
    raw = encoding in codecs.RAW_INPUTS
    got = await recognize(speech, content, encoding, rate if raw else 0)
    # The reference: the engine on the very samples the file holds (decoded by libsndfile here).
    samples, file_rate = codecs.decode(content, encoding, rate if raw else 0)
    expected = engine_transcript(as_recognizer_hears(samples, file_rate))
    assert got.split() == expected.split(), (encoding, got, expected)
    if encoding not in codecs.TELEPHONY:  # 8 kHz audio lacks the band the en-US model uses
        assert word_error_rate(WORDS, got) <= 0.35, got


@pytest.mark.parametrize("encoding", codecs.OUTPUTS)
async def test_every_output_encoding_round_trips_through_the_recognizer(
    speech: Speech, encoding: str
) -> None:
    reply = await speech.stub.Synthesize(
        speech_pb2.SynthesizeRequest(
            text=SENTENCE,
            audio_config=speech_pb2.AudioOutputConfig(
                encoding=speech_pb2.AudioEncoding.Value(f"AUDIO_ENCODING_{encoding}"),
                sample_rate_hertz=8000 if encoding == "MULAW" else 16000,
            ),
        ),
        metadata=speech.metadata,
        timeout=120,
    )
    assert reply.encoding == speech_pb2.AudioEncoding.Value(f"AUDIO_ENCODING_{encoding}")
    samples, rate = codecs.decode(reply.audio_content, encoding, reply.sample_rate_hertz)
    assert rate == reply.sample_rate_hertz
    assert samples.size / rate == pytest.approx(reply.audio_duration.ToNanoseconds() / 1e9, abs=0.2)
    heard = engine_transcript(resample(samples, rate, RATE))
    if encoding != "MULAW":
        assert word_error_rate(WORDS, heard) <= 0.35, (encoding, heard)
    else:
        assert heard  # telephone band: still speech, words less certain


async def test_a_mulaw_stream_is_recognized(speech: Speech, speech16k: np.ndarray) -> None:
    content = telephony(np.concatenate([speech16k, np.zeros(RATE, np.int16)]), "MULAW")
    config = speech_pb2.StreamingRecognitionConfig(
        config=speech_pb2.RecognitionConfig(
            encoding=speech_pb2.AUDIO_ENCODING_MULAW, sample_rate_hertz=8000, language_code="en-US"
        )
    )

    async def requests() -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
        yield speech_pb2.StreamingRecognizeRequest(streaming_config=config)
        for i in range(0, len(content), 1600):  # 200 ms of 8-bit samples per message
            yield speech_pb2.StreamingRecognizeRequest(audio_content=content[i : i + 1600])

    responses = [
        r
        async for r in speech.stub.StreamingRecognize(
            requests(), metadata=speech.metadata, timeout=180
        )
    ]
    texts = [r.alternatives[0].transcript for r in finals(responses)]
    assert any(texts), texts


@pytest.mark.parametrize(
    ("content_encoding", "label", "rate", "needle"),
    [
        ("WAV", "FLAC", 0, "WAV file, not FLAC"),
        ("FLAC", "LINEAR16", 16000, "FLAC file, not raw LINEAR16"),
        ("LINEAR16", "OGG_OPUS", 0, "unreadable OGG_OPUS"),
        ("WAV", "MULAW", 8000, "WAV file, not raw MULAW"),
    ],
)
async def test_mislabelled_audio_is_invalid_argument(
    speech: Speech, speech16k: np.ndarray, content_encoding: str, label: str, rate: int, needle: str
) -> None:
    content = codecs.encode(speech16k, RATE, content_encoding)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await recognize(speech, content, label, rate)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(f == "content" and needle in d for f, d in rpc_error_details(info.value)), (
        rpc_error_details(info.value)
    )


async def test_outputs_that_cannot_be_made_are_refused(speech: Speech) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await speech.stub.Synthesize(
            speech_pb2.SynthesizeRequest(
                text="hi",
                audio_config=speech_pb2.AudioOutputConfig(
                    encoding=speech_pb2.AUDIO_ENCODING_OGG_OPUS, sample_rate_hertz=22050
                ),
            ),
            metadata=speech.metadata,
            timeout=30,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "audio_config.sample_rate_hertz" in {f for f, _ in rpc_error_details(info.value)}
