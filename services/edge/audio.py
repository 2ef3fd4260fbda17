"""Audio through the Speech service: /audio/transcriptions on Recognize (a multipart upload in
any container Speech decodes — WAV, FLAC, Ogg Opus, MP3 — recognized by its bytes, answered as
json, text, verbose_json, srt or vtt, with word and segment timestamps) and /audio/speech on
Synthesize (a whole mp3, opus, flac or wav file, encoded by Speech) or StreamingSynthesize (raw
PCM streamed as it is produced). Speech meters both (audio seconds, characters) exactly as for
native calls."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from aimesh.speech.v1 import speech_pb2, speech_pb2_grpc

from services.common.names import resource
from services.edge import schemas
from services.edge.errors import OpenAIError, bad_request, from_rpc_error, unsupported

TRANSCRIPTION_MODEL = "pocketsphinx-en-us"  # Speech's recognizer (pocketsphinx, en-US)
SPEECH_MODEL = "aimesh-tts"  # Speech's synthesizer (its voices: GET /v1/voices)
MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # OpenAI's limit; Speech's Recognize takes up to 10 MiB
PCM_SAMPLE_RATE = 24_000  # OpenAI's `pcm`: 24 kHz, 16-bit signed little-endian, mono
TIMEOUT_SECONDS = 300.0
VOICE = resource("speech.aimesh.dev/Voice")
_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
_LANGUAGES = {"en": "en-US", "english": "en-US"}
# Upload containers (sniffed from the bytes) -> the Speech encoding that decodes them.
UPLOAD_ENCODINGS = {
    "wav": speech_pb2.AUDIO_ENCODING_WAV,
    "flac": speech_pb2.AUDIO_ENCODING_FLAC,
    "ogg": speech_pb2.AUDIO_ENCODING_OGG_OPUS,
    "mp3": speech_pb2.AUDIO_ENCODING_MP3,
}


@dataclass(frozen=True)
class SpeechFormat:
    """How one OpenAI `response_format` is produced: Speech's encoding, the sample rate asked
    for (0: the voice's own), and the Content-Type of the answer."""

    encoding: speech_pb2.AudioEncoding
    sample_rate: int
    media_type: str


# OpenAI's speech formats that Speech's encoder (libsndfile) produces. `opus` is Opus in an Ogg
# file (RFC 7845's audio/ogg), as OpenAI sends it; `pcm` is streamed chunk by chunk.
SPEECH_FORMATS = {
    "mp3": SpeechFormat(speech_pb2.AUDIO_ENCODING_MP3, 0, "audio/mpeg"),
    "opus": SpeechFormat(speech_pb2.AUDIO_ENCODING_OGG_OPUS, PCM_SAMPLE_RATE, "audio/ogg"),
    "flac": SpeechFormat(speech_pb2.AUDIO_ENCODING_FLAC, 0, "audio/flac"),
    "wav": SpeechFormat(speech_pb2.AUDIO_ENCODING_WAV, 0, "audio/wav"),
    "pcm": SpeechFormat(speech_pb2.AUDIO_ENCODING_LINEAR16, PCM_SAMPLE_RATE, "audio/pcm"),
}
DEFAULT_SPEECH_FORMAT = "mp3"  # OpenAI's default


def sniff_format(data: bytes) -> str | None:
    """The container of an upload, from its first bytes (never from the file name)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:3] == b"ID3" or data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "mp3"
    if data[4:8] == b"ftyp":
        return "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    return None


@dataclass
class TranscriptionForm:
    """The multipart fields of a transcription request, checked."""

    audio: bytes
    model: str
    language: str = "en-US"
    response_format: str = "json"
    granularities: tuple[str, ...] = ()


def check_transcription(form: TranscriptionForm) -> None:
    if form.model != TRANSCRIPTION_MODEL:
        raise OpenAIError(
            404,
            f"The model '{form.model}' does not exist or cannot transcribe; use "
            f"'{TRANSCRIPTION_MODEL}'",
            param="model",
            code="model_not_found",
        )
    if form.response_format not in _FORMATS:
        raise bad_request(
            f"response_format must be one of {', '.join(_FORMATS)}", "response_format"
        )
    bad = [g for g in form.granularities if g not in ("word", "segment")]
    if bad:
        raise bad_request(
            f"timestamp_granularities[] must be word or segment, got {bad[0]!r}",
            "timestamp_granularities",
        )
    if form.granularities and form.response_format != "verbose_json":
        raise bad_request(
            "timestamp_granularities[] requires response_format verbose_json",
            "timestamp_granularities",
        )
    if not form.audio:
        raise bad_request("the uploaded file is empty", "file")
    if len(form.audio) > MAX_UPLOAD_BYTES:
        raise OpenAIError(
            413,
            f"the file is {len(form.audio):,} bytes; at most {MAX_UPLOAD_BYTES:,}",
            param="file",
            code="file_too_large",
        )
    upload_encoding(form.audio)


def upload_encoding(audio: bytes) -> speech_pb2.AudioEncoding:
    """The Speech encoding of an upload, from its bytes; 400 for containers Speech cannot
    decode (webm, mp4/m4a) and for bytes that are no audio file at all."""
    kind = sniff_format(audio)
    if kind not in UPLOAD_ENCODINGS:
        found = f"{kind} audio" if kind else "not an audio format we recognize"
        raise bad_request(
            f"Unsupported file format ({found}). Supported formats: " + ", ".join(UPLOAD_ENCODINGS),
            "file",
            code="unsupported_format",
        )
    return UPLOAD_ENCODINGS[kind]


def language_code(value: str | None) -> str:
    if not value:
        return "en-US"
    return _LANGUAGES.get(value.lower(), value)


def _seconds(duration: Any) -> float:
    """A google.protobuf.Duration in seconds."""
    return float(duration.seconds + duration.nanos / 1e9)


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{separator}{rest % 1000:03d}"


def segments_of(reply: speech_pb2.RecognizeResponse) -> list[schemas.TranscriptionSegment]:
    """One segment per recognized utterance; it starts at its first word (or where the previous
    utterance ended) and ends at the utterance's end offset."""
    segments = []
    previous_end = 0.0
    for i, result in enumerate(reply.results):
        best = result.alternatives[0]
        end = _seconds(result.result_end_offset)
        start = _seconds(best.words[0].start_offset) if best.words else previous_end
        confidence = max(best.confidence, 1e-6)
        segments.append(
            schemas.TranscriptionSegment(
                id=i, start=start, end=end, text=best.transcript, avg_logprob=math.log(confidence)
            )
        )
        previous_end = end
    return segments


def render_transcription(
    form: TranscriptionForm, reply: speech_pb2.RecognizeResponse
) -> tuple[str, str]:
    """(body, media type) in the requested response_format."""
    text = " ".join(r.alternatives[0].transcript for r in reply.results if r.alternatives).strip()
    if form.response_format == "json":
        return schemas.Transcription(text=text).model_dump_json(), "application/json"
    if form.response_format == "text":
        return text + "\n", "text/plain; charset=utf-8"
    segments = segments_of(reply)
    if form.response_format == "verbose_json":
        out = schemas.VerboseTranscription(
            language="english", duration=_seconds(reply.total_audio_processed), text=text
        )
        if "segment" in form.granularities or not form.granularities:
            out.segments = segments
        if "word" in form.granularities:
            out.words = [
                schemas.TranscriptionWord(
                    word=w.word, start=_seconds(w.start_offset), end=_seconds(w.end_offset)
                )
                for r in reply.results
                for w in r.alternatives[0].words
            ]
        return json.dumps(out.wire()), "application/json"
    if form.response_format == "srt":
        blocks = [
            f"{s.id + 1}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text}\n"
            for s in segments
        ]
        return "\n".join(blocks), "application/x-subrip"
    blocks = [
        f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text}\n" for s in segments
    ]
    return "WEBVTT\n\n" + "\n".join(blocks), "text/vtt"


