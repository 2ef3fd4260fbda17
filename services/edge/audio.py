"""Audio through the Speech service: /audio/transcriptions on Recognize (a multipart upload,
answered as json, text, verbose_json, srt or vtt, with word and segment timestamps) and
/audio/speech on StreamingSynthesize (raw PCM streamed as it is produced, or a WAV file).
Speech meters both (audio seconds, characters) exactly as for native calls."""

from __future__ import annotations

import io
import json
import math
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from aimesh.speech.v1 import speech_pb2, speech_pb2_grpc

from services.common.identity import Identity
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
        raise OpenAIError(404, f"The model '{form.model}' does not exist or cannot transcribe; use "
                          f"'{TRANSCRIPTION_MODEL}'", param="model", code="model_not_found")
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
    kind = sniff_format(form.audio)
    if kind != "wav":
        found = f"{kind} audio" if kind else "not an audio format we recognize"
        raise bad_request(
            f"Unsupported file format ({found}): send WAV (16-bit PCM, mono)",
            "file",
            code="unsupported_format",
        )


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


def wav_bytes(pcm: bytes, sample_rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(pcm)
    return out.getvalue()


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
                encoding=speech_pb2.AUDIO_ENCODING_WAV,
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
        self, req: schemas.SpeechRequest, identity: Identity, metadata: list[tuple[str, str]]
    ) -> tuple[AsyncIterator[bytes], str]:
        """(body, media type). Errors before the first audio raise here (a JSON error)."""
        if req.model != SPEECH_MODEL:
            raise OpenAIError(
                404,
                f"The model '{req.model}' does not exist or cannot speak; use '{SPEECH_MODEL}'",
                param="model",
                code="model_not_found",
            )
        fmt = req.response_format or "wav"
        if fmt not in ("wav", "pcm"):
            raise unsupported("response_format", f"response_format {fmt!r} (wav and pcm are)")
        if req.instructions:
            raise unsupported("instructions", "instructions")
        if req.stream_format == "sse":
            raise unsupported("stream_format", "stream_format 'sse'")
        voice = req.voice if VOICE.matches(req.voice) else VOICE.format(req.voice)
        request = speech_pb2.StreamingSynthesizeRequest(
            text=req.input,
            voice=voice,
            speaking_rate=req.speed or 0.0,
            audio_config=speech_pb2.AudioOutputConfig(
                encoding=speech_pb2.AUDIO_ENCODING_LINEAR16,
                sample_rate_hertz=PCM_SAMPLE_RATE if fmt == "pcm" else 0,
            ),
        )
        call = self.speech.StreamingSynthesize(request, metadata=metadata, timeout=TIMEOUT_SECONDS)
        chunks = call.__aiter__()
        try:
            first = await chunks.__anext__()
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise bad_request(
                    f"unknown voice {req.voice!r} (GET /v1/voices lists them)",
                    "voice",
                    code="invalid_voice",
                ) from None
            raise from_rpc_error(exc, {"text": "input", "speaking_rate": "speed"}) from None
        except StopAsyncIteration:
            raise OpenAIError(502, "speech synthesis produced no audio") from None
        if fmt == "pcm":
            return _stream(call, first, chunks), "audio/pcm"
        pcm = [first.audio_content]
        try:
            async for chunk in chunks:
                pcm.append(chunk.audio_content)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        audio = wav_bytes(b"".join(pcm), first.sample_rate_hertz)

        async def whole() -> AsyncIterator[bytes]:
            yield audio

        return whole(), "audio/wav"


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
