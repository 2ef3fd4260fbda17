"""Audio helpers for Speech clients: stream a WAV file or raw PCM as request messages paced
like a live microphone, and write received PCM to a WAV file.

    from aimesh_sdk.audio import read_wav, recognize_requests, WavWriter

    pcm, rate = read_wav("question.wav")
    responses = stub.StreamingRecognize(recognize_requests(pcm, rate, interim_results=True))

`recognize_requests` is async (grpc.aio), `iter_recognize_requests` its blocking twin (sync
stubs); both pace audio in real time by default (`realtime=1.0`); `realtime=0` sends as fast as
flow control allows, `2.0` twice as fast as real time.
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aimesh.speech.v1 import speech_pb2

CHUNK_MS = 100  # audio per message: small enough for low latency, far below the 32 KiB limit


def read_wav(path: str | Path) -> tuple[bytes, int]:
    """Mono 16-bit PCM WAV file -> (raw little-endian PCM bytes, sample rate)."""
    with wave.open(str(path), "rb") as reader:
        if reader.getnchannels() != 1 or reader.getsampwidth() != 2:
            raise ValueError(
                f"{path}: need mono 16-bit PCM, got {reader.getnchannels()} channels, "
                f"{reader.getsampwidth() * 8}-bit"
            )
        return reader.readframes(reader.getnframes()), reader.getframerate()


def pcm_chunks(pcm: bytes, sample_rate: int, chunk_ms: int = CHUNK_MS) -> Iterator[bytes]:
    """Split raw PCM16 into chunks of `chunk_ms` (whole samples)."""
    step = max(2, sample_rate * chunk_ms // 1000 * 2)
    for i in range(0, len(pcm), step):
        yield pcm[i : i + step]


async def paced(
    chunks: Iterator[bytes], sample_rate: int, realtime: float = 1.0
) -> AsyncIterator[bytes]:
    """Yield chunks no faster than `realtime` x real time (0 = no pacing), like a microphone."""
    start = time.monotonic()
    sent = 0.0
    for chunk in chunks:
        if realtime > 0:
            due = start + sent / realtime
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        yield chunk
        sent += len(chunk) / 2 / sample_rate


def silence(seconds: float, sample_rate: int) -> bytes:
    return b"\x00\x00" * int(seconds * sample_rate)


def recognition_config(
    sample_rate: int,
    *,
    language_code: str = "en-US",
    interim_results: bool = False,
    word_time_offsets: bool = True,
    audio_offset_seconds: float = 0.0,
) -> speech_pb2.StreamingRecognitionConfig:
    """The first message of a StreamingRecognize stream for 16-bit mono PCM."""
    config = speech_pb2.StreamingRecognitionConfig(
        config=speech_pb2.RecognitionConfig(
            encoding=speech_pb2.AUDIO_ENCODING_LINEAR16,
            sample_rate_hertz=sample_rate,
            language_code=language_code,
            enable_word_time_offsets=word_time_offsets,
        ),
        interim_results=interim_results,
    )
    config.audio_offset.FromNanoseconds(round(audio_offset_seconds * 1e9))
    return config


def iter_recognize_requests(
    pcm: bytes,
    sample_rate: int,
    *,
    realtime: float = 1.0,
    chunk_ms: int = CHUNK_MS,
    **config: Any,
) -> Iterator[speech_pb2.StreamingRecognizeRequest]:
    """Blocking StreamingRecognize request stream (for sync stubs); keywords as
    recognition_config."""
    yield speech_pb2.StreamingRecognizeRequest(
        streaming_config=recognition_config(sample_rate, **config)
    )
    start = time.monotonic()
    sent = 0.0
    for chunk in pcm_chunks(pcm, sample_rate, chunk_ms):
        if realtime > 0:
            delay = start + sent / realtime - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield speech_pb2.StreamingRecognizeRequest(audio_content=chunk)
        sent += len(chunk) / 2 / sample_rate


async def recognize_requests(
    pcm: bytes,
    sample_rate: int,
    *,
    language_code: str = "en-US",
    interim_results: bool = False,
    word_time_offsets: bool = True,
    audio_offset_seconds: float = 0.0,
    realtime: float = 1.0,
    chunk_ms: int = CHUNK_MS,
) -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
    """A StreamingRecognize request stream: the config, then the audio paced in real time."""
    config = recognition_config(
        sample_rate, language_code=language_code, interim_results=interim_results,
        word_time_offsets=word_time_offsets, audio_offset_seconds=audio_offset_seconds,
    )
    yield speech_pb2.StreamingRecognizeRequest(streaming_config=config)
    async for chunk in paced(pcm_chunks(pcm, sample_rate, chunk_ms), sample_rate, realtime):
        yield speech_pb2.StreamingRecognizeRequest(audio_content=chunk)


class WavWriter:
    """Append received PCM16 chunks to a WAV file (the header is fixed up on close)."""

    def __init__(self, path: str | Path, sample_rate: int) -> None:
        self._wave = wave.open(str(path), "wb")  # noqa: SIM115 - closed by close()/__exit__
        self._wave.setnchannels(1)
        self._wave.setsampwidth(2)
        self._wave.setframerate(sample_rate)

    def write(self, pcm: bytes) -> None:
        self._wave.writeframes(pcm)

    def close(self) -> None:
        self._wave.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
