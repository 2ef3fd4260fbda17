"""Converse: the full-duplex voice loop.

Caller audio -> RecognitionSession (utterances) -> each non-empty final transcript is sent to
ConversationService.SendMessage -> its text deltas stream back to the caller and, sentence by
sentence, through TTS as audio. A turn is one caller utterance plus the reply to it.

Barge-in: when the caller starts speaking while a reply is being generated or its audio is
(estimated to be) still playing, the reply task is cancelled. Cancelling the SendMessage call
makes Conversation store the assistant message as STATE_INCOMPLETE; cancelling the TTS stream
cancels the Triton request. The caller gets `barge_in`, then `turn_complete(interrupted)`.

The caller's controls act in order with its audio: CancelReply stops one reply as a barge-in
would (without new speech), ClearInput ends the utterance in progress and drops it (no final, no
messages, no reply). With disable_reply_audio replies are text only (nothing synthesized).

Every response goes through one bounded queue, so a slow client slows synthesis and recognition
down (backpressure) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from aimesh.conversation.v1 import conversation_pb2, conversation_pb2_grpc
from aimesh.orchestrator.v1 import orchestrator_pb2
from aimesh.speech.v1 import speech_pb2

from services.common.channels import Channels
from services.common.errors import ServiceError, failed_precondition, unavailable
from services.common.identity import Identity
from services.common.triton import TritonClient
from services.common.usage_client import ResourceType, UsageClient
from services.speech.encode import speech_event_of, streaming_result
from services.speech.recognition import (
    Hypothesis,
    Recognition,
    RecognitionOptions,
    RecognitionSession,
    SpeechBegan,
    UtteranceFailed,
    run_session,
)
from services.speech.requests import (
    CONVERSE_IDLE_SECONDS,
    CONVERSE_MAX_SECONDS,
    audio_intake,
    check_first_message,
    check_output,
    check_speaking_rate,
    duration,
    next_request,
)
from services.speech.synthesis import NATURAL_SAMPLE_RATE, Synthesizer, VoiceInfo


class SpeechServices(Protocol):
    """What a Converse session uses of the Speech servicer that runs it."""

    channels: Channels
    triton: TritonClient
    usage: UsageClient
    synthesizer: Synthesizer
    recognition: Recognition


log = logging.getLogger("aimesh.speech.converse")

OUTPUT_QUEUE_SIZE = 64
SENTENCE_QUEUE_SIZE = 8
# A sentence is ready for TTS at . ! ? (or ; :) followed by whitespace, or a newline.
_SENTENCE = re.compile(r"^(.*?[.!?;:])\s+|^(.*?)\n+", re.DOTALL)


def service_error(exc: grpc.aio.AioRpcError, what: str) -> ServiceError:
    """A downstream failure as our own error, keeping its code."""
    return ServiceError(
        exc.code(), f"{what}: {exc.details()}", reason=f"CONVERSATION_{exc.code().name}"
    )


def take_sentences(buffer: str) -> tuple[list[str], str]:
    """Complete sentences at the start of `buffer`, and the rest."""
    out: list[str] = []
    while True:
        match = _SENTENCE.match(buffer)
        if not match:
            return out, buffer
        sentence = (match.group(1) or match.group(2) or "").strip()
        if sentence:
            out.append(sentence)
        buffer = buffer[match.end() :]


@dataclass(frozen=True)
class Sentence:
    """A sentence of a reply and its span in the reply text (code points)."""

    text: str
    start: int
    end: int

    @classmethod
    def locate(cls, text: str, reply: str, after: int) -> Sentence:
        """`text`, the next sentence of `reply` from code point `after` on, with its span."""
        start = reply.find(text, after)
        if start < 0:  # take_sentences only strips: not expected, but never fail a reply on it
            return cls(text, after, len(reply))
        return cls(text, start, start + len(text))


@dataclass
class Turn:
    turn_id: str
    utterance: int
    reply: asyncio.Task[None] | None = None
    user_message: str = ""
    assistant_message: str = ""
    audio_samples: int = 0
    finish_reason: int = orchestrator_pb2.FINISH_REASON_UNSPECIFIED
    usage: Any = None
    citations: list[Any] = field(default_factory=list)
    completed: bool = False


class ConverseSession:
    def __init__(self, servicer: SpeechServices, identity: Identity) -> None:
        self.servicer = servicer
        self.identity = identity
        self.out: asyncio.Queue[speech_pb2.ConverseResponse | None] = asyncio.Queue(
            OUTPUT_QUEUE_SIZE
        )
        self.turns: dict[int, Turn] = {}  # by utterance index
        self.active: Turn | None = None  # the turn whose reply runs or plays
        self.playback_end = 0.0  # monotonic time the client finishes playing the sent audio
        self.conversation = ""
        self.config = speech_pb2.ConverseConfig()
        self.voice: VoiceInfo | None = None
        self.rate = NATURAL_SAMPLE_RATE
        self.input_encoding = "LINEAR16"  # of the caller's audio chunks
        self.cleared: set[int] = set()  # utterances the caller dropped (ClearInput)

    # --- set-up ---------------------------------------------------------------------------

    def _check(self, first: speech_pb2.ConverseRequest | None) -> RecognitionOptions:
        cfg, audio, v = check_first_message(first, "config", "recognition_config")
        check_speaking_rate(v, "config.speaking_rate", cfg.speaking_rate)
        check_output(
            v,
            "config.output_audio_config",
            cfg.output_audio_config,
            cfg.HasField("output_audio_config"),
            ("LINEAR16",),
        )
        self.input_encoding = audio.encoding
        if cfg.conversation and not re.match(r"^conversations/[^/]+$", cfg.conversation):
            v.add("config.conversation", "must be conversations/{conversation} or empty")
        v.raise_if_any()
        self.config = cfg
        self.rate = cfg.output_audio_config.sample_rate_hertz or NATURAL_SAMPLE_RATE
        return RecognitionOptions(
            sample_rate=audio.sample_rate,
            interim_results=cfg.interim_results,
            silence_ms=audio.silence_ms,
            max_utterance_ms=audio.max_utterance_ms,
            speech_start_timeout_ms=audio.speech_start_timeout_ms,
        )

    def _stub(self) -> conversation_pb2_grpc.ConversationServiceStub:
        return conversation_pb2_grpc.ConversationServiceStub(
            self.servicer.channels.get("conversation")
        )

    async def _open_conversation(self) -> bool:
        stub = self._stub()
        headers = self.identity.to_headers()
        if self.config.conversation:
            try:
                found = await stub.GetConversation(
                    conversation_pb2.GetConversationRequest(name=self.config.conversation),
                    metadata=headers,
                    timeout=10.0,
                )
            except grpc.aio.AioRpcError as exc:
                raise service_error(exc, f"conversation {self.config.conversation}") from None
            if found.HasField("delete_time"):
                raise failed_precondition(
                    f"{found.name} is deleted; undelete it or start a new conversation",
                    reason="CONVERSATION_DELETED",
                )
            self.conversation = found.name
            return False
        try:
            created = await stub.CreateConversation(
                conversation_pb2.CreateConversationRequest(
                    conversation=conversation_pb2.Conversation(
                        title="Voice conversation", default_model=self.config.model
                    ),
                    request_id=str(uuid.uuid4()),
                ),
                metadata=headers,
                timeout=10.0,
            )
        except grpc.aio.AioRpcError as exc:
            raise service_error(exc, "creating the conversation") from None
        self.conversation = created.name
        return True

    # --- the session ----------------------------------------------------------------------

    async def run(
        self, requests: AsyncIterator[speech_pb2.ConverseRequest]
    ) -> AsyncIterator[speech_pb2.ConverseResponse]:
        first = await next_request(requests, CONVERSE_IDLE_SECONDS)
        options = self._check(first)
        self.voice = await self.servicer.synthesizer.voice(self.config.voice)
        await self.servicer.recognition.require_ready()
        created = await self._open_conversation()
        yield speech_pb2.ConverseResponse(
            conversation=speech_pb2.ConversationReady(
                conversation=self.conversation, created=created
            )
        )
        session = RecognitionSession(self.servicer.triton, options)
        chunks = audio_intake(
            self._controls(requests, session),
            config_field="config",
            sample_rate=options.sample_rate,
            encoding=self.input_encoding,
            max_seconds=CONVERSE_MAX_SECONDS,
            idle_seconds=CONVERSE_IDLE_SECONDS,
        )
        pump = asyncio.ensure_future(run_session(session, chunks))
        loop = asyncio.ensure_future(self._events(session))
        try:
            while True:
                response = await self.out.get()
                if response is None:
                    break
                yield response
            await loop
            await pump  # a fatal intake error (limit, bad chunk) ends the stream with its status
        finally:
            for task in (pump, loop):
                task.cancel()
            for turn in self.turns.values():
                if turn.reply is not None:
                    turn.reply.cancel()
            await asyncio.gather(
                pump,
                loop,
                *(t.reply for t in self.turns.values() if t.reply),
                return_exceptions=True,
            )
            await session.abort()
            await self.servicer.usage.meter(
                self.identity,
                ResourceType.RESOURCE_TYPE_AUDIO_SECONDS,
                session.received_seconds,
                "",
            )

    async def _controls(
        self,
        requests: AsyncIterator[speech_pb2.ConverseRequest],
        session: RecognitionSession,
    ) -> AsyncIterator[speech_pb2.ConverseRequest]:
        """The caller's messages, with the controls (cancel_reply, clear_input) acted on here.
        The audio before a control has been pushed to recognition when it acts: the intake
        asks for the next message only after the previous chunk was taken."""
        async for request in requests:
            which = request.WhichOneof("converse_request")
            if which == "cancel_reply":
                await self._cancel_reply(request.cancel_reply.turn_id)
            elif which == "clear_input":
                index = session.utterance_in_progress()
                if index is not None:
                    self.cleared.add(index)  # before its last events are read
                    await session.end_utterance()
            else:
                yield request

    async def _cancel_reply(self, turn_id: str) -> None:
        """CancelReply: stop the reply of `turn_id` (empty: the active one), keep the session."""
        turn = next((t for t in self.turns.values() if t.turn_id == turn_id), None) \
            if turn_id else self.active
        if turn is None or turn.reply is None or turn.reply.done():
            return  # no reply under way: nothing to stop
        turn.reply.cancel()
        await asyncio.gather(turn.reply, return_exceptions=True)
        if self.active is turn:
            self.active = None
            self.playback_end = 0.0
        turn.finish_reason = orchestrator_pb2.FINISH_REASON_CANCELLED
        await self._complete(turn, interrupted=True)

    async def _put(self, turn_id: str, **event: Any) -> None:
        await self.out.put(speech_pb2.ConverseResponse(turn_id=turn_id, **event))

    def _reply_active(self) -> bool:
        """A reply is being generated, or the client is still playing its audio."""
        turn = self.active
        if turn is None:
            return False
        running = turn.reply is not None and not turn.reply.done()
        return running or time.monotonic() < self.playback_end

    async def _events(self, session: RecognitionSession) -> None:
        try:
            async for event in session.events():
                turn = self.turns.get(event.utterance)
                if turn is None:
                    # A turn starts at the caller's SPEECH_BEGIN (or at a failure before it).
                    turn = Turn(turn_id=f"turn-{uuid.uuid4().hex[:12]}", utterance=event.utterance)
                    self.turns[event.utterance] = turn
                if event.utterance in self.cleared:
                    # ClearInput dropped it: no more of its events, no messages, no reply.
                    last = isinstance(event, UtteranceFailed) or (
                        isinstance(event, Hypothesis) and event.is_final
                    )
                    if last:
                        await self._complete(turn, input_cleared=True)
                    continue
                if (
                    isinstance(event, SpeechBegan)
                    and self._reply_active()
                    and not self.config.disable_barge_in
                ):
                    await self._barge_in(turn, event.offset)
                speech_event = speech_event_of(event)
                if speech_event is not None:
                    kind, offset = speech_event
                    await self._put(
                        turn.turn_id,
                        speech_event=speech_pb2.SpeechEvent(type=kind, offset=duration(offset)),  # type: ignore[arg-type]
                    )
                elif isinstance(event, Hypothesis):
                    await self._put(
                        turn.turn_id, transcript=streaming_result(event, with_words=True)
                    )
                    if event.is_final:
                        await self._start_turn(turn, event.text)
                elif isinstance(event, UtteranceFailed):
                    await self._put(turn.turn_id, error=event.error.to_status())
                    await self._complete(turn)
            # Caller half-closed: let the current reply finish, then end.
            replies = [t.reply for t in self.turns.values() if t.reply is not None]
            await asyncio.gather(*replies, return_exceptions=True)
        finally:
            await self.out.put(None)

    async def _barge_in(self, new_turn: Turn, offset: float) -> None:
        turn = self.active
        assert turn is not None
        self.active = None
        was_running = turn.reply is not None and not turn.reply.done()
        if was_running:
            turn.reply.cancel()  # type: ignore[union-attr]
            await asyncio.gather(turn.reply, return_exceptions=True)  # type: ignore[arg-type]
        self.playback_end = 0.0
        await self._put(
            new_turn.turn_id,
            barge_in=speech_pb2.BargeIn(
                interrupted_turn_id=turn.turn_id,
                speech_offset=duration(offset),
                audio_sent=duration(turn.audio_samples / self.rate),
            ),
        )
        if not turn.completed:
            # Generation was cut short. (A reply that only was still playing completed already.)
            if was_running:
                turn.finish_reason = orchestrator_pb2.FINISH_REASON_CANCELLED
            await self._complete(turn, interrupted=True)

    async def _start_turn(self, turn: Turn, text: str) -> None:
        if not text.strip():
            await self._complete(turn)  # nothing said: no reply, no messages
            return
        previous = self.active
        self.active = turn
        turn.reply = asyncio.ensure_future(self._reply(turn, text, previous))

    async def _complete(
        self, turn: Turn, interrupted: bool = False, input_cleared: bool = False
    ) -> None:
        if turn.completed:
            return
        turn.completed = True
        done = speech_pb2.TurnComplete(
            user_message=turn.user_message,
            assistant_message=turn.assistant_message,
            interrupted=interrupted,
            input_cleared=input_cleared,
            finish_reason=turn.finish_reason,  # type: ignore[arg-type]
            citations=turn.citations,
            reply_audio_duration=duration(turn.audio_samples / self.rate),
        )
        if turn.usage is not None:
            done.usage.CopyFrom(turn.usage)
        await self._put(turn.turn_id, turn_complete=done)

    # --- one reply ------------------------------------------------------------------------

    async def _reply(self, turn: Turn, text: str, previous: Turn | None) -> None:
        if previous is not None and previous.reply is not None and not previous.reply.done():
            await asyncio.gather(previous.reply, return_exceptions=True)  # replies never overlap
        sentences: asyncio.Queue[Sentence | None] = asyncio.Queue(SENTENCE_QUEUE_SIZE)
        # Text-only replies (disable_reply_audio): nothing synthesized, nothing metered for it.
        speaker = asyncio.ensure_future(
            self._drain(sentences)
            if self.config.disable_reply_audio
            else self._speak(turn, sentences)
        )
        try:
            await self._generate(turn, text, sentences)
            await sentences.put(None)
            await speaker
        except asyncio.CancelledError:
            speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=True)
            raise
        except ServiceError as exc:
            speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=True)
            await self._put(turn.turn_id, error=exc.to_status())
        await self._complete(turn)

    async def _generate(
        self, turn: Turn, text: str, sentences: asyncio.Queue[Sentence | None]
    ) -> None:
        request = conversation_pb2.SendMessageRequest(
            conversation=self.conversation,
            content=text,
            model=self.config.model,
            request_id=str(uuid.uuid4()),
        )
        if self.config.HasField("retrieval"):
            request.retrieval.CopyFrom(self.config.retrieval)
        call = self._stub().SendMessage(request, metadata=self.identity.to_headers())
        buffer = ""
        reply = ""  # the reply text so far: sentences are located in it for their spans
        located = 0
        try:
            async for event in call:
                which = event.WhichOneof("event")
                if which == "user_message":
                    turn.user_message = event.user_message.name
                elif which == "delta" and event.delta.text:
                    await self._put(
                        turn.turn_id,
                        text_delta=speech_pb2.AssistantTextDelta(text=event.delta.text),
                    )
                    reply += event.delta.text
                    ready, buffer = take_sentences(buffer + event.delta.text)
                    for sentence in ready:
                        span = Sentence.locate(sentence, reply, located)
                        located = span.end
                        await sentences.put(span)
                elif which == "assistant_message":
                    message = event.assistant_message
                    turn.assistant_message = message.name
                    turn.finish_reason = message.finish_reason
                    turn.usage = message.usage
                    turn.citations = list(message.citations)
                    if message.HasField("error") and message.error.code:
                        await self._put(turn.turn_id, error=message.error)
        except grpc.aio.AioRpcError as exc:
            raise service_error(exc, "the reply could not be generated") from None
        finally:
            if not call.done():
                call.cancel()  # barge-in: Conversation stores the answer as STATE_INCOMPLETE
        if buffer.strip():
            await sentences.put(Sentence.locate(buffer.strip(), reply, located))

    @staticmethod
    async def _drain(sentences: asyncio.Queue[Sentence | None]) -> None:
        """A text-only reply's sentences: taken, never spoken."""
        while await sentences.get() is not None:
            pass

    async def _speak(self, turn: Turn, sentences: asyncio.Queue[Sentence | None]) -> None:
        assert self.voice is not None
        index = 0
        characters = 0
        failed = False
        try:
            while True:
                sentence = await sentences.get()
                if sentence is None:
                    return
                if failed:
                    continue  # keep draining so generation (text) is never blocked by us
                characters += len(sentence.text)
                try:
                    async for chunk in self.servicer.synthesizer.stream(
                        sentence.text,
                        self.voice,
                        self.config.speaking_rate,
                        self.rate,
                        quick_start=index == 0,  # the reply's first words, fast
                    ):
                        await self._put(
                            turn.turn_id,
                            audio=speech_pb2.SynthesizedAudio(
                                audio_content=chunk.pcm.astype("<i2").tobytes(),
                                chunk_index=index,
                                audio_offset=duration(turn.audio_samples / self.rate),
                                text_start_offset=sentence.start,
                                text_end_offset=sentence.end,
                            ),
                        )
                        index += 1
                        turn.audio_samples += chunk.pcm.size
                        # The client plays in real time from the first chunk on.
                        self.playback_end = (
                            max(self.playback_end, time.monotonic()) + chunk.pcm.size / self.rate
                        )
                except ServiceError as exc:
                    failed = True
                    await self._put(
                        turn.turn_id,
                        error=unavailable(f"speech synthesis failed: {exc.message}").to_status(),
                    )
        finally:
            await self.servicer.usage.meter(
                self.identity,
                ResourceType.RESOURCE_TYPE_CHARACTERS_SYNTHESIZED,
                characters,
                f"{turn.turn_id}-{uuid.uuid4().hex[:8]}",
                model=self.voice.name,
            )
