"""The OpenAI Realtime wire format (the beta vocabulary of the `openai` package's
`client.beta.realtime`, types in openai/types/beta/realtime/): parsing and checking client
events, the session configuration they change, and building server events. Plain Python, no
sockets and no gRPC, so it is tested on its own (tests/unit/test_realtime_events.py).

What is not supported is refused with an `error` event naming it (never ignored): function
tools, image or text input items, semantic_vad, a VAD threshold other than 0.5,
create_response/interrupt_response false, transcription prompts, other input languages, and
every client event type outside CLIENT_EVENTS (conversation.item.delete,
output_audio_buffer.clear by name).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from services.common.names import resource

# One client event at most (a 1 MiB append holds ~16 s of base64 pcm16 at 24 kHz; OpenAI's own
# limit is 15 MiB, and clients send 20-100 ms chunks). The WebSocket frame limit is above it,
# so a larger event is answered with an error instead of closing the connection.
MAX_EVENT_BYTES = 1024 * 1024
WEBSOCKET_MAX_BYTES = 16 * 1024 * 1024

PCM_RATE = 24_000  # pcm16: 16-bit little-endian mono at 24 kHz
G711_RATE = 8_000
AUDIO_FORMATS = ("pcm16", "g711_ulaw", "g711_alaw")
# Speech's default neural voice; OpenAI's voice names are aliases of it (none of them exists here).
DEFAULT_VOICE = "en-us-joe"
VOICE = resource("speech.aimesh.dev/Voice")
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin",
                 "cedar")
TRANSCRIPTION_MODELS = ("pocketsphinx-en-us", "whisper-1", "gpt-4o-transcribe",
                        "gpt-4o-mini-transcribe")
LANGUAGES = {"": "en-US", "en": "en-US", "en-us": "en-US"}
SILENCE_MS = (200, 5000)  # Speech's EndpointingConfig.silence_duration bounds

CLIENT_EVENTS = (
    "session.update", "transcription_session.update", "input_audio_buffer.append",
    "input_audio_buffer.commit", "input_audio_buffer.clear", "response.create",
    "response.cancel", "conversation.item.truncate", "conversation.item.create",
    "conversation.item.retrieve",
)
# Known OpenAI client events this server refuses, each with the reason it gives.
UNSUPPORTED_EVENTS = {
    "conversation.item.delete": "deleting conversation items",
    "output_audio_buffer.clear": "output_audio_buffer (WebRTC only)",
}


class EventError(Exception):
    """A client event this server cannot accept; becomes an `error` server event."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None,
                 event_id: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param
        self.event_id, self.kind = event_id, kind


