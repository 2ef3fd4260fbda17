"""Streaming recognition: caller audio in, speech events and interim/final results out.

A `RecognitionSession` runs the whole client stream through ONE Triton ASR sequence
(pocketsphinx): every sample goes to the recognizer, in order, as it arrives. A voice activity
detector (pocketsphinx's WebRTC classifier, audio.SpeechDetector) decides only where utterances
end: the chunk at the end of an utterance carries END_OF_UTTERANCE, which makes the model send that
utterance's final result (word timings from the sequence start) and start the next utterance on
the same decoder; the caller's half-close sends END with the last samples. Since nothing is held
back or dropped, the recognizer decodes exactly the audio the engine would be given for the
whole stream, and sequence timings are stream timings (shifted by where the sequence began).
Sequence ids are random 62-bit ids from the one Triton client.

A failed utterance (Triton error, no final in time) is reported as `UtteranceFailed` and the
session goes on; its sequence is then unusable, so it is abandoned and the next utterance opens
a new one: a stream never holds more than one sequence at a time, and only ever replaces it after
a failure.

Plain Python: the servicer turns the events into protobuf messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import asdict, dataclass, field

import numpy as np

from services.common.cache import ServiceCache
from services.common.errors import FieldViolations, ServiceError, unavailable
from services.common.identity import Identity
from services.common.triton import ASR_MODEL, SequenceStream, TritonClient
from services.common.usage_client import ResourceType, UsageClient
from services.speech import metrics as speech_metrics
from services.speech.audio import ASR_SAMPLE_RATE, SpeechDetector, StreamResampler
from services.speech.requests import StreamAudio

log = logging.getLogger("aimesh.speech.recognition")

# How long an utterance may take to finalize on Triton: generous, because a busy recognizer
# works through a backlog of chunks first; it only guards against a stuck sequence.
FINAL_TIMEOUT_SECONDS = 60.0
# Longer than the callers' own idle limits (10 s StreamingRecognize, 30 s Converse), and longer
# than FINAL_TIMEOUT_SECONDS: the session sends nothing while it waits for a final, so on an
# overloaded recognizer a shorter idle limit closed the stream before the final came (12 streams
# bursting the same audio beside 2 spinning processes: 3 failed "no audio for 40s", 9 answered).
IDLE_TIMEOUT_SECONDS = FINAL_TIMEOUT_SECONDS + 10.0
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
class SpeechStartTimeout:
    utterance: int
    offset: float  # where the wait for speech ran out


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


Event = (
    SpeechBegan | SpeechEnded | EndOfUtterance | SpeechStartTimeout | Hypothesis | UtteranceFailed
)


@dataclass(frozen=True)
class RecognitionOptions:
    sample_rate: int
    interim_results: bool = False
    single_utterance: bool = False
    silence_ms: int = 500
    max_utterance_ms: int = 30_000
    # 0: wait for speech forever; else end the stream when no speech begins this long after
    # the stream starts or the previous utterance ends.
    speech_start_timeout_ms: int = 0
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
    """One utterance: a stretch of the stream from the end of the previous utterance to its
    own end of utterance, all of it sent to the recognizer, and its final result."""

    def __init__(self, index: int, first_sample: int) -> None:
        self.index = index
        self.first_sample = first_sample  # 16 kHz stream index where the utterance's audio starts
        self.began = False  # the VAD heard speech in it (SPEECH_BEGIN was emitted)
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
    before sending more audio, so the next IS_FINAL response always belongs to the utterance
    that sent END_OF_UTTERANCE (`awaiting`)."""

    def __init__(self, session: RecognitionSession, origin: int) -> None:
        self.session = session
        self.origin = origin  # stream sample of the sequence's first sample
        self.stream: SequenceStream = session.triton.recognize(idle_timeout=IDLE_TIMEOUT_SECONDS)
        self.sent = 0  # samples sent on the sequence
        self.current: _Utterance | None = None  # gets the interim results
        self.awaiting: deque[_Utterance] = deque()  # flushed, final not yet received
        self.error: ServiceError | None = None
        self.ended = False
        self.reader = asyncio.ensure_future(self._read())

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
                    if self.awaiting:
                        flushed = self.awaiting.popleft()
                        if not flushed.final.done():
                            flushed.final.set_result(response.outputs)
                    continue
                current = self.current
                if current is not None and current.began and self.session.options.interim_results:
                    self._interim(current, response.outputs)
            if self.awaiting:
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
        covered = (
            int(np.asarray(audio_ms).reshape(-1)[0]) * ASR_SAMPLE_RATE // 1000
            if audio_ms is not None
            else self.sent
        )
        self.session.emit_nowait(
            Hypothesis(
                utterance=utterance.index,
                text=text,
                is_final=False,
                end_offset=self.session.offset_of(self.origin + covered),
                stability=stability_of(utterance.previous_words, words),
            )
        )
        utterance.previous_words = words

    async def send(
        self, samples: np.ndarray, utterance: _Utterance, *, flush: bool = False, end: bool = False
    ) -> None:
        """Send one chunk of `utterance`; `flush` asks for its final (END_OF_UTTERANCE, or END
        with `end`). Errors fail the utterances involved, never the session."""
        if not self.usable:
            if self.error is not None:
                utterance.fail(self.error)
            return
        self.current = None if flush else utterance
        if flush:
            self.awaiting.append(utterance)
        inputs: dict[str, np.ndarray] = {"AUDIO": samples.astype(np.int16).reshape(1, -1)}
        if self.sent == 0:
            inputs["SAMPLE_RATE"] = np.array([[ASR_SAMPLE_RATE]], dtype=np.int32)
            # No interim hypotheses when the caller does not want them (less work per chunk).
            inputs["INTERIM"] = np.array([[self.session.options.interim_results]], dtype=bool)
        self.sent += int(samples.size)
        try:
            if end:
                self.ended = True
                await self.stream.end(inputs)
            else:
                await self.stream.send(inputs, end_of_utterance=flush)
        except ServiceError as exc:
            self._fail(exc)

    async def close(self) -> None:
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.stream.aclose()


