"""Streaming recognition: caller audio in, speech events and interim/final results out.

A `RecognitionSession` segments the caller's audio into utterances with an energy VAD and runs
each utterance through the Triton ASR model (pocketsphinx) as one Triton sequence. A client
stream therefore holds at most one Triton sequence at a time, and sequence ids are unique across
all concurrent streams (random 62-bit ids from the one Triton client). Only speech (plus a short
pre-roll) is sent to Triton, so silence costs no inference.

Why per-utterance sequences: the ASR model finalizes a hypothesis (with word timings) only on
the sequence END flag; one sequence per utterance is how a long stream gets a final result per
utterance. Failures of one utterance are reported as `UtteranceFailed` and the session goes on.

Plain Python: the servicer turns the events into protobuf messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from services.common.errors import ServiceError, unavailable
from services.common.triton import SequenceStream, TritonClient
from services.speech.audio import ASR_SAMPLE_RATE, EnergyVad, StreamResampler

log = logging.getLogger("aimesh.speech.recognition")

PREROLL_SAMPLES = ASR_SAMPLE_RATE * 300 // 1000  # audio kept before the detected onset
# Silence sent after the last loud frame: enough for the decoder to close the last word. The
# rest of a pause is held back (sent only if speech resumes), so endpointing silence costs no
# inference.
TRAIL_SAMPLES = ASR_SAMPLE_RATE * 300 // 1000
# How long an utterance may take to finalize on Triton: generous, because a busy recognizer
# works through a backlog of chunks first; it only guards against a stuck sequence.
FINAL_TIMEOUT_SECONDS = 60.0
OUTPUT_QUEUE_SIZE = 32  # events buffered towards a slow client before we stop reading audio


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds, including the stream's audio_offset
    end: float
    confidence: float


@dataclass(frozen=True)
class SpeechBegan:
    utterance: int
    offset: float


@dataclass(frozen=True)
class SpeechEnded:
    utterance: int
    offset: float  # end of the speech


@dataclass(frozen=True)
class EndOfUtterance:
    utterance: int
    offset: float


@dataclass(frozen=True)
class Hypothesis:
    utterance: int
    text: str
    is_final: bool
    end_offset: float
    stability: float = 0.0  # interim only
    confidence: float = 0.0  # final only
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class UtteranceFailed:
    utterance: int
    error: ServiceError


Event = SpeechBegan | SpeechEnded | EndOfUtterance | Hypothesis | UtteranceFailed


@dataclass(frozen=True)
class RecognitionOptions:
    sample_rate: int
    interim_results: bool = False
    single_utterance: bool = False
    silence_ms: int = 800
    max_utterance_ms: int = 30_000
    audio_offset: float = 0.0
    # Audio per Triton request: small for streams (interim latency), large for files.
    send_chunk_ms: int = 200


# --- helpers ----------------------------------------------------------------------------------


def stability_of(previous: list[str], current: list[str]) -> float:
    """How much of the new hypothesis repeats the last one: a prefix-agreement estimate."""
    if not current:
        return 0.0
    same = 0
    for a, b in zip(previous, current):
        if a != b:
            break
        same += 1
    return round(min(0.9, max(0.1, same / len(current))), 2)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _Utterance:
    """One utterance = one Triton sequence, with a task that reads its responses."""

    def __init__(self, session: RecognitionSession, index: int, first_sample: int) -> None:
        self.session = session
        self.index = index
        self.first_sample = first_sample  # 16 kHz stream index of the sequence's first sample
        self.sent = first_sample
        self.started = False
        self.stream: SequenceStream = session.triton.recognize(idle_timeout=30.0)
        self.final: asyncio.Future[dict[str, np.ndarray]] = (
            asyncio.get_running_loop().create_future()
        )
        self.previous_words: list[str] = []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.stream:
                transcript = response.get("TRANSCRIPT")
                is_final = response.get("IS_FINAL")
                if transcript is None or is_final is None:
                    continue
                if bool(np.asarray(is_final).reshape(-1)[0]):
                    if not self.final.done():
                        self.final.set_result(response.outputs)
                    return
                if not self.session.options.interim_results:
                    continue
                text = _text(np.asarray(transcript).reshape(-1)[0]).strip()
                words = text.split()
                audio_ms = response.get("AUDIO_MS")
                covered = (
                    int(np.asarray(audio_ms).reshape(-1)[0]) / 1000.0
                    if audio_ms is not None
                    else (self.sent - self.first_sample) / ASR_SAMPLE_RATE
                )
                self.session.emit_nowait(
                    Hypothesis(
                        utterance=self.index,
                        text=text,
                        is_final=False,
                        end_offset=self.session.offset_of(self.first_sample) + covered,
                        stability=stability_of(self.previous_words, words),
                    )
                )
                self.previous_words = words
            if not self.final.done():
                self.final.set_exception(
                    unavailable("the recognizer closed the utterance without a final result")
                )
        except ServiceError as exc:
            if not self.final.done():
                self.final.set_exception(exc)
        except asyncio.CancelledError:
            if not self.final.done():
                self.final.cancel()
            raise
        except Exception as exc:  # keep the session alive: the error is this utterance's
            log.exception("recognizer stream failed")
            if not self.final.done():
                self.final.set_exception(unavailable(f"recognizer stream failed: {exc}"))

    async def send(self, samples: np.ndarray, end: bool = False) -> None:
        if self.final.done():
            return  # already failed: the error surfaces when the final is awaited
        inputs: dict[str, np.ndarray] = {"AUDIO": samples.astype(np.int16).reshape(1, -1)}
        if not self.started:
            inputs["SAMPLE_RATE"] = np.array([[ASR_SAMPLE_RATE]], dtype=np.int32)
            self.started = True
        try:
            if end:
                await self.stream.end(inputs)
            else:
                await self.stream.send(inputs)
        except ServiceError as exc:
            if not self.final.done():
                self.final.set_exception(exc)

    async def close(self) -> None:
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.stream.aclose()


# --- the session ------------------------------------------------------------------------------


@dataclass
class RecognitionSession:
    """Feed int16 chunks at `options.sample_rate` with `push()`, then `finish()`; read events
    from `events()`. Bounded queues: when the consumer is slow, `push()` waits (backpressure),
    and interim results, which a later one supersedes anyway, are dropped first."""

    triton: TritonClient
    options: RecognitionOptions
    received_samples: int = 0  # at the input rate; what is metered
    _queue: asyncio.Queue[Event | None] = field(init=False)
    _vad: EnergyVad = field(init=False)
    _resampler: StreamResampler = field(init=False)
    _history: np.ndarray = field(init=False)
    _history_start: int = 0
    _utterance: _Utterance | None = None
    _next_index: int = 0
    done: bool = False  # single_utterance reached its end: stop feeding audio

    def __post_init__(self) -> None:
        self._queue = asyncio.Queue(maxsize=OUTPUT_QUEUE_SIZE)
        self._vad = EnergyVad(self.options.silence_ms, self.options.max_utterance_ms)
        self._resampler = StreamResampler(self.options.sample_rate, ASR_SAMPLE_RATE)
        self._history = np.zeros(0, dtype=np.int16)
        self._send_chunk = ASR_SAMPLE_RATE * self.options.send_chunk_ms // 1000

    @property
    def received_seconds(self) -> float:
        return self.received_samples / float(self.options.sample_rate)

    def offset_of(self, sample16k: int) -> float:
        return self.options.audio_offset + sample16k / ASR_SAMPLE_RATE

    def emit_nowait(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            pass  # interim results only: a newer one follows

    async def _emit(self, event: Event) -> None:
        await self._queue.put(event)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            event = await self._queue.get()
            if event is None:
                return
            yield event

    async def close_events(self) -> None:
        await self._queue.put(None)

    def _slice(self, start: int, stop: int) -> np.ndarray:
        lo = max(start - self._history_start, 0)
        hi = max(stop - self._history_start, 0)
        return self._history[lo:hi]

    async def push(self, samples: np.ndarray) -> None:
        """Feed caller audio (int16 at the input rate)."""
        if self.done:
            return
        self.received_samples += int(samples.size)
        pcm = self._resampler.push(samples)
        await self._process(pcm)

    async def _process(self, pcm: np.ndarray) -> None:
        if pcm.size:
            self._history = (
                np.concatenate([self._history, pcm]) if self._history.size else pcm.copy()
            )
        for position, decision in self._vad.push(pcm):
            if decision.begin_sample is not None and self._utterance is None:
                await self._begin(decision.begin_sample)
            elif decision.end_speech_sample is not None and self._utterance is not None:
                await self._end(position, decision.end_speech_sample)
                if self.done:
                    return
        utterance = self._utterance
        speech_end = self._vad.last_speech_end
        if utterance is not None and speech_end is not None:
            limit = min(self._vad.position, speech_end + TRAIL_SAMPLES)
            if limit - utterance.sent >= self._send_chunk:
                chunk = self._slice(utterance.sent, limit)
                utterance.sent = limit
                await utterance.send(chunk)
        self._trim()

    def _trim(self) -> None:
        keep_from = self._vad.position - PREROLL_SAMPLES
        if self._utterance is not None:
            keep_from = min(keep_from, self._utterance.sent)
        drop = keep_from - self._history_start
        if drop > 0:
            self._history = self._history[drop:]
            self._history_start += drop

    async def _begin(self, begin_sample: int) -> None:
        index = self._next_index
        self._next_index += 1
        first = max(self._history_start, begin_sample - PREROLL_SAMPLES)
        self._utterance = _Utterance(self, index, first)
        await self._emit(SpeechBegan(index, self.offset_of(begin_sample)))

    async def _end(self, position: int, speech_end: int) -> None:
        utterance = self._utterance
        assert utterance is not None
        self._utterance = None
        await self._emit(SpeechEnded(utterance.index, self.offset_of(speech_end)))
        await self._emit(EndOfUtterance(utterance.index, self.offset_of(position)))
        await self._finalize(utterance, position, min(position, speech_end + TRAIL_SAMPLES))
        if self.options.single_utterance:
            self.done = True

    async def _finalize(self, utterance: _Utterance, position: int, send_until: int) -> None:
        """End the utterance's sequence (audio up to `send_until`) and emit its final result,
        which covers the audio up to `position`."""
        tail = self._slice(utterance.sent, max(send_until, utterance.sent))
        if tail.size == 0:
            tail = np.zeros(ASR_SAMPLE_RATE // 100, dtype=np.int16)  # END needs an AUDIO tensor
        utterance.sent = max(send_until, utterance.sent)
        try:
            await utterance.send(tail, end=True)
            outputs = await asyncio.wait_for(asyncio.shield(utterance.final), FINAL_TIMEOUT_SECONDS)
        except TimeoutError:
            await self._emit(
                UtteranceFailed(
                    utterance.index,
                    unavailable("the recognizer did not finalize the utterance in time"),
                )
            )
            return
        except ServiceError as exc:
            await self._emit(UtteranceFailed(utterance.index, exc))
            return
        finally:
            await utterance.close()
        await self._emit(self._final(utterance, position, outputs))

    def _final(
        self, utterance: _Utterance, position: int, outputs: dict[str, np.ndarray]
    ) -> Hypothesis:
        text = _text(np.asarray(outputs["TRANSCRIPT"]).reshape(-1)[0]).strip()
        base = self.offset_of(utterance.first_sample)
        words: list[Word] = []
        raw_words = np.asarray(outputs.get("WORDS", np.zeros(0, dtype=object))).reshape(-1)
        starts = np.asarray(outputs.get("WORD_START_MS", np.zeros(0))).reshape(-1)
        ends = np.asarray(outputs.get("WORD_END_MS", np.zeros(0))).reshape(-1)
        confs = np.asarray(outputs.get("WORD_CONFIDENCE", np.zeros(0))).reshape(-1)
        last_end = base
        for i, raw in enumerate(raw_words):
            # Clamp so timings never run backwards even if the decoder's segments overlap.
            start = max(base + float(starts[i]) / 1000.0, last_end) if i < len(starts) else last_end
            end = max(base + float(ends[i]) / 1000.0, start) if i < len(ends) else start
            conf = float(confs[i]) if i < len(confs) else 0.0
            words.append(Word(_text(raw), round(start, 3), round(end, 3), conf))
            last_end = end
        confidence = float(np.mean([w.confidence for w in words])) if words else 0.0
        return Hypothesis(
            utterance=utterance.index,
            text=text,
            is_final=True,
            end_offset=self.offset_of(position),
            confidence=round(confidence, 3),
            words=tuple(words),
        )

    async def finish(self) -> None:
        """The caller half-closed: finalize the utterance in progress."""
        if not self.done:
            await self._process(self._resampler.flush())
        utterance = self._utterance
        if utterance is not None and not self.done:
            self._utterance = None
            # Everything received so far, including the VAD's partial last frame.
            position = self._history_start + len(self._history)
            await self._emit(SpeechEnded(utterance.index, self.offset_of(position)))
            await self._emit(EndOfUtterance(utterance.index, self.offset_of(position)))
            await self._finalize(utterance, position, position)

    async def abort(self) -> None:
        """Stop without finalizing (client went away, fatal error)."""
        utterance, self._utterance = self._utterance, None
        if utterance is not None:
            await utterance.close()


class ReadinessCache:
    """Whether a model answered ready recently: checked when a stream starts, cached briefly so
    a burst of new streams does not turn into a burst of readiness calls."""

    def __init__(self, triton: TritonClient, model: str, ttl: float = 2.0) -> None:
        self.triton = triton
        self.model = model
        self.ttl = ttl
        self._checked = 0.0
        self._ready = False

    async def ready(self) -> bool:
        now = time.monotonic()
        if now - self._checked > self.ttl or not self._ready:
            self._ready = await self.triton.is_model_ready(self.model)
            self._checked = now
        return self._ready


async def run_session(session: RecognitionSession, chunks: AsyncIterator[np.ndarray]) -> None:
    """Feed a session from checked audio; a fatal intake error (limit, bad chunk) first
    finalizes the utterance in progress, then ends the stream with that status."""
    try:
        try:
            async for pcm in chunks:
                await session.push(pcm)
                if session.done:
                    break
        except ServiceError:
            await session.finish()
            raise
        await session.finish()
    finally:
        await session.close_events()
