"""The Realtime event codec (services/edge/realtime_events.py) on its own: what is accepted,
what is refused with which code and param, and the shapes the `openai` package parses."""

from __future__ import annotations

import base64
import json

import pytest
from openai.types.beta.realtime import (
    ErrorEvent,
    ResponseDoneEvent,
    SessionUpdatedEvent,
    TranscriptionSessionUpdatedEvent,
)

from services.edge.realtime_events import (
    MAX_EVENT_BYTES,
    EventError,
    ServerEvents,
    SessionConfig,
    apply_session,
    audio_ms,
    decode_audio,
    parse_event,
    response_object,
    usage,
)


def code_of(call: object) -> tuple[str, str | None]:
    with pytest.raises(EventError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code, caught.value.param


@pytest.mark.parametrize(("raw", "code"), [
    ("{oops", "invalid_json"),
    ("[]", "invalid_event"),
    ("{}", "missing_required_parameter"),
    ('{"type": 3}', "missing_required_parameter"),
    ('{"type": "made.up"}', "invalid_event_type"),
    ('{"type": "conversation.item.delete", "item_id": "x"}', "unsupported_feature"),
    (b"\xff\xfe", "invalid_json"),
    ("x" * (MAX_EVENT_BYTES + 1), "message_too_large"),
])
def test_bad_messages_are_refused_by_code(raw: str | bytes, code: str) -> None:
    assert code_of(lambda: parse_event(raw))[0] == code


def test_event_id_is_echoed_in_errors() -> None:
    with pytest.raises(EventError) as caught:
        parse_event(json.dumps({"type": "nope", "event_id": "evt_1"}))
    error = ServerEvents().error(caught.value)
    parsed = ErrorEvent.model_validate(error)
    assert parsed.error.event_id == "evt_1" and parsed.error.param == "type"
    assert "nope" in parsed.error.message


def test_audio_must_be_base64_whole_samples() -> None:
    good = {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\0\1" * 8).decode()}
    assert decode_audio(good, "pcm16") == b"\0\1" * 8
    assert code_of(lambda: decode_audio({"audio": "%%%"}, "pcm16")) == ("invalid_audio", "audio")
    odd = {"audio": base64.b64encode(b"\0\1\2").decode()}
    assert code_of(lambda: decode_audio(odd, "pcm16"))[0] == "invalid_audio"
    assert decode_audio(odd, "g711_ulaw") == b"\0\1\2"  # one byte per sample
    assert code_of(lambda: decode_audio({"audio": 5}, "pcm16")) == ("invalid_type", "audio")
    assert audio_ms(48_000, "pcm16") == 1000 and audio_ms(8000, "g711_alaw") == 1000


# The package's models are strict about OpenAI's own model names (its client parses leniently,
# so aimesh's names pass on the wire); the shape checks use OpenAI's names.
def test_session_update_applies_all_or_nothing() -> None:
    config = SessionConfig(model="gpt-4o-realtime-preview")
    changed = apply_session(config, {
        "voice": "alloy", "input_audio_format": "g711_ulaw", "modalities": ["text"],
        "instructions": "Be brief.", "tools": [], "tool_choice": "auto",
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 300,
                           "prefix_padding_ms": 100, "threshold": 0.5},
        "input_audio_transcription": {"model": "whisper-1", "language": "en"}}, None)
    assert changed.turn_detection and changed.turn_detection.silence_duration_ms == 300
    assert changed.modalities == ("text",) and changed.speech_voice == "voices/en-us-joe"
    assert changed.language == "en-US" and changed.input_audio_format == "g711_ulaw"
    event = ServerEvents().session(changed, "updated")
    parsed = SessionUpdatedEvent.model_validate(event)
    assert parsed.session.turn_detection and parsed.session.turn_detection.silence_duration_ms == 300
    manual = apply_session(changed, {"turn_detection": None}, None)
    assert manual.turn_detection is None and manual.voice == "alloy"


@pytest.mark.parametrize(("session", "code", "param"), [
    ({"tools": [{"type": "function", "name": "f"}]}, "unsupported_feature", "session.tools"),
    ({"turn_detection": {"type": "semantic_vad"}}, "unsupported_feature",
     "session.turn_detection.type"),
    ({"turn_detection": {"silence_duration_ms": 50}}, "invalid_value",
     "session.turn_detection.silence_duration_ms"),
    ({"turn_detection": {"threshold": 0.9}}, "unsupported_feature",
     "session.turn_detection.threshold"),
    ({"input_audio_format": "mp3"}, "invalid_value", "session.input_audio_format"),
    ({"modalities": ["audio"]}, "invalid_value", "session.modalities"),
    ({"input_audio_transcription": {"language": "fr"}}, "unsupported_feature",
     "session.input_audio_transcription.language"),
    ({"colour": "blue"}, "unknown_parameter", "session.colour"),
    ({"temperature": "hot"}, "invalid_value", "session.temperature"),
])
def test_session_update_refusals_name_the_field(session: dict[str, object], code: str,
                                                param: str) -> None:
    assert code_of(lambda: apply_session(SessionConfig(), session, "e")) == (code, param)
    with pytest.raises(EventError):
        apply_session(SessionConfig(), "not an object", None)


def test_transcription_session_shape() -> None:
    config = SessionConfig(transcription_only=True, transcription_model="whisper-1")
    event = ServerEvents().session(config, "updated")
    assert event["type"] == "transcription_session.updated"
    parsed = TranscriptionSessionUpdatedEvent.model_validate(
        {**event, "session": {**event["session"], "client_secret": {"expires_at": 0,
                                                                    "value": ""}}})
    assert parsed.session.input_audio_format == "pcm16"


def test_response_done_shape_with_usage() -> None:
    config = SessionConfig(model="m")
    done = ServerEvents().event("response.done", response=response_object(
        "resp_1", "cancelled", config, [], usage(12, 30), "turn_detected"))
    parsed = ResponseDoneEvent.model_validate(done)
    assert parsed.response.usage and parsed.response.usage.total_tokens == 42
    assert parsed.response.status_details and parsed.response.status_details.reason == \
        "turn_detected"


def test_usage_reports_audio_tokens_at_openais_rates() -> None:
    """OpenAI counts user audio at 1 token per 100 ms and assistant audio at 1 per 50 ms; a
    started token counts. Text and audio add up in input/output/total_tokens."""
    config = SessionConfig(model="m")
    tokens = usage(12, 30, input_audio_ms=2_350, output_audio_ms=1_000)
    done = ServerEvents().event("response.done", response=response_object(
        "resp_1", "completed", config, [], tokens))
    parsed = ResponseDoneEvent.model_validate(done).response.usage
    assert parsed and parsed.input_token_details and parsed.output_token_details
    assert parsed.input_token_details.audio_tokens == 24  # 2.35 s / 100 ms, rounded up
    assert parsed.input_token_details.text_tokens == 12
    assert parsed.output_token_details.audio_tokens == 20  # 1 s / 50 ms
    assert parsed.output_token_details.text_tokens == 30
    assert (parsed.input_tokens, parsed.output_tokens, parsed.total_tokens) == (36, 50, 86)
    no_audio = usage(3, 4)
    assert no_audio["input_token_details"]["audio_tokens"] == 0
    assert no_audio["output_token_details"]["audio_tokens"] == 0


# --- the GA vocabulary (services/edge/realtime_ga.py) ----------------------------------------


def test_ga_session_update_becomes_the_beta_one() -> None:
    from services.edge.realtime_ga import from_ga

    ga = {"type": "session.update", "event_id": "e", "session": {
        "type": "realtime", "output_modalities": ["text"], "instructions": "Hi",
        "audio": {"input": {"format": {"type": "audio/pcmu"},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 700},
                            "transcription": {"model": "whisper-1"}},
                  "output": {"format": {"type": "audio/pcm", "rate": 24000},
                             "voice": "marin"}}}}
    beta = from_ga(ga, transcription_only=False)
    config = apply_session(SessionConfig(), beta["session"], "e")
    assert config.modalities == ("text",) and config.input_audio_format == "g711_ulaw"
    assert config.turn_detection and config.turn_detection.silence_duration_ms == 700
    assert config.voice == "marin" and config.transcription_model == "whisper-1"
    transcription = from_ga({"type": "session.update", "session": {
        "type": "transcription", "audio": {"input": {"turn_detection": None}}}}, True)
    assert transcription["type"] == "transcription_session.update"
    assert transcription["session"] == {"turn_detection": None}