# --- the session ------------------------------------------------------------------------------


@dataclass
class RecognitionSession:
    """Feed int16 chunks at `options.sample_rate` with `push()`, then `finish()`; read events
    from `events()`. Bounded queues: when the consumer is slow, `push()` waits (backpressure),
    and interim results, which a later one supersedes anyway, are dropped first.

    Every sample goes to the recognizer, in order, as soon as a chunk's worth is there; the
    VAD only decides where an utterance ends (END_OF_UTTERANCE), so the recognizer sees the
    same audio as the engine fed the whole stream."""

    triton: TritonClient
    options: RecognitionOptions
    received_samples: int = 0  # at the input rate; what is metered
    _queue: asyncio.Queue[Event | None] = field(init=False)
    _vad: SpeechDetector = field(init=False)
    _resampler: StreamResampler = field(init=False)
    _pending: np.ndarray = field(init=False)  # resampled audio not yet sent
    _position: int = 0  # 16 kHz stream samples received (sent + pending)
    _utterance: _Utterance | None = None
    _recognizer: _Recognizer | None = None
    _last_word_end: float = 0.0
    _next_index: int = 0
    _listening_since: int = 0  # stream sample where waiting for speech (re)started
    sequences_opened: int = 0  # 1 for a healthy stream; more only after failed utterances
    done: bool = False  # single_utterance reached its end, or speech_start_timeout: stop feeding

    def __post_init__(self) -> None:
        self._queue = asyncio.Queue(maxsize=OUTPUT_QUEUE_SIZE)
        self._vad = SpeechDetector(self.options.silence_ms, self.options.max_utterance_ms)
        self._resampler = StreamResampler(self.options.sample_rate, ASR_SAMPLE_RATE)
        self._pending = np.zeros(0, dtype=np.int16)
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

    async def push(self, samples: np.ndarray) -> None:
        """Feed caller audio (int16 at the input rate)."""
        if self.done:
            return
        self.received_samples += int(samples.size)
        await self._process(self._resampler.push(samples))

    async def _process(self, pcm: np.ndarray) -> None:
        self._position += int(pcm.size)
        self._pending = np.concatenate([self._pending, pcm]) if self._pending.size else pcm.copy()
        for position, decision in self._vad.push(pcm):
            if decision.begin_sample is not None:
                await self._begin(decision.begin_sample)
            elif decision.end_speech_sample is not None and self._utterance is not None:
                await self._end(position, decision.end_speech_sample)
                if self.done:
                    return
        if self._speech_start_timed_out():
            index = self._open_utterance().index
            await self._emit(SpeechStartTimeout(index, self.offset_of(self._position)))
            await self._finish_utterance(self._position)
            self.done = True
            return
        if self._idle_too_long():
            # A long stretch without speech is still decoded, in bounded pieces: a decoder's
            # utterance (and the work at its end) must not grow with a silent caller.
            await self._finish_utterance(self._position)
        elif self._pending.size >= self._send_chunk or (self._vad.pausing and self._pending.size):
            # In a pause every chunk goes at once: when the silence then ends the utterance,
            # the recognizer has little audio left to decode before its final.
            await self._send(self._pending.size, self._open_utterance())

    def _speech_start_timed_out(self) -> bool:
        limit = self.options.speech_start_timeout_ms * ASR_SAMPLE_RATE // 1000
        waiting = self._utterance is None or not self._utterance.began
        return limit > 0 and waiting and self._position - self._listening_since >= limit

    def _idle_too_long(self) -> bool:
        utterance = self._utterance
        limit = self.options.max_utterance_ms * ASR_SAMPLE_RATE // 1000
        return (
            utterance is not None
            and not utterance.began
            and self._position - utterance.first_sample >= limit
        )

    def _open_utterance(self) -> _Utterance:
        if self._utterance is None:
            first = self._position - self._pending.size  # the first sample not yet sent
            self._utterance = _Utterance(self._next_index, first)
            self._next_index += 1
        return self._utterance

    async def _begin(self, begin_sample: int) -> None:
        utterance = self._open_utterance()
        if not utterance.began:
            utterance.began = True
            await self._emit(SpeechBegan(utterance.index, self.offset_of(begin_sample)))

    async def _end(self, position: int, speech_end: int) -> None:
        utterance = self._utterance
        assert utterance is not None
        await self._emit(SpeechEnded(utterance.index, self.offset_of(speech_end)))
        await self._emit(EndOfUtterance(utterance.index, self.offset_of(position)))
        await self._finish_utterance(position)
        self._listening_since = position
        if self.options.single_utterance:
            self.done = True

    def _recognizer_for(self, origin: int) -> _Recognizer:
        """The stream's sequence; a new one only after the previous one failed."""
        recognizer = self._recognizer
        if recognizer is None or not recognizer.usable:
            if recognizer is not None:  # failed: abandon it (Triton frees it at once)
                asyncio.ensure_future(recognizer.close())
            recognizer = self._recognizer = _Recognizer(self, origin)
            self.sequences_opened += 1
        return recognizer

    async def _send(
        self, count: int, utterance: _Utterance, *, flush: bool = False, end: bool = False
    ) -> None:
        """Send the first `count` pending samples as part of `utterance`."""
        chunk, self._pending = self._pending[:count], self._pending[count:]
        first = self._position - self._pending.size - chunk.size
        recognizer = self._recognizer_for(first)
        if (flush or end) and chunk.size == 0 and recognizer.sent == 0:
            chunk = np.zeros(ASR_SAMPLE_RATE // 100, dtype=np.int16)  # a sequence needs audio
        await recognizer.send(chunk, utterance, flush=flush or end, end=end)

    async def _finish_utterance(self, position: int, *, end: bool = False) -> None:
        """Send the audio up to `position` with END_OF_UTTERANCE (END when the caller is done)
        and emit the utterance's final result."""
        utterance = self._open_utterance()
        self._utterance = None
        count = self._pending.size - (self._position - position)
        await self._send(count, utterance, flush=True, end=end)
        recognizer = self._recognizer
        try:
            outputs = await asyncio.wait_for(asyncio.shield(utterance.final), FINAL_TIMEOUT_SECONDS)
        except TimeoutError:
            # A late final would be taken for the next utterance's: drop this sequence.
            error = unavailable("the recognizer did not finalize the utterance in time")
            if recognizer is not None:
                recognizer._fail(error)
            if utterance.began:
                await self._emit(UtteranceFailed(utterance.index, error))
            return
        except ServiceError as exc:
            if utterance.began:
                await self._emit(UtteranceFailed(utterance.index, exc))
            return
        final = self._final(utterance, recognizer, position, outputs)
        if utterance.began or final.text:
            await self._emit(final)

    def _final(
        self,
        utterance: _Utterance,
        recognizer: _Recognizer | None,
        position: int,
        outputs: dict[str, np.ndarray],
    ) -> Hypothesis:
        text = _text(np.asarray(outputs["TRANSCRIPT"]).reshape(-1)[0]).strip()
        # Timings count from the sequence start, which is `origin` on the stream.
        base = self.offset_of(recognizer.origin if recognizer is not None else 0)
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

    def utterance_in_progress(self) -> int | None:
        """The index of the utterance whose speech began and has not ended, if any."""
        utterance = self._utterance
        return utterance.index if utterance is not None and utterance.began else None

    async def end_utterance(self) -> None:
        """End the utterance in progress where the audio received so far ends, as if silence
        had ended it (the caller dropped it); the VAD then listens for speech afresh."""
        if self.utterance_in_progress() is None:
            return
        self._vad.restart()
        await self._end(self._position, self._position)

    async def finish(self) -> None:
        """The caller half-closed: every sample still pending goes to the recognizer with END,
        and the utterance in progress (if any) gets its final."""
        if not self.done:
            await self._process(self._resampler.flush())
        utterance = self._utterance
        if not self.done and (utterance is not None or self._pending.size):
            if utterance is not None and utterance.began:
                await self._emit(SpeechEnded(utterance.index, self.offset_of(self._position)))
                await self._emit(EndOfUtterance(utterance.index, self.offset_of(self._position)))
            await self._finish_utterance(self._position, end=True)
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
    a burst of new streams does not turn into a burst of readiness calls. A "not ready" is asked
    again for up to `grace` seconds before it stands: one slow or failed readiness call (a fresh
    CI run once refused the first stream after a cold start this way) must not refuse a stream
    the model can serve; a model that is really gone is still refused, a moment later."""

    RETRY_SECONDS = 0.25

    def __init__(
        self, triton: TritonClient, model: str, ttl: float = 2.0, grace: float = 3.0
    ) -> None:
        self.triton = triton
        self.model = model
        self.ttl = ttl
        self.grace = grace
        self._checked = 0.0
        self._ready = False

    async def ready(self) -> bool:
        if self._ready and time.monotonic() - self._checked <= self.ttl:
            return True
        deadline = time.monotonic() + self.grace
        while True:
            self._ready = await self.triton.is_model_ready(self.model)
            self._checked = time.monotonic()
            if self._ready or self._checked >= deadline:
                if not self._ready:
                    log.warning("Triton model %s not ready for %.1fs", self.model, self.grace)
                return self._ready
            await asyncio.sleep(self.RETRY_SECONDS)


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


# --- the recognition activity: streams and whole files, metered ---------------------------------

RECOGNIZE_CACHE_SECONDS = 24 * 3600  # how long a Recognize request_id replays its result


@dataclass(frozen=True)
class Heard:
    """A stream event and how much caller audio had been received when it was emitted."""

    event: Event
    received_seconds: float


@dataclass(frozen=True)
class FileResult:
    """Recognize's answer: the non-empty final of every utterance of the file, in order."""

    finals: tuple[Hypothesis, ...]
    audio_seconds: float

    def dumps(self) -> str:
        finals = [asdict(h) for h in self.finals]
        return json.dumps({"audio_seconds": self.audio_seconds, "finals": finals})

    @classmethod
    def loads(cls, raw: str | bytes) -> FileResult:
        data = json.loads(raw)
        finals = tuple(
            Hypothesis(**{**h, "words": tuple(Word(**w) for w in h["words"])})
            for h in data["finals"]
        )
        return cls(finals, float(data["audio_seconds"]))


def streaming_options(
    v: FieldViolations,
    audio: StreamAudio,
    *,
    interim_results: bool,
    single_utterance: bool,
    audio_offset: float,
) -> RecognitionOptions:
    """StreamingRecognize's session options; every problem of the first message at once."""
    v.check(audio_offset >= 0, "streaming_config.audio_offset", "must not be negative")
    v.raise_if_any()
    return RecognitionOptions(
        sample_rate=audio.sample_rate,
        interim_results=interim_results,
        single_utterance=single_utterance,
        silence_ms=audio.silence_ms,
        max_utterance_ms=audio.max_utterance_ms,
        speech_start_timeout_ms=audio.speech_start_timeout_ms,
        audio_offset=audio_offset,
    )


async def _file_chunks(samples: np.ndarray, step: int) -> AsyncIterator[np.ndarray]:
    for i in range(0, len(samples), step):
        yield samples[i : i + step]


class Recognition:
    """Recognition for callers: a live stream's events, or a whole file's finals (replayed for a
    repeated request_id); the audio received is metered to the caller either way."""

    def __init__(
        self, triton: TritonClient, usage: UsageClient, cache: ServiceCache | None
    ) -> None:
        self.triton = triton
        self.usage = usage
        self.cache = cache
        self.ready = ReadinessCache(triton, ASR_MODEL)

    async def require_ready(self) -> None:
        if not await self.ready.ready():
            raise unavailable(
                "the speech recognizer (Triton model speech_recognition) is not reachable; "
                "retry shortly",
                reason="RECOGNIZER_UNAVAILABLE",
            )

    async def warm_up(self) -> bool:
        """Recognize half a second of silence on a sequence of its own: True when the model
        answered with a final."""
        async with self.triton.recognize() as stream:
            await stream.end(
                {
                    "AUDIO": np.zeros((1, ASR_SAMPLE_RATE // 2), dtype=np.int16),
                    "SAMPLE_RATE": np.array([[ASR_SAMPLE_RATE]], dtype=np.int32),
                }
            )
            finals = [r async for r in stream if r.get("IS_FINAL") is not None]
        return bool(finals)

    async def stream(
        self, identity: Identity, options: RecognitionOptions, chunks: AsyncIterator[np.ndarray]
    ) -> AsyncGenerator[Heard, None]:
        """The session's events as the caller's audio arrives; a fatal intake error (limit, bad
        chunk) ends it with that status once the utterance in progress has its final. Use it
        under `contextlib.aclosing`, so the audio is metered when the caller leaves."""
        await self.require_ready()
        session = RecognitionSession(self.triton, options)
        pump = asyncio.ensure_future(run_session(session, chunks))
        try:
            with speech_metrics.active_stream("StreamingRecognize"):
                async for event in session.events():
                    yield Heard(event, session.received_seconds)
                await pump
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            await session.abort()
            speech_metrics.record_audio("StreamingRecognize", session.received_seconds)
            await self.usage.meter(
                identity, ResourceType.RESOURCE_TYPE_AUDIO_SECONDS, session.received_seconds, ""
            )

    async def recognize(
        self, identity: Identity, samples: np.ndarray, rate: int, request_id: str, fingerprint: str
    ) -> FileResult:
        """A whole file's finals. A repeated `request_id` with the same request (`fingerprint`)
        replays the first answer, metered once; a failed utterance fails the whole answer."""
        key = (
            # v2: the answer is stored as FileResult JSON (v1 entries held a protobuf message)
            self.cache.key("recognize", "v2", identity.org, request_id, fingerprint)
            if self.cache is not None and request_id
            else None
        )
        if key is not None and self.cache is not None:
            stored = await self.cache.redis.get(key)
            if stored:
                return FileResult.loads(stored)
        await self.require_ready()
        started = time.perf_counter()
        try:
            result = await self._decode_file(samples, rate)
        finally:
            audio_seconds = len(samples) / rate
            speech_metrics.record_realtime_factor(time.perf_counter() - started, audio_seconds)
            speech_metrics.record_audio("Recognize", audio_seconds)
        if key is not None and self.cache is not None:
            await self.cache.redis.set(key, result.dumps(), ex=RECOGNIZE_CACHE_SECONDS)
        await self.usage.meter(
            identity, ResourceType.RESOURCE_TYPE_AUDIO_SECONDS, result.audio_seconds, request_id
        )
        return result

    async def _decode_file(self, samples: np.ndarray, rate: int) -> FileResult:
        session = RecognitionSession(
            self.triton, RecognitionOptions(sample_rate=rate, send_chunk_ms=1000)
        )
        pump = asyncio.ensure_future(run_session(session, _file_chunks(samples, rate)))
        finals: list[Hypothesis] = []
        failure: ServiceError | None = None
        try:
            async for event in session.events():
                if isinstance(event, Hypothesis) and event.is_final and event.text:
                    finals.append(event)
                elif isinstance(event, UtteranceFailed):
                    failure = failure or event.error
            await pump
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            await session.abort()
        if failure is not None:
            # A whole-file answer with a hole in it is wrong: fail, and let the caller retry.
            raise unavailable(f"recognition failed: {failure.message}", reason="RECOGNITION_FAILED")
        return FileResult(tuple(finals), len(samples) / rate)