def speech_format(req: schemas.SpeechRequest) -> SpeechFormat:
    """The format to produce, or a 400 naming the supported ones (aac: libsndfile, which encodes
    Speech's audio, has no AAC encoder)."""
    name = req.response_format or DEFAULT_SPEECH_FORMAT
    found = SPEECH_FORMATS.get(name)
    if found is None:
        raise bad_request(
            f"response_format {name!r} is not supported by this server; supported values: "
            + ", ".join(SPEECH_FORMATS),
            "response_format",
            code="unsupported_value",
        )
    return found


class Audio:
    def __init__(self, speech: speech_pb2_grpc.SpeechServiceStub) -> None:
        self.speech = speech

    async def transcribe(
        self, form: TranscriptionForm, metadata: list[tuple[str, str]]
    ) -> tuple[str, str]:
        check_transcription(form)
        words = form.response_format in ("verbose_json", "srt", "vtt")
        request = speech_pb2.RecognizeRequest(
            config=speech_pb2.RecognitionConfig(
                encoding=upload_encoding(form.audio),
                language_code=language_code(form.language),
                enable_word_time_offsets=words,
            ),
            content=form.audio,
        )
        try:
            reply = await self.speech.Recognize(request, metadata=metadata, timeout=TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(
                exc, {"content": "file", "config": "file", "language_code": "language"}
            ) from None
        return render_transcription(form, reply)

    async def speak(
        self, req: schemas.SpeechRequest, metadata: list[tuple[str, str]]
    ) -> tuple[AsyncIterator[bytes] | bytes, str]:
        """(body, media type): raw PCM streamed as synthesized, else one encoded file. Errors
        before the first audio raise here (a JSON error)."""
        if req.model != SPEECH_MODEL:
            raise OpenAIError(
                404,
                f"The model '{req.model}' does not exist or cannot speak; use '{SPEECH_MODEL}'",
                param="model",
                code="model_not_found",
            )
        fmt = speech_format(req)
        if req.instructions:
            raise unsupported("instructions", "instructions")
        if req.stream_format == "sse":
            raise unsupported("stream_format", "stream_format 'sse'")
        voice = req.voice if VOICE.matches(req.voice) else VOICE.format(req.voice)
        config = speech_pb2.AudioOutputConfig(
            encoding=fmt.encoding, sample_rate_hertz=fmt.sample_rate
        )
        if fmt.encoding == speech_pb2.AUDIO_ENCODING_LINEAR16:
            return await self._stream_pcm(req, voice, config, metadata), fmt.media_type
        try:
            reply = await self.speech.Synthesize(
                speech_pb2.SynthesizeRequest(
                    text=req.input,
                    voice=voice,
                    speaking_rate=req.speed or 0.0,
                    audio_config=config,
                ),
                metadata=metadata,
                timeout=TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            raise _speech_error(exc, req.voice) from None
        return reply.audio_content, fmt.media_type

    async def _stream_pcm(
        self,
        req: schemas.SpeechRequest,
        voice: str,
        config: speech_pb2.AudioOutputConfig,
        metadata: list[tuple[str, str]],
    ) -> AsyncIterator[bytes]:
        request = speech_pb2.StreamingSynthesizeRequest(
            text=req.input, voice=voice, speaking_rate=req.speed or 0.0, audio_config=config
        )
        call = self.speech.StreamingSynthesize(request, metadata=metadata, timeout=TIMEOUT_SECONDS)
        chunks = call.__aiter__()
        try:
            first = await chunks.__anext__()
        except grpc.aio.AioRpcError as exc:
            raise _speech_error(exc, req.voice) from None
        except StopAsyncIteration:
            raise OpenAIError(502, "speech synthesis produced no audio") from None
        return _stream(call, first, chunks)


def _speech_error(exc: grpc.aio.AioRpcError, voice: str) -> OpenAIError:
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return bad_request(
            f"unknown voice {voice!r} (GET /v1/voices lists them)", "voice", code="invalid_voice"
        )
    return from_rpc_error(exc, {"text": "input", "speaking_rate": "speed"})


async def _stream(
    call: grpc.aio.UnaryStreamCall,
    first: speech_pb2.StreamingSynthesizeResponse,
    rest: AsyncIterator[speech_pb2.StreamingSynthesizeResponse],
) -> AsyncIterator[bytes]:
    try:
        yield first.audio_content
        async for chunk in rest:
            yield chunk.audio_content
    finally:
        call.cancel()