def unsupported(what: str, param: str | None = None, event_id: str | None = None) -> EventError:
    return EventError(f"{what} is not supported by this server", "unsupported_feature", param,
                      event_id)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def parse_event(raw: str | bytes) -> dict[str, Any]:
    """One client event: a JSON object with a string `type` and at most MAX_EVENT_BYTES."""
    if len(raw) > MAX_EVENT_BYTES:
        raise EventError(f"event of {len(raw):,} bytes; at most {MAX_EVENT_BYTES:,}",
                         "message_too_large")
    try:
        event = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventError(f"the message is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(event, dict):
        raise EventError("an event must be a JSON object", "invalid_event")
    event_id = event.get("event_id")
    event_id = event_id if isinstance(event_id, str) else None
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        raise EventError("missing required parameter: 'type'", "missing_required_parameter",
                         "type", event_id)
    if kind in UNSUPPORTED_EVENTS:
        raise unsupported(UNSUPPORTED_EVENTS[kind], "type", event_id)
    if kind not in CLIENT_EVENTS:
        raise EventError(f"unknown event type {kind!r}", "invalid_event_type", "type", event_id)
    return event


def field_of(event: dict[str, Any], name: str, kind: type | tuple[type, ...],
             required: bool = True) -> Any:
    """event[name], checked to be of `kind` (a missing optional one is None)."""
    value = event.get(name)
    if value is None and not required:
        return None
    if value is None:
        raise EventError(f"missing required parameter: '{name}'", "missing_required_parameter",
                         name, event.get("event_id"))
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        wanted = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise EventError(f"'{name}' must be of type {wanted}", "invalid_type", name,
                         event.get("event_id"))
    return value


def decode_audio(event: dict[str, Any], audio_format: str) -> bytes:
    """The audio of an input_audio_buffer.append: base64, whole samples of the session's format."""
    text = field_of(event, "audio", str)
    try:
        audio = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EventError("'audio' is not valid base64", "invalid_audio", "audio",
                         event.get("event_id")) from None
    if audio_format == "pcm16" and len(audio) % 2:
        raise EventError("pcm16 audio must be whole 16-bit samples (an even number of bytes)",
                         "invalid_audio", "audio", event.get("event_id"))
    return audio


def audio_ms(num_bytes: int, audio_format: str) -> int:
    """Milliseconds of `num_bytes` of audio in a Realtime format."""
    if audio_format == "pcm16":
        return num_bytes * 1000 // (2 * PCM_RATE)
    return num_bytes * 1000 // G711_RATE


@dataclass(frozen=True)
class TurnDetection:
    """server_vad, mapped onto Speech's endpointing (silence) and the reported speech start."""

    silence_duration_ms: int = 500
    prefix_padding_ms: int = 300
    threshold: float = 0.5
    create_response: bool = True
    interrupt_response: bool = True

    def wire(self) -> dict[str, Any]:
        return {"type": "server_vad", "threshold": self.threshold,
                "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms,
                "create_response": self.create_response,
                "interrupt_response": self.interrupt_response}


@dataclass(frozen=True)
class SessionConfig:
    """What session.update / transcription_session.update configure."""

    id: str = field(default_factory=lambda: new_id("sess"))
    model: str = ""
    transcription_only: bool = False
    modalities: tuple[str, ...] = ("text", "audio")
    instructions: str = ""
    voice: str = "alloy"
    input_audio_format: str = "pcm16"
    output_audio_format: str = "pcm16"
    transcription_model: str | None = None
    language: str = "en-US"
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    temperature: float = 0.8
    max_output_tokens: int | None = None

    @property
    def speech_voice(self) -> str:
        """Speech's voice resource for `voice` (OpenAI's names alias the default voice)."""
        voice = DEFAULT_VOICE if self.voice in OPENAI_VOICES else self.voice
        return VOICE.format(voice) if not VOICE.matches(voice) else voice

    def wire(self) -> dict[str, Any]:
        transcription = (None if self.transcription_model is None else
                         {"model": self.transcription_model, "language": self.language[:2],
                          "prompt": ""})
        detection = self.turn_detection.wire() if self.turn_detection else None
        if self.transcription_only:
            return {"id": self.id, "object": "realtime.transcription_session",
                    "modalities": ["text"], "input_audio_format": self.input_audio_format,
                    "input_audio_transcription": transcription, "turn_detection": detection,
                    "input_audio_noise_reduction": None, "include": []}
        return {"id": self.id, "object": "realtime.session", "model": self.model,
                "modalities": list(self.modalities), "instructions": self.instructions,
                "voice": self.voice, "input_audio_format": self.input_audio_format,
                "output_audio_format": self.output_audio_format,
                "input_audio_transcription": transcription, "turn_detection": detection,
                "input_audio_noise_reduction": None, "tools": [], "tool_choice": "auto",
                "temperature": self.temperature, "speed": 1.0, "tracing": None,
                "max_response_output_tokens": self.max_output_tokens or "inf"}


# session fields a client may send that change nothing here but are accepted as OpenAI's
# defaults: (field, values that are fine).
_HARMLESS: dict[str, tuple[Any, ...] | None] = {
    "tool_choice": ("auto", "none"), "tracing": (None,), "speed": (1.0, 1),
    "input_audio_noise_reduction": (None,), "include": (None, []), "client_secret": (None,),
    "object": ("realtime.session", "realtime.transcription_session"), "id": None,
    "model": None, "tools": (None, []),
}


def apply_session(config: SessionConfig, session: Any, event_id: str | None) -> SessionConfig:
    """`config` changed by a session.update's `session` object (all or nothing)."""
    if not isinstance(session, dict):
        raise EventError("'session' must be an object", "invalid_type", "session", event_id)
    changes: dict[str, Any] = {}
    for name, value in session.items():
        param = f"session.{name}"
        if name in _HARMLESS:
            allowed = _HARMLESS[name]
            if allowed is not None and value not in allowed:
                what = "function tools" if name == "tools" else f"{param}={value!r}"
                raise unsupported(what, param, event_id)
            continue
        changes.update(_session_field(config, name, value, param, event_id))
    return replace(config, **changes)


def _session_field(config: SessionConfig, name: str, value: Any, param: str,
                   event_id: str | None) -> dict[str, Any]:
    def bad(message: str) -> EventError:
        return EventError(message, "invalid_value", param, event_id)

    if name in ("input_audio_format", "output_audio_format"):
        if value not in AUDIO_FORMATS:
            raise bad(f"{param} must be one of {', '.join(AUDIO_FORMATS)}")
        return {name: value}
    if name == "modalities":
        if not isinstance(value, list) or sorted(set(value)) not in (["text"], ["audio", "text"]):
            raise bad(f"{param} must be [\"text\"] or [\"text\", \"audio\"]")
        return {"modalities": ("text",) if value == ["text"] else ("text", "audio")}
    if name == "instructions":
        if not isinstance(value, str) or len(value) > 32_000:
            raise bad(f"{param} must be a string of at most 32,000 characters")
        return {"instructions": value}
    if name == "voice":
        if not isinstance(value, str) or not value.replace("-", "").isalnum():
            raise bad(f"{param} must be a voice name (GET /v1/voices lists them)")
        return {"voice": value}
    if name == "temperature":
        if not isinstance(value, (int, float)) or not 0 <= value <= 2:
            raise bad(f"{param} must be a number between 0 and 2")
        return {"temperature": float(value)}
    if name == "max_response_output_tokens":
        if value == "inf" or value is None:
            return {"max_output_tokens": None}
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096:
            raise bad(f"{param} must be an integer from 1 to 4096 or \"inf\"")
        return {"max_output_tokens": value}
    if name == "input_audio_transcription":
        return _transcription(value, param, event_id)
    if name == "turn_detection":
        return {"turn_detection": turn_detection(config.turn_detection, value, param, event_id)}
    raise EventError(f"unknown parameter {param}", "unknown_parameter", param, event_id)


def _transcription(value: Any, param: str, event_id: str | None) -> dict[str, Any]:
    if value is None:
        return {"transcription_model": None}
    if not isinstance(value, dict):
        raise EventError(f"{param} must be an object or null", "invalid_type", param, event_id)
    model = value.get("model") or TRANSCRIPTION_MODELS[0]
    if model not in TRANSCRIPTION_MODELS:
        raise EventError(f"{param}.model must be one of {', '.join(TRANSCRIPTION_MODELS)} "
                         "(all are served by pocketsphinx-en-us)", "invalid_value",
                         f"{param}.model", event_id)
    language = LANGUAGES.get(str(value.get("language") or "").lower())
    if language is None:
        raise unsupported(f"transcription language {value.get('language')!r} (en is)",
                          f"{param}.language", event_id)
    if value.get("prompt"):
        raise unsupported("a transcription prompt", f"{param}.prompt", event_id)
    return {"transcription_model": model, "language": language}


def turn_detection(current: TurnDetection | None, value: Any, param: str,
                   event_id: str | None) -> TurnDetection | None:
    """The turn detection a session.update asks for (null: manual commits)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise EventError(f"{param} must be an object or null", "invalid_type", param, event_id)
    if value.get("type", "server_vad") != "server_vad":
        raise unsupported(f"turn_detection type {value.get('type')!r} (server_vad is)",
                          f"{param}.type", event_id)
    result = current or TurnDetection()
    for name, raw in value.items():
        if name == "type" or raw is None:
            continue
        sub = f"{param}.{name}"
        if name == "silence_duration_ms":
            if not isinstance(raw, int) or not SILENCE_MS[0] <= raw <= SILENCE_MS[1]:
                raise EventError(f"{sub} must be an integer from {SILENCE_MS[0]} to "
                                 f"{SILENCE_MS[1]}", "invalid_value", sub, event_id)
        elif name == "prefix_padding_ms":
            if not isinstance(raw, int) or not 0 <= raw <= 5000:
                raise EventError(f"{sub} must be an integer from 0 to 5000", "invalid_value",
                                 sub, event_id)
        elif name == "threshold":
            # Speech's VAD (WebRTC, fixed aggressiveness) has no threshold: only the default.
            if raw != 0.5:
                raise unsupported(f"{sub} other than 0.5", sub, event_id)
        elif name in ("create_response", "interrupt_response"):
            if not isinstance(raw, bool):
                raise EventError(f"{sub} must be a boolean", "invalid_type", sub, event_id)
            if not raw:
                raise unsupported(f"{sub}=false (replies and barge-in follow each utterance)",
                                  sub, event_id)
        else:
            raise EventError(f"unknown parameter {sub}", "unknown_parameter", sub, event_id)
        result = replace(result, **{name: raw})
    return result


class ServerEvents:
    """Builds server events, each with a fresh event_id."""

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": new_id("event"), **fields}

    def error(self, exc: EventError) -> dict[str, Any]:
        return self.event("error", error={"type": exc.kind, "code": exc.code,
                                          "message": exc.message, "param": exc.param,
                                          "event_id": exc.event_id})

    def session(self, config: SessionConfig, kind: str) -> dict[str, Any]:
        prefix = "transcription_session" if config.transcription_only else "session"
        return self.event(f"{prefix}.{kind}", session=config.wire())


def user_item(item_id: str, transcript: str | None = None) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
            "status": "completed", "content": [{"type": "input_audio",
                                                "transcript": transcript}]}


def assistant_item(item_id: str, status: str, part: dict[str, Any] | None) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant",
            "status": status, "content": [part] if part else []}


def response_object(response_id: str, status: str, config: SessionConfig,
                    output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                    reason: str | None = None) -> dict[str, Any]:
    details: dict[str, Any] | None = None
    if status == "cancelled":
        details = {"type": "cancelled", "reason": reason or "client_cancelled"}
    elif status == "failed":
        details = {"type": "failed", "error": {"type": "server_error", "code": reason,
                                               "message": reason}}
    return {"id": response_id, "object": "realtime.response", "status": status,
            "status_details": details, "output": output, "usage": usage,
            "modalities": list(config.modalities), "voice": config.voice,
            "output_audio_format": config.output_audio_format,
            "temperature": config.temperature,
            "max_output_tokens": config.max_output_tokens or "inf", "metadata": None,
            "conversation_id": None}


# OpenAI's documented audio tokenization (Realtime "Managing costs" guide): audio in user
# messages is 1 token per 100 ms, in assistant messages 1 token per 50 ms.
USER_AUDIO_MS_PER_TOKEN = 100
ASSISTANT_AUDIO_MS_PER_TOKEN = 50


def audio_tokens(ms: int, ms_per_token: int) -> int:
    return -(-max(0, ms) // ms_per_token)  # a started token counts


def usage(text_in: int, text_out: int, input_audio_ms: int = 0,
          output_audio_ms: int = 0) -> dict[str, Any]:
    """A response's usage as OpenAI clients read it. Text tokens are the generation's, as
    Orchestrator counted them. Audio tokens are OpenAI's conversion of the audio durations
    this turn handled — the caller's utterance that was recognized and the reply audio that
    was synthesized — which Speech meters in seconds (the model here reads the transcript,
    not audio). input/output_tokens are text plus audio, as OpenAI reports them."""
    audio_in = audio_tokens(input_audio_ms, USER_AUDIO_MS_PER_TOKEN)
    audio_out = audio_tokens(output_audio_ms, ASSISTANT_AUDIO_MS_PER_TOKEN)
    return {"total_tokens": text_in + audio_in + text_out + audio_out,
            "input_tokens": text_in + audio_in, "output_tokens": text_out + audio_out,
            "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in,
                                    "cached_tokens": 0},
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out}}


class Session(Protocol):
    """What a bridge (transcription or voice) uses of its WebSocket session."""

    config: SessionConfig
    channels: Any  # services.common.channels.Channels

    @property
    def metadata(self) -> list[tuple[str, str]]: ...
    async def send(self, kind: str, **fields: Any) -> None: ...
    async def error(self, exc: EventError) -> None: ...
