"""The plain-Python parts of Speech, without any server: endpointing, sentence splitting for
streaming synthesis and captions, stability, page tokens and the SDK pacing helper."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from aimesh_sdk.audio import paced, pcm_chunks

from services.speech import codecs
from services.speech.audio import AudioFormatError, SpeechDetector, StreamResampler, resample
from services.speech.converse import take_sentences
from services.speech.recognition import stability_of
from services.speech.synthesis import bcp47, split_sentences, wpm_for

RATE = 16000


def tone(seconds: float, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def quiet(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


def spoken(text: str) -> np.ndarray:
    """eSpeak NG speech (the Debian package setup installs), 16 kHz, trimmed to the voice."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        subprocess.run(
            ["espeak-ng", "-v", "en-us", "-s", "150", "-w", wav.name, text],
            check=True,
            capture_output=True,
        )
        samples, rate = codecs.decode(Path(wav.name).read_bytes(), "WAV", 0)
    pcm = resample(samples, rate, RATE)
    voiced = np.flatnonzero(np.abs(pcm) > 300)
    return pcm[voiced[0] : voiced[-1] + 1]


def speech_bounds(audio: list[np.ndarray], vad: SpeechDetector) -> tuple[list[float], list[float]]:
    decisions = []
    joined = np.concatenate(audio)
    for i in range(0, joined.size, 1600):  # 100 ms pushes
        decisions += vad.push(joined[i : i + 1600])
    begins = [d.begin_sample / RATE for _, d in decisions if d.begin_sample is not None]
    ends = [(p - d.end_speech_sample) / RATE for p, d in decisions if d.end_speech_sample]
    return begins, ends


def test_vad_segments_utterances_at_the_silence_duration() -> None:
    first, second = spoken("turn on the kitchen lights"), spoken("thank you")
    audio = [quiet(0.5), first, quiet(0.25), first, quiet(1.0), second, quiet(1.0)]
    begins, ends = speech_bounds(audio, SpeechDetector(silence_ms=600, max_utterance_ms=30_000))
    # A 250 ms pause stays inside the utterance; 1 s of silence ends it, 600 ms (within one
    # 30 ms classifier frame) after the speech.
    second_start = (sum(a.size for a in audio[:5])) / RATE
    assert begins == pytest.approx([0.5, second_start], abs=0.1)
    assert ends == pytest.approx([0.6, 0.6], abs=0.031)


def test_vad_ignores_steady_background_noise() -> None:
    speech = spoken("turn on the kitchen lights")
    noise = np.random.default_rng(7).normal(0, 100, 3 * RATE + speech.size).astype(np.int16)
    audio = noise.copy()
    audio[RATE : RATE + speech.size] += speech
    begins, ends = speech_bounds([audio], SpeechDetector(silence_ms=500, max_utterance_ms=30_000))
    assert begins == pytest.approx([1.0], abs=0.1) and len(ends) == 1


def test_vad_forces_an_end_at_the_maximum_utterance_duration() -> None:
    vad = SpeechDetector(silence_ms=800, max_utterance_ms=1000)
    speech = spoken("please turn on the kitchen lights and call my mother tomorrow morning")
    decisions = vad.push(np.concatenate([speech, quiet(0.1)]))
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


@pytest.mark.parametrize("encoding", codecs.OUTPUTS)
def test_every_output_format_decodes_back(encoding: str) -> None:
    samples = spoken("turn on the kitchen lights")
    rate = codecs.default_rate(encoding, RATE)
    source = resample(samples, RATE, rate)
    data = codecs.encode(source, rate, encoding)
    decoded, decoded_rate = codecs.decode(data, "MULAW" if encoding == "MULAW" else encoding, rate)
    assert decoded_rate == rate
    if encoding in ("LINEAR16", "WAV", "FLAC"):  # lossless
        assert np.array_equal(decoded, source)
    elif encoding == "MULAW":  # 8-bit companding: the same wave, slightly coarser
        assert np.corrcoef(decoded.astype(float), source.astype(float))[0, 1] > 0.999
    else:  # lossy codecs: the same length (give or take codec padding) and loudness
        assert abs(decoded.size - source.size) < 0.1 * rate
        assert np.std(decoded) == pytest.approx(np.std(source), rel=0.25)


@pytest.mark.parametrize(
    ("data_encoding", "label", "rate", "needle"),
    [
        ("WAV", "FLAC", 0, "WAV file, not FLAC"),
        ("FLAC", "LINEAR16", 16000, "FLAC file, not raw LINEAR16"),
        ("OGG_OPUS", "WAV", 0, "OGG_OPUS file, not WAV"),
        ("LINEAR16", "WAV", 0, "unreadable WAV"),
        ("LINEAR16", "MULAW", 16000, "must be 8000 Hz"),
        ("WAV", "WAV", 8000, "disagrees with the file's header"),
    ],
)
def test_mislabelled_audio_is_refused(
    data_encoding: str, label: str, rate: int, needle: str
) -> None:
    source_rate = 24000 if data_encoding == "OGG_OPUS" else RATE
    data = codecs.encode(tone(0.5), source_rate, data_encoding)
    with pytest.raises(AudioFormatError, match=needle):
        codecs.decode(data, label, rate)


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
