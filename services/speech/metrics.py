"""Speech's metrics: live recognition streams, audio recognized, the recognizer's real-time
factor on whole files, and how soon synthesis produces its first audio."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram

from services.common import metrics

T = TypeVar("T")

ASR_ACTIVE_STREAMS = Gauge(
    "aimesh_speech_asr_active_streams",
    "StreamingRecognize and Converse streams open right now.",
    ("method",),
)
ASR_AUDIO_SECONDS = Counter(
    "aimesh_speech_asr_audio_seconds_total",
    "Seconds of audio received for recognition.",
    ("method",),
)
ASR_REALTIME_FACTOR = Histogram(
    "aimesh_speech_asr_realtime_factor",
    "Recognize: processing seconds per second of audio (below 1 is faster than real time).",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0),
)
TTS_FIRST_AUDIO = Histogram(
    "aimesh_speech_tts_first_audio_seconds",
    "Seconds from a synthesis request to its first audio chunk, by voice.",
    ("voice",),
    buckets=metrics.LATENCY_BUCKETS,
)


@contextmanager
def active_stream(method: str) -> Iterator[None]:
    if not metrics.enabled():
        yield
        return
    ASR_ACTIVE_STREAMS.labels(method).inc()
    try:
        yield
    finally:
        ASR_ACTIVE_STREAMS.labels(method).dec()


def record_audio(method: str, seconds: float) -> None:
    if metrics.enabled() and seconds > 0:
        ASR_AUDIO_SECONDS.labels(method).inc(seconds)


def record_realtime_factor(processing_seconds: float, audio_seconds: float) -> None:
    if metrics.enabled() and audio_seconds > 0:
        ASR_REALTIME_FACTOR.observe(processing_seconds / audio_seconds)


async def first_audio(chunks: AsyncIterator[T], voice: str) -> AsyncIterator[T]:
    """Pass synthesized chunks through, timing the first one."""
    started = time.perf_counter()
    first = True
    async for chunk in chunks:
        if first and metrics.enabled():
            TTS_FIRST_AUDIO.labels(voice).observe(time.perf_counter() - started)
        first = False
        yield chunk