@pytest.mark.parametrize(("session", "param"), [
    ({"type": "transcription"}, "session.type"),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
     "session.audio.input.format"),
    ({"audio": {"input": {"colour": 1}}}, "session.audio.input.colour"),
    ({"audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5}}}},
     "session.audio.input.turn_detection.idle_timeout_ms"),
])
def test_ga_session_refusals_name_the_ga_field(session: dict[str, object], param: str) -> None:
    from services.edge.realtime_ga import from_ga

    event = {"type": "session.update", "session": {"type": "realtime", **session}}
    assert code_of(lambda: from_ga(event, transcription_only=False))[1] == param


def test_ga_server_events_parse_as_the_packages_ga_types() -> None:
    from openai.types.realtime import (
        ConversationItemAdded,
        ResponseAudioDeltaEvent,
        ResponseDoneEvent as GAResponseDone,
        SessionUpdatedEvent as GASessionUpdated,
    )

    from services.edge.realtime_events import assistant_item
    from services.edge.realtime_ga import to_ga

    config = SessionConfig(model="gpt-realtime", voice="marin")
    events = ServerEvents()
    (session,) = to_ga(events.session(config, "updated"), config)
    assert GASessionUpdated.model_validate(session).session.type == "realtime"
    transcription = SessionConfig(transcription_only=True, transcription_model="whisper-1")
    (created,) = to_ga(events.session(transcription, "created"), transcription)
    assert created["type"] == "session.created" and created["session"]["type"] == "transcription"
    (delta,) = to_ga(events.event("response.audio.delta", response_id="r", item_id="i",
                                  output_index=0, content_index=0, delta="AAAA"), config)
    assert ResponseAudioDeltaEvent.model_validate(delta).type == "response.output_audio.delta"
    item = assistant_item("i", "completed", {"type": "audio", "transcript": "Hello."})
    (added,) = to_ga(events.event("conversation.item.created", item=item,
                                  previous_item_id=None), config)
    assert ConversationItemAdded.model_validate(added).item.content[0].type == "output_audio"  # type: ignore[union-attr]
    done, item_done = to_ga(events.event("response.output_item.done", response_id="r",
                                         output_index=0, item=item), config)
    assert item_done["type"] == "conversation.item.done"
    (response,) = to_ga(events.event("response.done", response=response_object(
        "r", "completed", config, [item], usage(3, 4))), config)
    parsed = GAResponseDone.model_validate(response)
    assert parsed.response.output_modalities == ["text", "audio"]
    assert parsed.response.usage and parsed.response.usage.total_tokens == 7
