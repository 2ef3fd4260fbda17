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
from aimesh_sdk.audio import paced, pcm_chunks
from tests.integration.speech.conftest import INTERRUPTION, QUESTION, RATE, Speech, identity
from tests.integration.speech.converse_util import (
    Caller,
    converse_config,
)
from tests.support.mesh import TestMesh, free_port
from tests.support.speech import word_error_rate

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


async def test_cancel_reply_and_clear_input_keep_the_session(
    speech_mesh: TestMesh,
    speech_on_slow_conversation: str,
    slow_conversation: tuple[SlowConversation, str],
    questions: dict[str, np.ndarray],
) -> None:
    """On ONE Converse stream: CancelReply stops the reply being generated (no barge-in, no
    new speech), ClearInput drops an utterance half spoken (no transcript, no messages, no
    reply), and the next utterance on the same stream is heard and answered."""
    fake, _ = slow_conversation
    fake.calls = 0
    fake.cancelled.clear()
    settings = Settings.from_env({**speech_mesh.env, "AIMESH_SPEECH_ADDR": speech_on_slow_conversation})
    responses: list[speech_pb2.ConverseResponse] = []
    replying = asyncio.Event()  # the first reply's audio is streaming
    first_done = asyncio.Event()
    answered = asyncio.Event()  # a turn after the cleared one completed
    silence = np.zeros(RATE // 10, dtype=np.int16)

    async def audio(pcm: np.ndarray) -> AsyncIterator[speech_pb2.ConverseRequest]:
        async for chunk in paced(pcm_chunks(pcm.tobytes(), RATE), RATE, 1.0):
            yield speech_pb2.ConverseRequest(audio_content=chunk)

    async def until(event: asyncio.Event) -> AsyncIterator[speech_pb2.ConverseRequest]:
        for _ in range(600):
            if event.is_set():
                return
            yield speech_pb2.ConverseRequest(audio_content=silence.tobytes())
            await asyncio.sleep(0.1)

    async def requests() -> AsyncIterator[speech_pb2.ConverseRequest]:
        yield speech_pb2.ConverseRequest(config=converse_config(conversation="conversations/slow"))
        async for r in audio(np.concatenate([np.zeros(RATE // 4, np.int16), questions[QUESTION]])):
            yield r
        async for r in until(replying):
            yield r
        first_turn = next(x.turn_id for x in responses if x.WhichOneof("event") == "audio")
        yield speech_pb2.ConverseRequest(cancel_reply=speech_pb2.CancelReply(turn_id=first_turn))
        async for r in until(first_done):
            yield r
        said = questions[INTERRUPTION]
        async for r in audio(said[: said.size * 6 // 10]):  # half a sentence...
            yield r
        yield speech_pb2.ConverseRequest(clear_input=speech_pb2.ClearInput())  # ...dropped
        async for r in audio(np.concatenate([np.zeros(RATE, np.int16), said])):
            yield r
        async for r in until(answered):
            yield r

    async with open_channel(settings, "speech", caller="gateway") as channel:
        stub = speech_pb2_grpc.SpeechServiceStub(channel)
        call = stub.Converse(requests(), metadata=identity(), timeout=150)
        async for response in call:
            responses.append(response)
            kind = response.WhichOneof("event")
            if kind == "audio":
                replying.set()
            if kind == "turn_complete":
                completed = [x for x in responses if x.WhichOneof("event") == "turn_complete"]
                first_done.set()
                if len(completed) == 3:
                    answered.set()
                    call.cancel()
                    break
    turns: list[str] = []
    for r in responses:
        if r.turn_id and r.turn_id not in turns:
            turns.append(r.turn_id)
    assert len(turns) == 3, [(r.turn_id, r.WhichOneof("event")) for r in responses]
    by_turn = {t: [r for r in responses if r.turn_id == t] for t in turns}
    assert not any(r.WhichOneof("event") == "barge_in" for r in responses)
    # 1. The cancelled reply: interrupted, generation cancelled upstream, nothing after.
    first = by_turn[turns[0]]
    assert first[-1].turn_complete.interrupted
    assert first[-1].turn_complete.finish_reason == orchestrator_pb2.FINISH_REASON_CANCELLED
    await asyncio.wait_for(fake.cancelled.wait(), 10)
    # 2. The cleared utterance: its speech began, then nothing but turn_complete(input_cleared).
    cleared = by_turn[turns[1]]
    assert cleared[-1].turn_complete.input_cleared, cleared[-1]
    assert not [r for r in cleared if r.WhichOneof("event") == "transcript"
                and r.transcript.is_final]
    assert not cleared[-1].turn_complete.user_message
    # 3. The next utterance on the same stream: heard whole and answered.
    third = by_turn[turns[2]]
    final = next(r.transcript for r in third
                 if r.WhichOneof("event") == "transcript" and r.transcript.is_final)
    trace = [(turns.index(r.turn_id) if r.turn_id in turns else -1, r.WhichOneof("event"),
              str(r.speech_event.type) + "@" + str(r.speech_event.offset.ToMilliseconds())
              if r.WhichOneof("event") == "speech_event" else
              (r.transcript.alternatives[0].transcript if r.transcript.alternatives else "")
              + ("!" if r.transcript.is_final else "")
              if r.WhichOneof("event") == "transcript" else "") for r in responses
             if r.WhichOneof("event") not in ("audio", "text_delta")]
    assert word_error_rate(INTERRUPTION, final.alternatives[0].transcript) <= 0.3, trace
    assert any(r.WhichOneof("event") == "text_delta" for r in third)
    done = third[-1].turn_complete
    assert not done.interrupted and not done.input_cleared
    assert fake.calls == 2  # the cleared utterance asked for no answer
