from __future__ import annotations

import json
import time

import grpc
import numpy as np
import pytest

from services.common.errors import ServiceError
from services.common.triton import TTS_MODEL, TritonClient

TEXT = "The quick brown fox jumps over the lazy dog. " * 12  # ~108 words


async def test_streams_valid_pcm_of_plausible_duration(triton: TritonClient) -> None:
    # Warm up: the first request after a cold start pays for loading the voice data.
    [c async for c in triton.synthesize("warm up")]
    start = time.monotonic()
    arrivals: list[float] = []
    chunks: list[np.ndarray] = []
    async for chunk in triton.synthesize(TEXT, rate_wpm=175, sample_rate=16000):
        arrivals.append(time.monotonic() - start)
        chunks.append(chunk)
    audio = np.concatenate(chunks)
    assert audio.dtype == np.int16
    seconds = len(audio) / 16000
    words = len(TEXT.split())
    # 175 words per minute, with pauses at sentence ends: between 0.6x and 2x the nominal length.
    nominal = words / 175 * 60
    assert 0.6 * nominal < seconds < 2.0 * nominal, (seconds, nominal)
    assert np.abs(audio).max() > 1000  # real signal, not silence
    assert len(chunks) > 10
    # Streaming, not buffered: the first chunk arrived long before the last one was produced.
    assert arrivals[0] < 0.5 * arrivals[-1], arrivals[:3]


async def test_sample_rate_and_rate_change_duration(triton: TritonClient) -> None:
    async def seconds(**kw: int) -> float:
        audio = np.concatenate(
            [c async for c in triton.synthesize("Hello from the speech model.", **kw)]
        )
        return len(audio) / int(kw.get("sample_rate", 22050))

    slow = await seconds(rate_wpm=100, sample_rate=16000)
    fast = await seconds(rate_wpm=300, sample_rate=16000)
    native = await seconds(rate_wpm=100, sample_rate=22050)
    assert fast < slow * 0.7
    assert abs(native - slow) < 0.05 * slow  # resampling keeps the duration


async def test_lists_voices(triton: TritonClient) -> None:
    out = [r async for r in triton.stream(TTS_MODEL, {"LIST_VOICES": np.array([True])}, ["VOICES"])]
    voices = [json.loads(v) for v in out[0]["VOICES"]]
    assert len(voices) > 20
    assert any("en-us" in v["languages"] for v in voices)
    assert {"name", "identifier", "languages", "gender"} <= set(voices[0])


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"text": "hi", "voice": "no-such-voice"}, "VOICE"),
        ({"text": "hi", "sample_rate": 12345}, "SAMPLE_RATE"),
        ({"text": "hi", "rate_wpm": 5000}, "RATE"),
        ({"text": "   "}, "TEXT"),
        ({"text": "x" * 6000}, "TEXT"),
    ],
)
async def test_bad_input_is_invalid_argument(triton: TritonClient, kw: dict, needle: str) -> None:
    with pytest.raises(ServiceError) as err:
        async for _ in triton.synthesize(**kw):
            pass
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert err.value.violations[0][0].startswith(needle)


async def test_non_utf8_text_is_invalid_argument(triton: TritonClient) -> None:
    with pytest.raises(ServiceError) as err:
        async for _ in triton.stream(TTS_MODEL, {"TEXT": np.array([b"\xc3\x28"], dtype=object)}):
            pass
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in err.value.message


async def test_leaving_early_cancels_and_model_keeps_serving(triton: TritonClient) -> None:
    async for _chunk in triton.synthesize(TEXT * 3):
        break  # the caller goes away after the first chunk
    audio = np.concatenate([c async for c in triton.synthesize("Still here.")])
    assert len(audio) > 1000
