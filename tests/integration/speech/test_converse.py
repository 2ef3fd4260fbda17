"""Converse end to end: real Triton ASR/TTS, real Conversation -> Orchestrator -> Triton responder.

The caller streams synthesized speech in real time and keeps the microphone open (silence)
until the server has answered, like a voice app would."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from aimesh.speech.v1 import speech_pb2

from tests.integration.speech.conftest import INTERRUPTION, QUESTION, Speech, rpc_error_details
from tests.integration.speech.converse_util import (
    Caller,
    converse_config,
    new_conversation,
)
from tests.support.mesh import TestMesh
from tests.support.speech import word_error_rate


@pytest.fixture(scope="module")
async def converse_mesh(speech_mesh: TestMesh) -> TestMesh:
    speech_mesh.ensure("usage", "orchestrator", "conversation")
    return speech_mesh


async def test_converse_answers_a_spoken_question(
    converse_mesh: TestMesh, gateway_speech: Speech, questions: dict[str, np.ndarray]
) -> None:
    # Through Envoy: a bidi stream, bearer token, identity set by the gateway.
    speech = gateway_speech
    caller = Caller(speech)

    def on_response(response: speech_pb2.ConverseResponse) -> None:
        if response.WhichOneof("event") == "turn_complete":
            caller.hang_up.set()

    conversation = await new_conversation(converse_mesh, speech)
    await caller.run(
        converse_config(conversation=conversation), questions[QUESTION], on_response=on_response
    )
    first = caller.responses[0]
    assert first.WhichOneof("event") == "conversation" and not first.conversation.created
    assert first.conversation.conversation == conversation
    turn_id = caller.responses[1].turn_id
    events = caller.events(turn_id)
    assert (
        events[0] == "speech_event"
        and caller.responses[1].speech_event.type == speech_pb2.SPEECH_EVENT_TYPE_SPEECH_BEGIN
    )
    assert "error" not in events, [
        r.error for r in caller.responses if r.WhichOneof("event") == "error"
    ]
    finals = [
        r.transcript
        for r in caller.responses
        if r.WhichOneof("event") == "transcript" and r.transcript.is_final
    ]
    # pocketsphinx on synthetic speech is approximate: the transcript must be recognisably the
    # question (closer to it than to the other sentence spoken in these tests), not exact.
    assert len(finals) == 1
    heard = finals[0].alternatives[0].transcript
    assert word_error_rate(QUESTION, heard) < word_error_rate(INTERRUPTION, heard), heard
    assert events.index("transcript") < events.index("text_delta") < events.index("turn_complete")
    assert "audio" in events and events.index("audio") < events.index("turn_complete")
    reply_text = "".join(
        r.text_delta.text for r in caller.responses if r.WhichOneof("event") == "text_delta"
    )
    audio = b"".join(
        r.audio.audio_content for r in caller.responses if r.WhichOneof("event") == "audio"
    )
    assert reply_text.strip() and len(audio) > 16000  # > 0.5 s of spoken answer
    # Each chunk names the sentence it speaks: spans in the reply text, in order, covering it.
    spans = [(r.audio.text_start_offset, r.audio.text_end_offset)
             for r in caller.responses if r.WhichOneof("event") == "audio"]
    assert spans == sorted(spans) and all(0 <= a < b <= len(reply_text) for a, b in spans)
    assert reply_text[spans[-1][1]:].strip() == ""
    done = caller.responses[-1].turn_complete
    assert done.user_message.startswith(first.conversation.conversation + "/messages/")
    assert done.assistant_message.startswith(first.conversation.conversation + "/messages/")
    assert not done.interrupted
    assert done.reply_audio_duration.ToNanoseconds() == pytest.approx(
        len(audio) / 2 / 16000 * 1e9, abs=1e3
    )


async def test_barge_in_cancels_the_reply(
    converse_mesh: TestMesh, speech: Speech, questions: dict[str, np.ndarray]
) -> None:
    caller = Caller(speech)
    first_turn: list[str] = []
    audio_after_barge_in: list[str] = []
    barged: list[speech_pb2.ConverseResponse] = []

    def on_response(response: speech_pb2.ConverseResponse) -> None:
        kind = response.WhichOneof("event")
        if kind == "speech_event" and not first_turn:
            first_turn.append(response.turn_id)
        if (
            kind in ("text_delta", "audio")
            and response.turn_id == first_turn[0]
            and not caller.speak_next.is_set()
            and not barged
        ):
            caller.speak_next.set()  # interrupt as soon as the answer starts
        if kind == "barge_in":
            barged.append(response)
        elif barged and kind == "audio" and response.turn_id == first_turn[0]:
            audio_after_barge_in.append(response.turn_id)
        if kind == "turn_complete" and response.turn_id != first_turn[0]:
            caller.hang_up.set()

    conversation = await new_conversation(converse_mesh, speech)
    await caller.run(
        converse_config(conversation=conversation),
        questions[QUESTION],
        questions[INTERRUPTION],
        on_response=on_response,
    )
    assert barged, caller.events()
    barge = barged[0].barge_in
    assert barge.interrupted_turn_id == first_turn[0]
    assert barged[0].turn_id != first_turn[0]  # the new turn the caller's speech starts
    assert not audio_after_barge_in  # playback of the interrupted reply stopped
    completes = [r for r in caller.responses if r.WhichOneof("event") == "turn_complete"]
    assert {c.turn_id for c in completes} >= {first_turn[0], barged[0].turn_id}
    interrupted = next(c.turn_complete for c in completes if c.turn_id == first_turn[0])
    after = caller.responses.index(barged[0])
    if any(
        c.turn_id == first_turn[0]
        for c in caller.responses[after:]
        if c.WhichOneof("event") == "turn_complete"
    ):
        # It was still generating: cancelled and reported as interrupted.
        assert interrupted.interrupted


async def test_converse_bad_config_is_rejected(converse_mesh: TestMesh, speech: Speech) -> None:
    config = converse_config(
        output_audio_config=speech_pb2.AudioOutputConfig(encoding=speech_pb2.AUDIO_ENCODING_WAV),
        speaking_rate=10.0,
    )

    async def requests() -> AsyncIterator[speech_pb2.ConverseRequest]:
        # Only the config: the server rejects it before reading audio (sending more would
        # race the server's status on the client side).
        yield speech_pb2.ConverseRequest(config=config)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in speech.stub.Converse(requests(), metadata=speech.metadata, timeout=20):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {f for f, _ in rpc_error_details(info.value)}
    assert {"config.output_audio_config.encoding", "config.speaking_rate"} <= fields
