"""Request checking for Speech: configs -> domain options (or INVALID_ARGUMENT naming every bad
field), the published limits, and the audio intake that enforces them on a stream.

The limits here are the ones speech.proto documents; change both together.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from aimesh.speech.v1 import speech_pb2
from google.protobuf import duration_pb2

from services.common.errors import FieldViolations, invalid_argument, out_of_range
from services.common.streams import CLIENT_STREAM_IDLE_SECONDS, next_message
from services.speech import codecs
from services.speech.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, AudioFormatError
from services.speech.synthesis import NATURAL_SAMPLE_RATE

SUPPORTED_LANGUAGES = ("en-US",)

# StreamingRecognize
STREAM_MAX_SECONDS = 300.0
STREAM_IDLE_SECONDS = CLIENT_STREAM_IDLE_SECONDS
# Converse
CONVERSE_MAX_SECONDS = 1800.0
CONVERSE_IDLE_SECONDS = 30.0
# Both streams
MAX_CHUNK_BYTES = 32768
DEFAULT_SILENCE_MS = 500  # endpointing silence when the stream does not set one
# Recognize
RECOGNIZE_MAX_BYTES = 10 * 1024 * 1024
RECOGNIZE_MAX_SECONDS = 60.0
# Synthesis
SYNTHESIZE_MAX_CHARS = 5000
STREAMING_SYNTHESIZE_MAX_CHARS = 20000
MAX_REQUEST_ID = 64

_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")


def seconds(value: duration_pb2.Duration) -> float:
    return value.seconds + value.nanos / 1e9


def duration(value: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(round(max(value, 0.0) * 1e9))
    return out


@dataclass(frozen=True)
class StreamAudio:
    """A stream's caller-audio settings after checking."""

    sample_rate: int
    silence_ms: int
    max_utterance_ms: int
    speech_start_timeout_ms: int = 0
    encoding: str = "LINEAR16"  # of the audio chunks: LINEAR16, MULAW or ALAW


def check_language(v: FieldViolations, field: str, code: str) -> None:
    if not code:
        v.add(field, f"required; supported: {', '.join(SUPPORTED_LANGUAGES)}")
    elif code.lower() not in {s.lower() for s in SUPPORTED_LANGUAGES}:
        v.add(field, f"{code!r} is not supported; supported: {', '.join(SUPPORTED_LANGUAGES)}")


def check_stream_recognition(
    v: FieldViolations,
    prefix: str,
    config: speech_pb2.RecognitionConfig,
    endpointing: speech_pb2.EndpointingConfig | None,
    endpointing_field: str,
) -> StreamAudio:
    """The recognition part of StreamingRecognize's and Converse's first message."""
    encoding = encoding_name(config.encoding)
    if encoding not in codecs.STREAMABLE:
        v.add(f"{prefix}.encoding", "streams accept AUDIO_ENCODING_LINEAR16, _MULAW or _ALAW")
    rate = config.sample_rate_hertz
    if encoding in codecs.TELEPHONY:
        v.check(
            rate == codecs.TELEPHONY_RATE, f"{prefix}.sample_rate_hertz", f"{encoding} is 8000 Hz"
        )
    v.check(
        MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE,
        f"{prefix}.sample_rate_hertz",
        f"must be {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz, got {rate}",
    )
    check_language(v, f"{prefix}.language_code", config.language_code)
    v.check(0 <= config.max_alternatives <= 5, f"{prefix}.max_alternatives", "must be 0-5")
    silence_ms, max_ms, start_ms = DEFAULT_SILENCE_MS, 30_000, 0
    if endpointing is not None:
        if endpointing.HasField("silence_duration"):
            silence_ms = int(seconds(endpointing.silence_duration) * 1000)
            v.check(
                200 <= silence_ms <= 5000,
                f"{endpointing_field}.silence_duration",
                "must be 200 ms to 5 s",
            )
        if endpointing.HasField("max_utterance_duration"):
            max_ms = int(seconds(endpointing.max_utterance_duration) * 1000)
            v.check(
                1000 <= max_ms <= 60_000,
                f"{endpointing_field}.max_utterance_duration",
                "must be 1 s to 60 s",
            )
        if endpointing.HasField("speech_start_timeout"):
            start_ms = int(seconds(endpointing.speech_start_timeout) * 1000)
            v.check(
                1000 <= start_ms <= 60_000,
                f"{endpointing_field}.speech_start_timeout",
                "must be 1 s to 60 s",
            )
    return StreamAudio(rate, silence_ms, max_ms, start_ms, encoding)


