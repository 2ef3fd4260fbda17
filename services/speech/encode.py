"""Speech domain events -> speech.v1 messages (shared by StreamingRecognize and Converse)."""

from __future__ import annotations

from aimesh.speech.v1 import speech_pb2

from services.speech.recognition import (
    EndOfUtterance,
    Event,
    Hypothesis,
    SpeechBegan,
    SpeechEnded,
    SpeechStartTimeout,
)
from services.speech.requests import duration

LANGUAGE = "en-US"

SPEECH_EVENTS = {
    SpeechBegan: speech_pb2.SPEECH_EVENT_TYPE_SPEECH_BEGIN,
    SpeechEnded: speech_pb2.SPEECH_EVENT_TYPE_SPEECH_END,
    EndOfUtterance: speech_pb2.SPEECH_EVENT_TYPE_END_OF_UTTERANCE,
    SpeechStartTimeout: speech_pb2.SPEECH_EVENT_TYPE_SPEECH_START_TIMEOUT,
}


def alternative(h: Hypothesis, with_words: bool) -> speech_pb2.SpeechRecognitionAlternative:
    alt = speech_pb2.SpeechRecognitionAlternative(transcript=h.text, confidence=h.confidence)
    if with_words:
        for w in h.words:
            alt.words.add(
                word=w.word,
                start_offset=duration(w.start),
                end_offset=duration(w.end),
                confidence=w.confidence,
            )
    return alt


def streaming_result(h: Hypothesis, with_words: bool) -> speech_pb2.StreamingRecognitionResult:
    return speech_pb2.StreamingRecognitionResult(
        alternatives=[alternative(h, with_words and h.is_final)],
        is_final=h.is_final,
        stability=h.stability,
        result_end_offset=duration(h.end_offset),
        utterance_index=h.utterance,
        language_code=LANGUAGE,
    )


def speech_event_of(event: Event) -> tuple[int, float] | None:
    kind = SPEECH_EVENTS.get(type(event))
    if kind is None:
        return None
    return kind, event.offset  # type: ignore[union-attr]
