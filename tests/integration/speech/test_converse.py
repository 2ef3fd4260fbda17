"""Converse end to end: real Triton ASR/TTS, real Conversation -> Orchestrator -> Triton responder.

The caller streams synthesized speech in real time and keeps the microphone open (silence)
until the server has answered, like a voice app would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import numpy as np
import pytest
from aimesh.conversation.v1 import conversation_pb2, conversation_pb2_grpc
from aimesh.speech.v1 import speech_pb2

from aimesh_sdk.audio import paced, pcm_chunks
from services.common.triton import TritonClient
from tests.integration.speech.conftest import RATE, Speech, rpc_error_details
from tests.integration.triton.speech_util import synthesize
from tests.support.mesh import TestMesh

QUESTION = "the weather today is sunny with a high of seventy degrees"
INTERRUPTION = "the meeting starts at nine in the morning"
MAX_SESSION_SECONDS = 90.0
# The platform's default model is the extractive responder: it answers from context only.
FACTS = (
    "You are a helpful voice assistant. The weather today is sunny and warm with a light breeze. "
    "The weather tomorrow will be cloudy with some rain in the afternoon. "
    "The weather this weekend looks dry, with clear skies on Saturday and Sunday."
)


async def new_conversation(mesh: TestMesh, speech: Speech) -> str:
    stub = conversation_pb2_grpc.ConversationServiceStub(mesh.channel("conversation"))
    created = await stub.CreateConversation(
        conversation_pb2.CreateConversationRequest(
            conversation=conversation_pb2.Conversation(title="voice test", system_prompt=FACTS)
        ),
        metadata=speech.metadata,
        timeout=10,
    )
    return created.name


@pytest.fixture(scope="module")
async def converse_mesh(speech_mesh: TestMesh) -> TestMesh:
    speech_mesh.ensure("usage", "orchestrator", "conversation")
    return speech_mesh


@pytest.fixture(scope="module")
async def questions(speech_mesh: TestMesh) -> dict[str, np.ndarray]:
    client = TritonClient(speech_mesh.settings.triton_url, default_timeout=60.0)
    try:
        return {q: await synthesize(client, q) for q in (QUESTION, INTERRUPTION)}
    finally:
        await client.close()


def converse_config(**overrides: object) -> speech_pb2.ConverseConfig:
    config = speech_pb2.ConverseConfig(
        recognition_config=speech_pb2.RecognitionConfig(
            encoding=speech_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=RATE, language_code="en-US"
        ),
        output_audio_config=speech_pb2.AudioOutputConfig(
            encoding=speech_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000
        ),
        interim_results=True,
    )
    for key, value in overrides.items():
        if isinstance(value, speech_pb2.AudioOutputConfig):
            getattr(config, key).CopyFrom(value)
        else:
            setattr(config, key, value)
    return config


class Caller:
    """Streams utterances, then silence, until told to hang up; records every response."""

    def __init__(self, speech: Speech) -> None:
        self.speech = speech
        self.responses: list[speech_pb2.ConverseResponse] = []
        self.hang_up = asyncio.Event()
        self.speak_next = asyncio.Event()

    async def requests(self, config: speech_pb2.ConverseConfig, *utterances: np.ndarray) -> AsyncIterator[speech_pb2.ConverseRequest]:
        yield speech_pb2.ConverseRequest(config=config)
        silence = np.zeros(RATE // 10, dtype=np.int16).tobytes()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MAX_SESSION_SECONDS
        for i, utterance in enumerate(utterances):
            if i > 0:
                while not self.speak_next.is_set() and loop.time() < deadline:
                    yield speech_pb2.ConverseRequest(audio_content=silence)
                    await asyncio.sleep(0.1)
                self.speak_next.clear()
            lead = np.zeros(RATE // 4, dtype=np.int16)
            async for chunk in paced(pcm_chunks(np.concatenate([lead, utterance]).tobytes(), RATE), RATE, 1.0):
                yield speech_pb2.ConverseRequest(audio_content=chunk)
        while not self.hang_up.is_set() and loop.time() < deadline:
            yield speech_pb2.ConverseRequest(audio_content=silence)
            await asyncio.sleep(0.1)

    async def run(
        self,
        config: speech_pb2.ConverseConfig,
        *utterances: np.ndarray,
        on_response: Callable[[speech_pb2.ConverseResponse], None],
    ) -> None:
        call = self.speech.stub.Converse(
            self.requests(config, *utterances), metadata=self.speech.metadata, timeout=MAX_SESSION_SECONDS + 30
        )
        async for response in call:
            self.responses.append(response)
            on_response(response)

    def events(self, turn_id: str | None = None) -> list[str]:
        return [r.WhichOneof("event") for r in self.responses if turn_id is None or r.turn_id == turn_id]


async def test_converse_answers_a_spoken_question(converse_mesh: TestMesh, speech: Speech, questions: dict[str, np.ndarray]) -> None:
    caller = Caller(speech)

    def on_response(response: speech_pb2.ConverseResponse) -> None:
        if response.WhichOneof("event") == "turn_complete":
            caller.hang_up.set()

    conversation = await new_conversation(converse_mesh, speech)
    await caller.run(converse_config(conversation=conversation), questions[QUESTION], on_response=on_response)
    first = caller.responses[0]
    assert first.WhichOneof("event") == "conversation" and not first.conversation.created
    assert first.conversation.conversation == conversation
    turn_id = caller.responses[1].turn_id
    events = caller.events(turn_id)
    assert events[0] == "speech_event" and caller.responses[1].speech_event.type == speech_pb2.SPEECH_EVENT_TYPE_SPEECH_BEGIN
    assert "error" not in events, [r.error for r in caller.responses if r.WhichOneof("event") == "error"]
    finals = [r.transcript for r in caller.responses if r.WhichOneof("event") == "transcript" and r.transcript.is_final]
    assert len(finals) == 1 and "weather" in finals[0].alternatives[0].transcript
    assert events.index("transcript") < events.index("text_delta") < events.index("turn_complete")
    assert "audio" in events and events.index("audio") < events.index("turn_complete")
    reply_text = "".join(r.text_delta.text for r in caller.responses if r.WhichOneof("event") == "text_delta")
    audio = b"".join(r.audio.audio_content for r in caller.responses if r.WhichOneof("event") == "audio")
    assert reply_text.strip() and len(audio) > 16000  # > 0.5 s of spoken answer
    done = caller.responses[-1].turn_complete
    assert done.user_message.startswith(first.conversation.conversation + "/messages/")
    assert done.assistant_message.startswith(first.conversation.conversation + "/messages/")
    assert not done.interrupted
    assert done.reply_audio_duration.ToNanoseconds() == pytest.approx(len(audio) / 2 / 16000 * 1e9, abs=1e3)


async def test_barge_in_cancels_the_reply(converse_mesh: TestMesh, speech: Speech, questions: dict[str, np.ndarray]) -> None:
    caller = Caller(speech)
    first_turn: list[str] = []
    audio_after_barge_in: list[str] = []
    barged: list[speech_pb2.ConverseResponse] = []

    def on_response(response: speech_pb2.ConverseResponse) -> None:
        kind = response.WhichOneof("event")
        if kind == "speech_event" and not first_turn:
            first_turn.append(response.turn_id)
        if kind in ("text_delta", "audio") and response.turn_id == first_turn[0] and not caller.speak_next.is_set() and not barged:
            caller.speak_next.set()  # interrupt as soon as the answer starts
        if kind == "barge_in":
            barged.append(response)
        elif barged and kind == "audio" and response.turn_id == first_turn[0]:
            audio_after_barge_in.append(response.turn_id)
        if kind == "turn_complete" and response.turn_id != first_turn[0]:
            caller.hang_up.set()

    conversation = await new_conversation(converse_mesh, speech)
    await caller.run(
        converse_config(conversation=conversation), questions[QUESTION], questions[INTERRUPTION],
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
    if any(c.turn_id == first_turn[0] for c in caller.responses[after:] if c.WhichOneof("event") == "turn_complete"):
        # It was still generating: cancelled and reported as interrupted.
        assert interrupted.interrupted


async def test_converse_bad_config_is_rejected(converse_mesh: TestMesh, speech: Speech) -> None:
    config = converse_config(
        output_audio_config=speech_pb2.AudioOutputConfig(encoding=speech_pb2.AUDIO_ENCODING_WAV),
        speaking_rate=10.0,
    )

    async def requests() -> AsyncIterator[speech_pb2.ConverseRequest]:
        yield speech_pb2.ConverseRequest(config=config)
        yield speech_pb2.ConverseRequest(audio_content=b"\x00\x00" * 100)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in speech.stub.Converse(requests(), metadata=speech.metadata, timeout=20):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {f for f, _ in rpc_error_details(info.value)}
    assert {"config.output_audio_config.encoding", "config.speaking_rate"} <= fields