def check_first_message(
    first: Any, config_field: str, recognition_field: str
) -> tuple[Any, StreamAudio, FieldViolations]:
    """The first message of a stream must carry the config; returns (config, its audio
    settings, the violations so far) so the caller can add its own checks before raising."""
    v = FieldViolations()
    if first is None or not first.HasField(config_field):
        v.add(config_field, f"the first message must carry {config_field} (and no audio)")
        v.raise_if_any()
    cfg = getattr(first, config_field)
    if not cfg.HasField(recognition_field):
        v.add(f"{config_field}.{recognition_field}", "required")
        v.raise_if_any()
    audio = check_stream_recognition(
        v,
        f"{config_field}.{recognition_field}",
        getattr(cfg, recognition_field),
        cfg.endpointing,
        f"{config_field}.endpointing",
    )
    return cfg, audio, v


def check_request_id(v: FieldViolations, request_id: str) -> None:
    v.check(len(request_id) <= MAX_REQUEST_ID, "request_id", f"at most {MAX_REQUEST_ID} characters")


def check_speaking_rate(v: FieldViolations, field: str, rate: float) -> None:
    v.check(rate == 0 or 0.25 <= rate <= 4.0, field, "must be 0.25-4.0 (0 means 1.0)")


def encoding_name(value: int) -> str:
    """speech.v1.AudioEncoding -> its name without the prefix ("LINEAR16", "MP3", ...)."""
    try:
        return speech_pb2.AudioEncoding.Name(value).removeprefix("AUDIO_ENCODING_")
    except ValueError:
        return f"unknown encoding {value}"


def check_output(
    v: FieldViolations,
    field: str,
    config: speech_pb2.AudioOutputConfig,
    has: bool,
    allowed: tuple[str, ...],
) -> None:
    if not has:
        v.add(field, "required")
        return
    encoding = encoding_name(config.encoding)
    if encoding not in allowed:
        v.add(f"{field}.encoding", "must be " + " or ".join(f"AUDIO_ENCODING_{e}" for e in allowed))
        return
    rate = config.sample_rate_hertz
    if not v.check(
        rate == 0 or MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE,
        f"{field}.sample_rate_hertz",
        f"must be 0 (the voice's rate) or {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz",
    ):
        return
    problem = codecs.check_output(encoding, output_rate(config, NATURAL_SAMPLE_RATE))
    if problem is not None:
        v.add(f"{field}.sample_rate_hertz", problem)


def output_rate(config: speech_pb2.AudioOutputConfig, natural: int) -> int:
    """The rate synthesized audio is delivered at."""
    encoding = encoding_name(config.encoding)
    return config.sample_rate_hertz or codecs.default_rate(encoding, natural)


def check_text(v: FieldViolations, text: str, limit: int) -> None:
    if not text.strip():
        v.add("text", "required (1 or more non-blank characters)")
    elif len(text) > limit:
        v.add("text", f"has {len(text)} characters; at most {limit}")


def recognize_audio(request: speech_pb2.RecognizeRequest) -> tuple[np.ndarray, int]:
    """Recognize's audio as 16-bit samples and their rate, after checking every field (WAV header
    against the configured rate, LINEAR16 needs a rate, size and length limits)."""
    v = FieldViolations()
    check_request_id(v, request.request_id)
    if not request.HasField("config"):
        v.add("config", "required")
        v.raise_if_any()
    config = request.config
    check_language(v, "config.language_code", config.language_code)
    v.check(0 <= config.max_alternatives <= 5, "config.max_alternatives", "must be 0-5")
    content = request.content
    if not content:
        v.add("content", "required: audio in config.encoding")
    elif len(content) > RECOGNIZE_MAX_BYTES:
        v.add("content", f"{len(content)} bytes; at most {RECOGNIZE_MAX_BYTES} (10 MiB)")
    rate = config.sample_rate_hertz
    samples = np.zeros(0, dtype=np.int16)
    encoding = encoding_name(config.encoding)
    if encoding not in codecs.INPUTS:
        v.add(
            "config.encoding", "must be " + ", ".join(f"AUDIO_ENCODING_{e}" for e in codecs.INPUTS)
        )
    elif encoding in codecs.RAW_INPUTS and not rate:
        v.add("config.sample_rate_hertz", f"required for AUDIO_ENCODING_{encoding}")
    elif content and len(content) <= RECOGNIZE_MAX_BYTES:
        raw = encoding in codecs.RAW_INPUTS
        try:
            samples, found_rate = codecs.decode(content, encoding, rate if raw else 0)
        except AudioFormatError as exc:
            v.add("content", str(exc))
        else:
            if rate and rate != found_rate:
                v.add(
                    "config.sample_rate_hertz",
                    f"{rate} Hz disagrees with the file's header ({found_rate} Hz)",
                )
            rate = found_rate
    if rate and not 8000 <= rate <= 48000:
        v.add("config.sample_rate_hertz", f"must be 8000-48000 Hz, got {rate}")
        rate = 0
    if rate and samples.size / rate > RECOGNIZE_MAX_SECONDS:
        v.add(
            "content",
            f"{samples.size / rate:.1f} s of audio; at most {RECOGNIZE_MAX_SECONDS:.0f} s",
        )
    v.raise_if_any()
    return samples, rate


