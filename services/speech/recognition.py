"""Streaming recognition: caller audio in, speech events and interim/final results out.

A `RecognitionSession` segments the caller's audio into utterances with an energy VAD and runs
the whole client stream through ONE Triton ASR sequence (pocketsphinx): the last chunk of each
utterance carries END_OF_UTTERANCE, which makes the model send that utterance's final result
(word timings from the sequence start) and start the next utterance on the same decoder; the
caller's half-close sends END. Sequence ids are random 62-bit ids from the one Triton client.
Only speech (plus a short pre-roll and trail) is sent, so silence costs no inference; the sample
map (stream position of each utterance vs. its position in the sequence) turns sequence timings
back into stream timings. A long pause is bridged with a tiny keep-alive chunk so neither the
client's idle timer nor Triton's sequence idle timeout closes the sequence.

A failed utterance (Triton error, no final in time) is reported as `UtteranceFailed` and the
session goes on; its sequence is then unusable, so it is abandoned and the next utterance opens
a new one: a stream never holds more than one sequence at a time, and only ever replaces it after
a failure.

Plain Python: the servicer turns the events into protobuf messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
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
# A sequence with nothing to send (a pause between utterances) gets a 10 ms silent chunk this
# often: well inside the client's idle timer and Triton's 30 s max_sequence_idle_microseconds.
KEEPALIVE_SECONDS = 10.0
KEEPALIVE_SAMPLES = ASR_SAMPLE_RATE // 100
IDLE_TIMEOUT_SECONDS = 30.0
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
    """One utterance: where it starts in the stream and in the sequence, and its final."""

    def __init__(self, index: int, first_sample: int) -> None:
        self.index = index
        self.first_sample = first_sample  # 16 kHz stream index of the utterance's first sample
        self.sent = first_sample  # stream index up to which its audio went to Triton
        self.sequence_start: int | None = None  # sequence sample of first_sample, once sent
        self.final: asyncio.Future[dict[str, np.ndarray]] = (
            asyncio.get_running_loop().create_future()
        )
        self.previous_words: list[str] = []

    def fail(self, error: ServiceError) -> None:
        if not self.final.done():
            self.final.set_exception(error)
            self.final.exception()  # retrieved: a failure nobody awaits must not be logged


class _Recognizer:
    """The stream's one Triton ASR sequence, with a task that reads its responses.

    Responses of one sequence arrive in order, and the session waits for an utterance's final
    before sending the next utterance's audio, so the next IS_FINAL response always belongs to
    the oldest utterance that sent END_OF_UTTERANCE (`awaiting`)."""

    def __init__(self, session: RecognitionSession) -> None:
        self.session = session
        self.stream: SequenceStream = session.triton.recognize(idle_timeout=IDLE_TIMEOUT_SECONDS)
        self.sent = 0  # samples sent on the sequence
        self.last_send = time.monotonic()
        self.current: _Utterance | None = None  # gets the interim results
        self.awaiting: deque[_Utterance] = deque()  # flushed, final not yet received
        self.error: ServiceError | None = None
        self.ended = False
        self._lock = asyncio.Lock()  # one chunk at a time: keeps `sent` equal to the sequence
        self.reader = asyncio.ensure_future(self._read())
        self.keepalive = asyncio.ensure_future(self._keep_alive())

    @property
    def usable(self) -> bool:
        return self.error is None and not self.ended

    def _fail(self, error: ServiceError) -> None:
        if self.error is None:
            self.error = error
        for utterance in (*self.awaiting, self.current):
            if utterance is not None:
                utterance.fail(error)
        self.awaiting.clear()

    async def _read(self) -> None:
        try:
            async for response in self.stream:
                transcript = response.get("TRANSCRIPT")
                is_final = response.get("IS_FINAL")
                if transcript is None or is_final is None:
                    continue
                if bool(np.asarray(is_final).reshape(-1)[0]):
                    if self.awaiting:  # else: the flush of keep-alive silence at END
                        flushed = self.awaiting.popleft()
                        if not flushed.final.done():
                            flushed.final.set_result(response.outputs)
                    continue
                current = self.current
                if current is None or not self.session.options.interim_results:
                    continue
                self._interim(current, response.outputs)
            if self.awaiting or self.current is not None:
                self._fail(unavailable("the recognizer closed the stream without a final result"))
        except ServiceError as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            self._fail(unavailable("the recognizer stream was closed"))
            raise
        except Exception as exc:  # keep the session alive: the error is this utterance's
            log.exception("recognizer stream failed")
            self._fail(unavailable(f"recognizer stream failed: {exc}"))

    def _interim(self, utterance: _Utterance, outputs: dict[str, np.ndarray]) -> None:
        text = _text(np.asarray(outputs["TRANSCRIPT"]).reshape(-1)[0]).strip()
        words = text.split()
        audio_ms = outputs.get("AUDIO_MS")
        start = utterance.sequence_start or 0
        covered = (
            int(np.asarray(audio_ms).reshape(-1)[0]) / 1000.0 - start / ASR_SAMPLE_RATE
            if audio_ms is not None
            else (utterance.sent - utterance.first_sample) / ASR_SAMPLE_RATE
        )
        self.session.emit_nowait(
            Hypothesis(
                utterance=utterance.index,
                text=text,
                is_final=False,
                end_offset=self.session.offset_of(utterance.first_sample) + max(covered, 0.0),
                stability=stability_of(utterance.previous_words, words),
            )
        )
        utterance.previous_words = words

    async def send(
        self,
        samples: np.ndarray,
        utterance: _Utterance | None,
        *,
        end_of_utterance: bool = False,
        end: bool = False,
    ) -> None:
        """Send one chunk (of `utterance`, or keep-alive silence when None); errors fail the
        utterances involved, never the session."""
        async with self._lock:
            if not self.usable:
                if utterance is not None and self.error is not None:
                    utterance.fail(self.error)
                return
            if utterance is not None:
                if utterance.sequence_start is None:
                    utterance.sequence_start = self.sent
                if end_of_utterance or end:
                    self.awaiting.append(utterance)
            inputs: dict[str, np.ndarray] = {"AUDIO": samples.astype(np.int16).reshape(1, -1)}
            if self.sent == 0:
                inputs["SAMPLE_RATE"] = np.array([[ASR_SAMPLE_RATE]], dtype=np.int32)
            self.sent += int(samples.size)
            self.last_send = time.monotonic()
            try:
                if end:
                    self.ended = True
                    await self.stream.end(inputs)
                else:
                    await self.stream.send(inputs, end_of_utterance=end_of_utterance)
            except ServiceError as exc:
                self._fail(exc)

    async def _keep_alive(self) -> None:
        # Between utterances nothing is sent; a long pause would let the sequence time out.
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS / 2)
            idle = time.monotonic() - self.last_send
            if idle >= KEEPALIVE_SECONDS and self.current is None and not self.awaiting:
                await self.send(np.zeros(KEEPALIVE_SAMPLES, dtype=np.int16), None)

    async def end(self) -> None:
        """Caller done and no utterance in progress: END the sequence (nothing left to report)."""
        if self.usable and self.sent:
            await self.send(np.zeros(0, dtype=np.int16), None, end=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.reader), 10.0)

    async def close(self) -> None:
        for task in (self.keepalive, self.reader):
            task.cancel()
        await asyncio.gather(self.keepalive, self.reader, return_exceptions=True)
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
    _recognizer: _Recognizer | None = None
    _sent_until: int = 0  # stream sample up to which audio went to Triton (never resent)
    _last_word_end: float = 0.0
    _next_index: int = 0
    sequences_opened: int = 0  # 1 for a healthy stream; more only after failed utterances
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
                utterance.sent = self._sent_until = limit
                await self._send(utterance, chunk)
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
        first = max(self._history_start, begin_sample - PREROLL_SAMPLES, self._sent_until)
        utterance = _Utterance(index, first)
        recognizer = self._recognizer
        if recognizer is None or not recognizer.usable:
            if recognizer is not None:  # failed: abandon it (Triton frees it at once)
                await recognizer.close()
            recognizer = self._recognizer = _Recognizer(self)
            self.sequences_opened += 1
        recognizer.current = utterance
        self._utterance = utterance
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

    async def _send(
        self, utterance: _Utterance, samples: np.ndarray, *, last: bool = False, end: bool = False
    ) -> None:
        recognizer = self._recognizer
        if recognizer is None:  # aborted
            utterance.fail(unavailable("the recognition session was aborted"))
            return
        if last or end:
            recognizer.current = None
        await recognizer.send(samples, utterance, end_of_utterance=last and not end, end=end)

    async def _finalize(
        self, utterance: _Utterance, position: int, send_until: int, *, end: bool = False
    ) -> None:
        """Flush the utterance (audio up to `send_until`; END_OF_UTTERANCE, or END when the
        caller is done) and emit its final result, which covers the audio up to `position`."""
        tail = self._slice(utterance.sent, max(send_until, utterance.sent))
        if tail.size == 0 and utterance.sequence_start is None:
            tail = np.zeros(ASR_SAMPLE_RATE // 100, dtype=np.int16)  # an utterance needs audio
        utterance.sent = max(send_until, utterance.sent)
        self._sent_until = max(self._sent_until, utterance.sent)
        try:
            await self._send(utterance, tail, last=True, end=end)
            outputs = await asyncio.wait_for(asyncio.shield(utterance.final), FINAL_TIMEOUT_SECONDS)
        except TimeoutError:
            # A late final would be taken for the next utterance's: drop this sequence.
            error = unavailable("the recognizer did not finalize the utterance in time")
            if self._recognizer is not None:
                self._recognizer._fail(error)
            await self._emit(UtteranceFailed(utterance.index, error))
            return
        except ServiceError as exc:
            await self._emit(UtteranceFailed(utterance.index, exc))
            return
        await self._emit(self._final(utterance, position, outputs))

    def _final(
        self, utterance: _Utterance, position: int, outputs: dict[str, np.ndarray]
    ) -> Hypothesis:
        text = _text(np.asarray(outputs["TRANSCRIPT"]).reshape(-1)[0]).strip()
        # Timings count from the sequence start; the utterance's audio began at sequence_start.
        start_in_sequence = (utterance.sequence_start or 0) / ASR_SAMPLE_RATE
        base = self.offset_of(utterance.first_sample) - start_in_sequence
        words: list[Word] = []
        raw_words = np.asarray(outputs.get("WORDS", np.zeros(0, dtype=object))).reshape(-1)
        starts = np.asarray(outputs.get("WORD_START_MS", np.zeros(0))).reshape(-1)
        ends = np.asarray(outputs.get("WORD_END_MS", np.zeros(0))).reshape(-1)
        confs = np.asarray(outputs.get("WORD_CONFIDENCE", np.zeros(0))).reshape(-1)
        last_end = max(self.offset_of(utterance.first_sample), self._last_word_end)
        for i, raw in enumerate(raw_words):
            # Clamp so timings never run backwards even if the decoder's segments overlap.
            start = max(base + float(starts[i]) / 1000.0, last_end) if i < len(starts) else last_end
            end = max(base + float(ends[i]) / 1000.0, start) if i < len(ends) else start
            conf = float(confs[i]) if i < len(confs) else 0.0
            words.append(Word(_text(raw), round(start, 3), round(end, 3), conf))
            last_end = end
        self._last_word_end = last_end
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
            await self._finalize(utterance, position, position, end=True)
        elif self._recognizer is not None:
            await self._recognizer.end()
        recognizer, self._recognizer = self._recognizer, None
        if recognizer is not None:
            await recognizer.close()

    async def abort(self) -> None:
        """Stop without finalizing (client went away, fatal error); idempotent."""
        self._utterance = None
        recognizer, self._recognizer = self._recognizer, None
        if recognizer is not None:
            await recognizer.close()


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
