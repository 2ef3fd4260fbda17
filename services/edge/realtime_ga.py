"""The GA Realtime vocabulary (the `openai` package's `client.realtime`, types in
openai/types/realtime/), translated to and from the beta events the session speaks
(realtime_events.py). A connection is beta when it says so (header `OpenAI-Beta: realtime=v1`
or subprotocol `openai-beta.realtime-v1`), as OpenAI's own server decides; otherwise GA.

The mapping is by name and shape only: client session.update's nested `audio.input/output`
becomes the beta session fields; server events are renamed (response.audio.delta →
response.output_audio.delta, ...), sessions and responses take the GA shape, assistant content
parts are output_audio/output_text. Everything else is the same event.
"""

from __future__ import annotations

from typing import Any

from services.edge.realtime_events import EventError, SessionConfig

BETA_HEADER = "realtime=v1"
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
FORMATS = {"pcm16": {"type": "audio/pcm", "rate": 24_000}, "g711_ulaw": {"type": "audio/pcmu"},
           "g711_alaw": {"type": "audio/pcma"}}
_BETA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
RENAMED = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "conversation.item.created": "conversation.item.added",
    "transcription_session.created": "session.created",
    "transcription_session.updated": "session.updated",
}
_PART_TYPES = {"audio": "output_audio", "text": "output_text"}


def is_beta(headers: Any, subprotocols: list[str]) -> bool:
    return BETA_HEADER in (headers.get("openai-beta") or "") or BETA_SUBPROTOCOL in subprotocols


# --- client events: GA → beta ---------------------------------------------------------------

def from_ga(event: dict[str, Any], transcription_only: bool) -> dict[str, Any]:
    """A GA client event as the beta event it means."""
    if event["type"] != "session.update":
        return event
    session = event.get("session")
    event_id = event.get("event_id")
    if not isinstance(session, dict):
        return event  # the beta checks report it
    wanted = "transcription" if transcription_only else "realtime"
    if session.get("type", wanted) != wanted:
        raise EventError(f"session.type must be {wanted!r} on this connection (a transcription "
                         "session is opened with ?intent=transcription)", "invalid_value",
                         "session.type", event_id)
    beta = {k: v for k, v in session.items() if k not in ("type", "audio", "output_modalities",
                                                          "max_output_tokens")}
    if "output_modalities" in session:
        beta["modalities"] = session["output_modalities"]
    if "max_output_tokens" in session:
        beta["max_response_output_tokens"] = session["max_output_tokens"]
    audio = session.get("audio") or {}
    if not isinstance(audio, dict):
        raise EventError("session.audio must be an object", "invalid_type", "session.audio",
                         event_id)
    beta.update(_audio_fields(audio, event_id))
    kind = "transcription_session.update" if transcription_only else "session.update"
    return {**event, "type": kind, "session": beta}


def _audio_fields(audio: dict[str, Any], event_id: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    names = {"input": {"format": "input_audio_format", "transcription": "input_audio_transcription",
                       "turn_detection": "turn_detection",
                       "noise_reduction": "input_audio_noise_reduction"},
             "output": {"format": "output_audio_format", "voice": "voice", "speed": "speed"}}
    for side, part in audio.items():
        if side not in names or not isinstance(part, dict):
            raise EventError(f"unknown parameter session.audio.{side}", "unknown_parameter",
                             f"session.audio.{side}", event_id)
        for name, value in part.items():
            param = f"session.audio.{side}.{name}"
            if name not in names[side]:
                raise EventError(f"unknown parameter {param}", "unknown_parameter", param,
                                 event_id)
            if name == "format":
                value = _beta_format(value, param, event_id)
            elif name == "voice" and isinstance(value, dict):
                value = value.get("id")
            elif name == "turn_detection" and isinstance(value, dict):
                if value.get("idle_timeout_ms") is not None:
                    raise EventError(f"{param}.idle_timeout_ms is not supported by this server",
                                     "unsupported_feature", f"{param}.idle_timeout_ms", event_id)
                value = {k: v for k, v in value.items() if k != "idle_timeout_ms"}
            fields[names[side][name]] = value
    return fields


def _beta_format(value: Any, param: str, event_id: str | None) -> str:
    kind = value.get("type") if isinstance(value, dict) else None
    rate = value.get("rate", 24_000) if isinstance(value, dict) else None
    if kind not in _BETA_FORMATS or (kind == "audio/pcm" and rate != 24_000):
        raise EventError(f"{param} must be audio/pcm (24000 Hz), audio/pcmu or audio/pcma",
                         "invalid_value", param, event_id)
    return _BETA_FORMATS[kind]


# --- server events: beta → GA ---------------------------------------------------------------

def ga_session(config: SessionConfig) -> dict[str, Any]:
    beta = config.wire()
    audio_in = {"format": FORMATS[config.input_audio_format],
                "transcription": beta["input_audio_transcription"],
                "turn_detection": beta["turn_detection"], "noise_reduction": None}
    if config.transcription_only:
        return {"type": "transcription", "id": config.id,
                "object": "realtime.transcription_session", "audio": {"input": audio_in},
                "include": []}
    return {"type": "realtime", "id": config.id, "object": "realtime.session",
            "model": config.model, "output_modalities": list(config.modalities),
            "instructions": config.instructions,
            "audio": {"input": audio_in, "output": {
                "format": FORMATS[config.output_audio_format], "voice": config.voice,
                "speed": 1.0}},
            "max_output_tokens": beta["max_response_output_tokens"], "tools": [],
            "tool_choice": "auto", "tracing": None, "truncation": "auto"}


def _item(item: dict[str, Any]) -> dict[str, Any]:
    if item.get("role") != "assistant":
        return item
    content = [{**part, "type": _PART_TYPES.get(part.get("type", ""), part.get("type"))}
               for part in item.get("content") or []]
    return {**item, "content": content}


def _response(response: dict[str, Any], config: SessionConfig) -> dict[str, Any]:
    out = {k: v for k, v in response.items()
           if k not in ("modalities", "voice", "output_audio_format", "temperature")}
    out["output_modalities"] = response.get("modalities")
    out["audio"] = {"output": {"format": FORMATS[config.output_audio_format],
                               "voice": config.voice}}
    out["output"] = [_item(item) for item in response.get("output") or []]
    return out


def to_ga(event: dict[str, Any], config: SessionConfig) -> list[dict[str, Any]]:
    """The GA events for one beta server event."""
    kind = event["type"]
    out = {**event, "type": RENAMED.get(kind, kind)}
    if "session" in event and kind.endswith((".created", ".updated")):
        out["session"] = ga_session(config)
    if "item" in event:
        out["item"] = _item(event["item"])
    if "response" in event:
        out["response"] = _response(event["response"], config)
    if kind == "response.output_item.done":  # GA also marks the conversation item done
        done = {"type": "conversation.item.done", "event_id": f"{event['event_id']}_done",
                "item": out["item"], "previous_item_id": None}
        return [out, done]
    return [out]