def check_synthesis(
    request: speech_pb2.SynthesizeRequest | speech_pb2.StreamingSynthesizeRequest,
    max_chars: int,
    allowed: tuple[str, ...],
) -> None:
    """Synthesize/StreamingSynthesize request fields: every problem at once."""
    v = FieldViolations()
    check_text(v, request.text, max_chars)
    check_speaking_rate(v, "speaking_rate", request.speaking_rate)
    check_output(v, "audio_config", request.audio_config, request.HasField("audio_config"), allowed)
    check_request_id(v, request.request_id)
    v.raise_if_any()


def check_language_filter(code: str) -> None:
    if code and not _LANGUAGE.match(code):
        raise invalid_argument(
            f"language_code {code!r} is not a BCP-47 tag", [("language_code", "e.g. en or en-US")]
        )


# --- stream intake --------------------------------------------------------------------------


async def next_request(requests: AsyncIterator[Any], idle_seconds: float) -> Any | None:
    """The next client message, None when the client half-closed; OUT_OF_RANGE when idle."""
    return await next_message(requests, idle_seconds, "audio_content")


async def audio_intake(
    requests: AsyncIterator[Any],
    *,
    config_field: str,
    sample_rate: int,
    max_seconds: float,
    idle_seconds: float,
    encoding: str = "LINEAR16",
) -> AsyncIterator[np.ndarray]:
    """Audio of the messages after the first, checked against the published limits:
    a second config is INVALID_ARGUMENT; a chunk over MAX_CHUNK_BYTES, audio past max_seconds
    or silence past idle_seconds is OUT_OF_RANGE."""
    received = 0
    width = 2 if encoding == "LINEAR16" else 1  # bytes per sample
    max_bytes = int(max_seconds * sample_rate) * width
    while True:
        request = await next_request(requests, idle_seconds)
        if request is None:
            return
        if request.HasField(config_field):
            raise invalid_argument(
                f"{config_field} is allowed in the first message only",
                [
                    (
                        config_field,
                        "send it once, in the first message; "
                        "later messages carry audio_content only",
                    )
                ],
            )
        data: bytes = request.audio_content
        if len(data) > MAX_CHUNK_BYTES:
            raise out_of_range(
                f"an audio chunk of {len(data)} bytes exceeds the {MAX_CHUNK_BYTES}-byte limit",
                reason="AUDIO_CHUNK_TOO_LARGE",
                violations=[("audio_content", f"at most {MAX_CHUNK_BYTES} bytes per message")],
                metadata={"limit": "max_chunk_bytes", "bytes": str(MAX_CHUNK_BYTES)},
            )
        if len(data) % width or not data:
            raise invalid_argument(
                f"audio_content of {len(data)} bytes is not a whole number of 16-bit samples",
                [("audio_content", "2 or more bytes, an even number (LINEAR16)")],
            )
        if received + len(data) > max_bytes:
            raise out_of_range(
                f"the stream passed its maximum duration of {max_seconds:.0f} seconds of audio; "
                "open a new stream with audio_offset to continue",
                reason="STREAM_TOO_LONG",
                violations=[("audio_content", f"at most {max_seconds:.0f} s of audio per stream")],
                metadata={"limit": "max_stream_duration", "seconds": f"{max_seconds:.0f}"},
            )
        received += len(data)
        if encoding == "LINEAR16":
            yield np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)
        else:
            yield codecs.decode(data, encoding, sample_rate)[0]
