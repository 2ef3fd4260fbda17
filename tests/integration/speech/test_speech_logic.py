"""The plain-Python parts of Speech, without any server: endpointing, sentence splitting for
streaming synthesis and captions, stability, page tokens and the SDK pacing helper."""

from __future__ import annotations

import time

import numpy as np
import pytest

from aimesh_sdk.audio import paced, pcm_chunks
from services.speech.audio import EnergyVad, StreamResampler, parse_wav, wav_bytes
from services.speech.converse import take_sentences
from services.speech.recognition import stability_of
from services.speech.synthesis import bcp47, split_sentences, wpm_for

RATE = 16000


def tone(seconds: float, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def quiet(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


def test_vad_segments_utterances_at_the_silence_duration() -> None:
    vad = EnergyVad(silence_ms=600, max_utterance_ms=30_000)
    audio = np.concatenate(
        [quiet(0.5), tone(1.0), quiet(0.3), tone(0.5), quiet(1.0), tone(0.4), quiet(1.0)]
    )
    decisions = []
    for i in range(0, audio.size, 1600):  # 100 ms pushes
        decisions += vad.push(audio[i : i + 1600])
    begins = [d.begin_sample / RATE for _, d in decisions if d.begin_sample is not None]
    ends = [
        (pos / RATE, d.end_speech_sample / RATE)
        for pos, d in decisions
        if d.end_speech_sample is not None
    ]
    # A 300 ms pause stays inside the utterance; 1 s of silence ends it.
    assert begins == pytest.approx([0.5, 3.3], abs=0.03)
    assert [e for _, e in ends] == pytest.approx([2.3, 3.7], abs=0.03)
    assert [p - e for p, e in ends] == pytest.approx([0.6, 0.6], abs=0.03)


def test_vad_forces_an_end_at_the_maximum_utterance_duration() -> None:
    vad = EnergyVad(silence_ms=800, max_utterance_ms=1000)
    decisions = vad.push(np.concatenate([tone(2.5), quiet(0.1)]))
    forced = [d for _, d in decisions if d.end_speech_sample is not None]
    assert forced and forced[0].forced


def test_resampler_streams_without_losing_time() -> None:
    resampler = StreamResampler(22050, RATE)
    source = np.random.default_rng(1).integers(-3000, 3000, 22050 * 2, dtype=np.int16)
    out = np.concatenate(
        [resampler.push(source[i : i + 1000]) for i in range(0, source.size, 1000)]
        + [resampler.flush()]
    )
    assert out.size == pytest.approx(2 * RATE, abs=2)


def test_wav_round_trip() -> None:
    samples = tone(0.25)
    parsed, rate = parse_wav(wav_bytes(samples, RATE))
    assert rate == RATE and np.array_equal(parsed, samples)


def test_sentences_cover_the_text_and_respect_the_limit() -> None:
    text = "Hi there! How are you? " + "word " * 30 + "end."
    spans = split_sentences(text, limit=40)
    assert all(b - a <= 40 for a, b in spans)
    assert "".join(text[a:b] for a, b in spans).strip() == text.strip()
    assert text[spans[0][0] : spans[0][1]].strip() == "Hi there!"


def test_take_sentences_keeps_the_unfinished_rest() -> None:
    ready, rest = take_sentences("The weather is sunny. Tomorrow it will")
    assert ready == ["The weather is sunny."] and rest == "Tomorrow it will"
    assert take_sentences("no end yet") == ([], "no end yet")


def test_small_helpers() -> None:
    assert bcp47("en-gb-x-rp") == "en-GB-x-rp" and bcp47("en-us") == "en-US"
    assert wpm_for(0) == 175 and wpm_for(0.25) == 80 and wpm_for(4.0) == 450
    assert stability_of(["a", "b"], ["a", "b", "c"]) == pytest.approx(0.67, abs=0.01)


async def test_paced_audio_runs_in_real_time() -> None:
    pcm = quiet(0.5).tobytes()
    started = time.monotonic()
    chunks = [c async for c in paced(pcm_chunks(pcm, RATE), RATE, realtime=1.0)]
    assert b"".join(chunks) == pcm and len(chunks) == 5
    assert time.monotonic() - started >= 0.35  # the last chunk is due 400 ms after the first
