"""Audio helpers for Speech clients: stream a WAV file, raw PCM or a live microphone as
StreamingRecognize request messages, and write received PCM to a WAV file.

    from aimesh_sdk.audio import read_wav, recognize_requests, WavWriter

    pcm, rate = read_wav("question.wav")
    responses = stub.StreamingRecognize(recognize_requests(pcm, rate, interim_results=True))

`recognize_requests` is async (grpc.aio), `iter_recognize_requests` its blocking twin (sync
stubs); both pace audio in real time by default (`realtime=1.0`); `realtime=0` sends as fast as
flow control allows, `2.0` twice as fast as real time.

`Microphone` captures from an audio input device through PortAudio (the `sounddevice` package:
`pip install 'aimesh-sdk[mic]'`, plus the PortAudio library, e.g. Debian's libportaudio2):

    with Microphone(sample_rate=16000) as mic:
        for response in stub.StreamingRecognize(stream_requests(mic.chunks(), 16000)):
            ...
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import wave
from collections.abc import AsyncIterator, Iterable, Iterator
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
    single_utterance: bool = False,
    silence_ms: int | None = None,
    max_utterance_seconds: float | None = None,
    speech_start_timeout_seconds: float | None = None,
) -> speech_pb2.StreamingRecognitionConfig:
    """The first message of a StreamingRecognize stream for 16-bit mono PCM. Endpointing
    values left None keep the server's defaults (see EndpointingConfig)."""
    config = speech_pb2.StreamingRecognitionConfig(
        config=speech_pb2.RecognitionConfig(
            encoding=speech_pb2.AUDIO_ENCODING_LINEAR16,
            sample_rate_hertz=sample_rate,
            language_code=language_code,
            enable_word_time_offsets=word_time_offsets,
        ),
        interim_results=interim_results,
        single_utterance=single_utterance,
    )
    config.audio_offset.FromNanoseconds(round(audio_offset_seconds * 1e9))
    endpointing = config.endpointing
    if silence_ms is not None:
        endpointing.silence_duration.FromMilliseconds(silence_ms)
    if max_utterance_seconds is not None:
        endpointing.max_utterance_duration.FromNanoseconds(round(max_utterance_seconds * 1e9))
    if speech_start_timeout_seconds is not None:
        endpointing.speech_start_timeout.FromNanoseconds(
            round(speech_start_timeout_seconds * 1e9))
    return config


def stream_requests(
    chunks: Iterable[bytes], sample_rate: int, **config: Any
) -> Iterator[speech_pb2.StreamingRecognizeRequest]:
    """Blocking StreamingRecognize request stream of live audio (e.g. Microphone.chunks()):
    the config (keywords as recognition_config), then each chunk as it comes."""
    yield speech_pb2.StreamingRecognizeRequest(
        streaming_config=recognition_config(sample_rate, **config)
    )
    for chunk in chunks:
        yield speech_pb2.StreamingRecognizeRequest(audio_content=chunk)


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
    return stream_requests(paced_blocking(pcm_chunks(pcm, sample_rate, chunk_ms), sample_rate,
                                           realtime), sample_rate, **config)


def paced_blocking(chunks: Iterator[bytes], sample_rate: int, realtime: float) -> Iterator[bytes]:
    start = time.monotonic()
    sent = 0.0
    for chunk in chunks:
        if realtime > 0:
            delay = start + sent / realtime - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield chunk
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


class MicrophoneUnavailable(RuntimeError):
    """No audio input could be opened: the `sounddevice` package or the PortAudio library is
    missing, there is no input device, or the device refused the format. `fix` says what to do."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


def _sounddevice() -> Any:
    try:
        import sounddevice  # the optional `mic` extra
    except ImportError:
        raise MicrophoneUnavailable(
            "microphone support is not installed (the sounddevice package)",
            "pip install 'aimesh-sdk[mic]'") from None
    except OSError as exc:  # sounddevice is there, the PortAudio C library is not
        raise MicrophoneUnavailable(
            f"the PortAudio library is missing ({exc})",
            "install it: apt-get install libportaudio2 (Debian/Ubuntu), "
            "brew install portaudio (macOS)") from None
    return sounddevice


class Microphone:
    """Mono 16-bit PCM from an audio input device, in `chunk_ms` pieces, until stop() is
    called or `seconds` of audio have been captured. The device paces the audio (real time).

    `device` is a PortAudio device index or a substring of its name (None: the default input).
    Opening raises MicrophoneUnavailable when no input device can capture at `sample_rate`.
    """

    def __init__(self, sample_rate: int = 16000, *, device: int | str | None = None,
                 chunk_ms: int = CHUNK_MS, seconds: float | None = None) -> None:
        self.sample_rate = sample_rate
        self.device = device
        self.frames_per_chunk = max(1, sample_rate * chunk_ms // 1000)
        self.limit_bytes = None if seconds is None else round(seconds * sample_rate) * 2
        self.captured_bytes = 0
        self.overflows = 0  # chunks the device dropped because nobody read in time
        self._chunks: queue.Queue[bytes | None] = queue.Queue()
        self._stopped = threading.Event()
        self._stream: Any = None

    def open(self) -> Self:
        sd = _sounddevice()
        fix = ("connect a microphone, or pick another input with --device (list them: "
               "python -m sounddevice)")
        try:
            info = sd.query_devices(self.device, kind="input")
        except (sd.PortAudioError, ValueError):
            raise MicrophoneUnavailable(
                "no audio input device found" if self.device is None
                else f"no audio input device matches {self.device!r}", fix) from None
        try:
            self._stream = sd.RawInputStream(
                samplerate=self.sample_rate, blocksize=self.frames_per_chunk,
                device=self.device, channels=1, dtype="int16", callback=self._on_audio)
            self._stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            self.close()
            raise MicrophoneUnavailable(
                f"cannot capture from {info['name']!r} at {self.sample_rate} Hz mono: {exc}",
                "try another --sample-rate (e.g. 48000) or --device") from None
        return self

    def _on_audio(self, data: Any, frames: int, when: Any, status: Any) -> None:
        if status.input_overflow:
            self.overflows += 1
        if not self._stopped.is_set():
            self._chunks.put(bytes(data))

    def stop(self) -> None:
        """Ends chunks() after what was already captured (safe from a signal handler)."""
        self._stopped.set()
        self._chunks.put(None)

    def chunks(self) -> Iterator[bytes]:
        """Captured audio as it arrives: PCM16 little-endian mono chunks."""
        while True:
            chunk = self._chunks.get()
            if chunk is None:
                return
            if self.limit_bytes is not None:
                chunk = chunk[: self.limit_bytes - self.captured_bytes]
            self.captured_bytes += len(chunk)
            if chunk:
                yield chunk
            if self.limit_bytes is not None and self.captured_bytes >= self.limit_bytes:
                self.stop()
                return

    def close(self) -> None:
        self.stop()
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close(ignore_errors=True)

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
