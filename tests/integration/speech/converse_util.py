"""Converse test helpers: the caller (streams speech, then keeps the microphone open), the
default config, a conversation with facts the extractive responder can answer from."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import numpy as np
from aimesh.conversation.v1 import conversation_pb2, conversation_pb2_grpc
from aimesh.speech.v1 import speech_pb2

from aimesh_sdk.audio import paced, pcm_chunks
from tests.integration.speech.conftest import RATE, Speech, recognition_config
from tests.support.mesh import TestMesh

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
        metadata=speech.identity,
        timeout=10,
    )
    return created.name


def converse_config(**overrides: object) -> speech_pb2.ConverseConfig:
    config = speech_pb2.ConverseConfig(
        recognition_config=recognition_config(word_time_offsets=False),
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

    async def requests(
        self, config: speech_pb2.ConverseConfig, *utterances: np.ndarray
    ) -> AsyncIterator[speech_pb2.ConverseRequest]:
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
            async for chunk in paced(
                pcm_chunks(np.concatenate([lead, utterance]).tobytes(), RATE), RATE, 1.0
            ):
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
            self.requests(config, *utterances),
            metadata=self.speech.metadata,
            timeout=MAX_SESSION_SECONDS + 30,
        )
        async for response in call:
            self.responses.append(response)
            on_response(response)

    def events(self, turn_id: str | None = None) -> list[str]:
        return [
            r.WhichOneof("event") for r in self.responses if turn_id is None or r.turn_id == turn_id
        ]
