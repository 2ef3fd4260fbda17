"""Shared helpers for the Triton speech tests and the inference benchmark."""

from __future__ import annotations

import numpy as np

from services.common.triton import TritonClient

# eSpeak's "en-us+f2" at 130 wpm is the synthetic voice pocketsphinx's en-US model handles best.
ASR_VOICE = "en-us+f2"
ASR_RATE_WPM = 130
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
    client: TritonClient, audio: np.ndarray, chunk: int = 1600
) -> tuple[list[str], str, dict[str, np.ndarray]]:
    """Stream audio in `chunk`-sample pieces; return (interim texts, final text, final outputs)."""
    interim: list[str] = []
    final: dict[str, np.ndarray] = {}
    async with client.recognize() as stream:

        async def feed() -> None:
            for i in range(0, len(audio), chunk):
                await stream.send(
                    {
                        "AUDIO": audio[i : i + chunk].reshape(1, -1),
                        "SAMPLE_RATE": np.array([[16000]], dtype=np.int32),
                    }
                )
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
