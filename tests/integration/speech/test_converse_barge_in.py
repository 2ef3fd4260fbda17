"""Barge-in while the reply is still being generated: the Speech service runs against a slow
ConversationService (a test double serving the real contract) so the caller can interrupt in
the middle of generation, deterministically. Checks that generation is cancelled upstream,
the turn completes as interrupted with FINISH_REASON_CANCELLED, and nothing of the
interrupted reply follows the barge_in."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import grpc
import numpy as np
import pytest
from aimesh.conversation.v1 import conversation_pb2, conversation_pb2_grpc
from aimesh.orchestrator.v1 import orchestrator_pb2
from aimesh.speech.v1 import speech_pb2, speech_pb2_grpc

from scripts.stack import grpc_healthy
from services.common import tls
from services.common.channels import open_channel
from services.common.config import REPO_ROOT, Settings
from tests.integration.speech.conftest import INTERRUPTION, QUESTION, Speech, identity
from tests.integration.speech.converse_util import (
    Caller,
    converse_config,
)
from tests.support.mesh import TestMesh, free_port

DELTA = "This sentence is part of a long answer. "


class SlowConversation(conversation_pb2_grpc.ConversationServiceServicer):
    """Answers the first message with 60 sentences, one every 300 ms (later ones with two);
    records whether an answer was cancelled before it finished."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.calls = 0
        self.first_call_deltas = 0

    async def GetConversation(
        self, request: conversation_pb2.GetConversationRequest, context: object
    ) -> conversation_pb2.Conversation:
        return conversation_pb2.Conversation(name=request.name)

    async def SendMessage(
        self, request: conversation_pb2.SendMessageRequest, context: object
    ) -> AsyncIterator[conversation_pb2.SendMessageResponse]:
        yield conversation_pb2.SendMessageResponse(
            user_message=conversation_pb2.Message(
                name=f"{request.conversation}/messages/1", content=request.content
            )
        )
        self.calls += 1
        first = self.calls == 1
        finished = False
        try:
            for _ in range(60 if first else 2):
                await asyncio.sleep(0.3)
                self.first_call_deltas += first
                yield conversation_pb2.SendMessageResponse(
                    delta=conversation_pb2.AssistantDelta(text=DELTA)
                )
            finished = True
            yield conversation_pb2.SendMessageResponse(
                assistant_message=conversation_pb2.Message(
                    name=f"{request.conversation}/messages/2"
                )
            )
        finally:
            if not finished:
                self.cancelled.set()


@pytest.fixture(scope="module")
async def slow_conversation(
    speech_mesh: TestMesh,
) -> AsyncIterator[tuple[SlowConversation, str]]:
    """The double listens as the real Conversation does: under mTLS with the "conversation"
    certificate and the caller-graph check, so Speech reaches it exactly as in production."""
    servicer = SlowConversation()
    settings = speech_mesh.settings
    mode = settings.tls_mode
    server = grpc.aio.server(interceptors=[tls.interceptor_for("conversation", mode)])  # type: ignore[arg-type]
    conversation_pb2_grpc.add_ConversationServiceServicer_to_server(servicer, server)
    port = tls.add_listen_port(
        server, "127.0.0.1:0", "conversation", mode, settings.certs_path  # type: ignore[arg-type]
    )
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture(scope="module")
def speech_on_slow_conversation(
    speech_mesh: TestMesh, slow_conversation: tuple[SlowConversation, str]
) -> Iterator[str]:
    """A second Speech process whose Conversation is the slow double."""
    address = f"127.0.0.1:{free_port()}"
    env = {
        **speech_mesh.env,
        "AIMESH_CONVERSATION_ADDR": slow_conversation[1],
        "AIMESH_SPEECH_ADDR": address,
    }
    log = open(speech_mesh.var_dir / "speech-slow-conversation.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "services.speech"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    settings = Settings.from_env(env)
    try:
        for _ in range(600):
            if process.poll() is not None:
                pytest.fail(f"speech exited with {process.returncode}; see {log.name}")
            if grpc_healthy(settings, "speech"):
                break
            import time

            time.sleep(0.1)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


async def test_barge_in_during_generation_cancels_it(
    speech_mesh: TestMesh,
    speech_on_slow_conversation: str,
    slow_conversation: tuple[SlowConversation, str],
    questions: dict[str, np.ndarray],
) -> None:
    fake, _ = slow_conversation
    settings = Settings.from_env({**speech_mesh.env, "AIMESH_SPEECH_ADDR": speech_on_slow_conversation})
    async with open_channel(settings, "speech", caller="gateway") as channel:
        caller = Caller(Speech(speech_pb2_grpc.SpeechServiceStub(channel), identity()))
        first_turn: list[str] = []
        barged: list[int] = []

        def on_response(response: speech_pb2.ConverseResponse) -> None:
            kind = response.WhichOneof("event")
            if kind == "speech_event" and not first_turn:
                first_turn.append(response.turn_id)
            if kind == "audio" and response.turn_id == first_turn[0]:
                caller.speak_next.set()  # the answer is playing and still being generated: interrupt
            if kind == "barge_in":
                barged.append(len(caller.responses) - 1)
            if kind == "turn_complete" and response.turn_id != first_turn[0]:
                caller.hang_up.set()

        await caller.run(
            converse_config(conversation="conversations/slow"),
            questions[QUESTION],
            questions[INTERRUPTION],
            on_response=on_response,
        )
    assert barged, caller.events()
    barge = caller.responses[barged[0]]
    assert barge.barge_in.interrupted_turn_id == first_turn[0]
    assert barge.barge_in.audio_sent.ToNanoseconds() > 0
    await asyncio.wait_for(fake.cancelled.wait(), 10)  # SendMessage was cancelled upstream
    after = caller.responses[barged[0] + 1 :]
    first_after = [r.WhichOneof("event") for r in after if r.turn_id == first_turn[0]]
    assert first_after == ["turn_complete"], first_after  # nothing of the old reply after barge_in
    done = next(r.turn_complete for r in after if r.turn_id == first_turn[0])
    assert done.interrupted
    assert done.finish_reason == orchestrator_pb2.FINISH_REASON_CANCELLED
    assert done.user_message == "conversations/slow/messages/1"
    assert fake.first_call_deltas < 60
