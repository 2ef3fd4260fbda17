"""Voice-loop Realtime sessions on Speech's Converse (server_vad turns).

Appended audio streams to one Converse call (opened at the first append); Converse ends each
utterance on the session's silence_duration_ms, stores it and the answer in a Conversation,
and streams the answer's text and Piper audio, which become one Realtime response per turn:
response.created → output item, content part → audio/transcript (or text) deltas → *.done →
response.done with the generation's token usage and the audio's tokens (realtime_events.usage).
Speech meters the audio seconds, the characters synthesized and the tokens exactly as for
native calls. With modalities ["text"] Converse replies in text only (disable_reply_audio):
nothing is synthesized or metered as characters synthesized.

- Instructions: the session's conversation is created by the edge with them as its
  system_prompt (and updated when they change).
- Barge-in: Converse cancels a reply when the caller speaks over it; that response ends
  `cancelled` (reason turn_detected). `conversation.item.truncate` stops the item's audio,
  cuts its transcript to what was played (the sentence span of each audio chunk) and cuts the
  stored assistant message to the same text (Conversation's TruncateMessage).
- response.cancel sends Converse's CancelReply: that reply's generation and synthesis stop at
  Speech, which stores the answer as incomplete; the call, the utterance being spoken and the
  conversation go on. input_audio_buffer.clear sends ClearInput: the utterance under way is
  dropped (no item, no answer), a reply in progress goes on.
- A session update that changes audio formats, voice or turn detection finishes the current
  call (its turn completes) and the next audio opens one with the new settings.

With turn_detection null (push-to-talk), appended audio is buffered; input_audio_buffer.commit
makes it a user item and response.create sends it to Converse followed by silence that ends
the utterance (Converse's endpointing is MANUAL_SILENCE_MS then), so the answer is that turn's.
With server_vad, response.create is refused (an answer follows each utterance), as are
response.create parameters (the session's settings apply).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import soundfile
from aimesh.conversation.v1 import conversation_pb2, conversation_pb2_grpc
from aimesh.speech.v1 import speech_pb2, speech_pb2_grpc
from google.protobuf import field_mask_pb2

from services.common.names import resource
from services.edge.realtime_events import (
    G711_RATE,
    PCM_RATE,
    EventError,
    Session,
    SessionConfig,
    assistant_item,
    audio_ms,
    new_id,
    response_object,
    unsupported,
    usage,
    user_item,
)
from services.edge.realtime_transcription import chunks, duration, millis, stream_error

log = logging.getLogger("aimesh.edge.realtime")

MODEL = resource("orchestrator.aimesh.dev/Model")
EVENT = speech_pb2.SpeechEventType
# Converse refusals that the same settings would meet again.
PERMANENT = frozenset({"not_found", "invalid_argument", "permission_denied",
                       "failed_precondition", "resource_exhausted", "unauthenticated"})
# Manual turns: Converse's endpointing silence, longer than pauses within one commit; the audio
# of a commit is followed by this much silence (and 200 ms) so that Converse ends the utterance.
MANUAL_SILENCE_MS = 1500
_G711 = {"g711_ulaw": "ULAW", "g711_alaw": "ALAW"}


def to_pcm16(audio: bytes, audio_format: str) -> bytes:
    """G.711 (8 kHz) to pcm16 at the same rate, through libsndfile; pcm16 as is."""
    if audio_format not in _G711:
        return audio
    samples, _ = soundfile.read(io.BytesIO(audio), format="RAW", subtype=_G711[audio_format],
                                samplerate=G711_RATE, channels=1, dtype="int16")
    return bytes(samples.astype("<i2").tobytes())


def from_pcm16(pcm: bytes, audio_format: str) -> bytes:
    """pcm16 (at the output rate) to the session's output format."""
    if audio_format not in _G711:
        return pcm
    out = io.BytesIO()
    soundfile.write(out, np.frombuffer(pcm, "<i2"), G711_RATE, format="RAW",
                    subtype=_G711[audio_format])
    return out.getvalue()


def output_rate(config: SessionConfig) -> int:
    return PCM_RATE if config.output_audio_format == "pcm16" else G711_RATE


def converse_model(model: str) -> str:
    """Orchestrator's model for the session's `?model=` (OpenAI's realtime model names, and
    none, mean the conversation's default)."""
    if not model or model.startswith("gpt-"):
        return ""
    return model if MODEL.matches(model) else MODEL.format(model)


@dataclass
class Reply:
    """One Realtime response: a Converse turn's answer."""

    response_id: str
    item_id: str
    text: str = ""
    pcm_bytes: int = 0  # answer audio sent, at the output rate
    # (audio start ms, audio end ms, text start, text end) of each audio chunk sent
    spans: list[tuple[int, int, int, int]] = field(default_factory=list)
    muted: bool = False  # truncated or cancelled: nothing more is sent for it
    status: str = "in_progress"
    reason: str | None = None
    transcript: str | None = None  # after a truncation: what was heard
    message: str = ""  # the stored assistant message, once its turn completed
    keep: int | None = None  # a truncation's kept length, applied when `message` is known

    def heard(self, audio_end_ms: int) -> str:
        """The transcript up to `audio_end_ms` of played audio: whole sentences played, and
        of the sentence playing then, its words in proportion to the time it played. It is
        the reply text's first heard_length(audio_end_ms) code points."""
        return self.text[:self.heard_length(audio_end_ms)].strip()

    def heard_length(self, audio_end_ms: int) -> int:
        cut = 0
        for start, _, text_start, text_end in self.spans:
            if start >= audio_end_ms:
                break
            sentence = [(s, e) for s, e, ts, _ in self.spans if ts == text_start]
            begin, finish = sentence[0][0], sentence[-1][1]
            share = min(1.0, (audio_end_ms - begin) / max(1, finish - begin))
            cut = max(cut, text_start + int(share * (text_end - text_start)))
        words = self.text[:cut]
        if cut < len(self.text) and not self.text[cut:cut + 1].isspace():
            words = words.rsplit(" ", 1)[0] if " " in words else ""
        return len(words.rstrip())


@dataclass
class Turn:
    user_item: str
    start_ms: int = 0
    committed: bool = False
    sent: str = ""
    reply: Reply | None = None
    failed: str | None = None
    answer_asked: bool = False  # manual turns: response.create was sent for it
    cleared: bool = False  # input_audio_buffer.clear dropped it
    end_ms: int | None = None  # where its utterance ended (session audio time)
    audio_ms: int = 0  # manual turns: the committed audio's duration
    queue: Any = None  # the request queue of the Converse call it came on


class VoiceLoop:
    """The bridge of a voice session (see the module docstring)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.speech = speech_pb2_grpc.SpeechServiceStub(session.channels.get("speech"))
        self.conversations = conversation_pb2_grpc.ConversationServiceStub(
            session.channels.get("conversation"))
        self.conversation = ""
        self.instructions = ""  # what the conversation's system_prompt holds
        self.queue: asyncio.Queue[speech_pb2.ConverseRequest | None] | None = None
        self.call: Any = None
        self.task: asyncio.Task[None] | None = None
        self.base_ms = 0  # session audio before the current call
        self.appended_bytes = 0
        self.turns: dict[str, Turn] = {}
        self.items: dict[str, dict[str, Any]] = {}  # conversation items, for retrieve
        self.replies: dict[str, Reply] = {}  # by assistant item id
        self.last_item: str | None = None
        # The settings Speech refused (a voice or model it does not have, a budget...) and
        # why: audio is not sent again until the session is updated.
        self.refused: tuple[SessionConfig, str] | None = None
        self.buffer = bytearray()  # manual turns: pcm16 since the last commit
        self.committed_audio: list[tuple[Turn, bytes]] = []  # committed, not yet answered
        self.expected: deque[Turn] = deque()  # sent to Converse, its turn not begun yet

    def now_ms(self) -> int:
        return audio_ms(self.appended_bytes, self.session.config.input_audio_format)

    # --- client events --------------------------------------------------------------------

    def check(self, config: SessionConfig, event_id: str | None) -> None:
        """Every configuration a voice session can hold is served."""

    @property
    def manual(self) -> bool:
        return self.session.config.turn_detection is None

    def _in_rate(self) -> int:
        """The rate Converse takes the caller's pcm16 in (the input format's)."""
        return PCM_RATE if self.session.config.input_audio_format == "pcm16" else G711_RATE

    def _silence(self, ms: int) -> bytes:
        """`ms` of pcm16 silence at the rate Converse takes the caller's audio in."""
        return bytes(2 * (self._in_rate() * ms // 1000))

    async def _push(self, pcm: bytes) -> None:
        if self.refused is not None and self.refused[0] == self.session.config:
            raise EventError(f"Speech refused this session's settings ({self.refused[1]}); "
                             "change them with session.update", "session_refused", "session")
        if self.queue is None or self.task is None or self.task.done():
            await self._open()
        assert self.queue is not None
        for chunk in chunks(pcm):
            self.queue.put_nowait(speech_pb2.ConverseRequest(audio_content=chunk))

    async def append(self, audio: bytes) -> None:
        pcm = to_pcm16(audio, self.session.config.input_audio_format)
        if self.manual:
            self.buffer.extend(pcm)  # recognized when a response is asked for
        else:
            await self._push(pcm)
        self.appended_bytes += len(audio)

    async def commit(self, event_id: str | None) -> None:
        """server_vad: ends the utterance under way now, as if the silence had been heard.
        Manual turns: the buffered audio becomes a user item, answered on response.create."""
        empty = EventError("no speech to commit in the input audio buffer",
                           "input_audio_buffer_commit_empty", None, event_id)
        if self.manual:
            if len(self.buffer) < 2:
                raise empty
            turn = Turn(new_id("item"), audio_ms=len(self.buffer) * 500 // self._in_rate())
            self.committed_audio.append((turn, bytes(self.buffer)))
            self.buffer.clear()
            await self._committed(turn)
            return
        if self.queue is None or not any(not t.committed for t in self.turns.values()):
            raise empty
        detection = self.session.config.turn_detection
        await self._push(self._silence((detection.silence_duration_ms if detection else 500)
                                       + 200))

    async def _create_response(self, event: dict[str, Any]) -> None:
        """Manual turns: Converse hears the committed audio, then silence that ends it."""
        event_id = event.get("event_id")
        if event.get("response"):
            raise unsupported("response.create parameters (the session's settings apply)",
                              "response", event_id)
        if not self.manual:
            raise unsupported("response.create with server_vad (an answer follows each "
                              "utterance)", "type", event_id)
        if not self.committed_audio:
            raise EventError("no committed input audio to respond to (commit first)",
                             "response_create_empty", None, event_id)
        for turn, pcm in self.committed_audio:
            turn.answer_asked = True
            self.expected.append(turn)
            await self._push(pcm + self._silence(MANUAL_SILENCE_MS + 200))
        self.committed_audio.clear()

    async def clear(self) -> None:
        """Drops the audio not committed yet: the manual buffer, or with server_vad the
        utterance under way (Converse's ClearInput: no item, no answer). The call, a reply
        in progress and the conversation go on."""
        self.buffer.clear()
        if self.manual or self.queue is None:
            return
        for turn in self.turns.values():
            if not turn.committed and turn.queue is self.queue:
                turn.cleared = True
        self.queue.put_nowait(speech_pb2.ConverseRequest(clear_input=speech_pb2.ClearInput()))

    async def reconfigure(self) -> None:
        await self._sync_instructions()
        self._finish()

    async def handle(self, kind: str, event: dict[str, Any]) -> None:
        event_id = event.get("event_id")
        if kind == "response.cancel":
            await self._cancel(event_id)
        elif kind == "conversation.item.truncate":
            await self._truncate(event)
        elif kind == "conversation.item.retrieve":
            item = self.items.get(str(event.get("item_id")))
            if item is None:
                raise EventError(f"no item {event.get('item_id')!r} in this conversation",
                                 "item_not_found", "item_id", event_id)
            await self.session.send("conversation.item.retrieved", item=item)
        elif kind == "response.create":
            await self._create_response(event)
        else:
            raise EventError(f"{kind} is not valid in a voice session", "invalid_event_type",
                             "type", event_id)

    def busy(self) -> bool:
        """A turn is under way (an utterance, or its answer not complete yet)."""
        return bool(self.turns or self.expected)

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    # --- the Converse call ----------------------------------------------------------------

    async def _open(self) -> None:
        config = self.session.config
        await self._sync_instructions()
        detection = config.turn_detection
        in_rate = self._in_rate()
        first = speech_pb2.ConverseConfig(
            conversation=self.conversation,
            recognition_config=speech_pb2.RecognitionConfig(
                encoding=speech_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=in_rate,
                language_code=config.language),
            interim_results=True,
            endpointing=speech_pb2.EndpointingConfig(silence_duration=duration(
                detection.silence_duration_ms if detection else MANUAL_SILENCE_MS)),
            voice=config.speech_voice,
            output_audio_config=speech_pb2.AudioOutputConfig(
                encoding=speech_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=output_rate(config)),
            model=converse_model(config.model),
            disable_reply_audio=not self._audio_out())
        queue: asyncio.Queue[speech_pb2.ConverseRequest | None] = asyncio.Queue()
        self.queue = queue
        self.base_ms = self.now_ms()
        accepted = asyncio.Event()
        self.call = self.speech.Converse(self._requests(first, queue, accepted),
                                         metadata=self.session.metadata)
        self.task = asyncio.create_task(self._run(self.call, queue, accepted))

    @staticmethod
    async def _requests(first: speech_pb2.ConverseConfig,
                        queue: asyncio.Queue[speech_pb2.ConverseRequest | None],
                        accepted: asyncio.Event) -> AsyncIterator[speech_pb2.ConverseRequest]:
        yield speech_pb2.ConverseRequest(config=first)
        # Audio only once Speech accepted the settings (its first reply). A refusal (an
        # unknown voice: NOT_FOUND) ends the call while audio is being written, and grpc.aio
        # then reports the failed write as INTERNAL "Internal error from Core" in place of
        # Speech's status.
        await accepted.wait()
        while (request := await queue.get()) is not None:
            yield request

    def _finish(self) -> None:
        """Half-closes the call: Speech finishes the current turn, the next audio reopens."""
        if self.queue is not None:
            self.queue.put_nowait(None)
        self.queue = None

    async def _sync_instructions(self) -> None:
        """The conversation carries the session's instructions as its system prompt."""
        config = self.session.config
        if config.instructions == self.instructions:
            return
        try:
            if not self.conversation:
                created = await self.conversations.CreateConversation(
                    conversation_pb2.CreateConversationRequest(conversation=(
                        conversation_pb2.Conversation(
                            title="Realtime session", system_prompt=config.instructions,
                            default_model=converse_model(config.model)))),
                    metadata=self.session.metadata, timeout=10)
                self.conversation = created.name
            else:
                await self.conversations.UpdateConversation(
                    conversation_pb2.UpdateConversationRequest(
                        conversation=conversation_pb2.Conversation(
                            name=self.conversation, system_prompt=config.instructions),
                        update_mask=field_mask_pb2.FieldMask(paths=["system_prompt"])),
                    metadata=self.session.metadata, timeout=10)
        except grpc.aio.AioRpcError as exc:
            raise EventError(f"instructions: {exc.details()}", exc.code().name.lower(),
                             "session.instructions", kind="server_error") from None
        self.instructions = config.instructions

    async def _run(self, call: Any, queue: asyncio.Queue[Any], accepted: asyncio.Event) -> None:
        mine: set[str] = set()  # this call's turns (a finishing call runs beside a new one)
        try:
            async for reply in call:
                accepted.set()
                mine.add(reply.turn_id)
                await self._event(reply, queue)
        except grpc.aio.AioRpcError as exc:
            error = stream_error(exc, "Converse")
            if error is not None:
                if error.code in PERMANENT:  # transient failures retry with the next audio
                    self.refused = (self.session.config, error.message)
                await self.session.error(error)
        finally:
            if not accepted.is_set():  # refused: end the request stream waiting for it
                accepted.set()
                queue.put_nowait(None)
            for turn_id in mine & set(self.turns):
                turn = self.turns.pop(turn_id)
                if turn.reply and turn.reply.status == "in_progress":
                    await self._done(turn, "cancelled", None, "client_cancelled")

    # --- Converse events → Realtime events ------------------------------------------------

    async def _event(self, reply: speech_pb2.ConverseResponse, queue: asyncio.Queue[Any]) -> None:
        which = reply.WhichOneof("event")
        if which == "conversation":
            self.conversation = reply.conversation.conversation
            if reply.conversation.created:
                await self.session.send("conversation.created", conversation={
                    "id": self.conversation, "object": "realtime.conversation"})
            return
        turn = self.turns.get(reply.turn_id)
        if turn is None:
            known = self.expected.popleft() if self.expected else None
            turn = self.turns[reply.turn_id] = known or Turn(new_id("item"))
            turn.queue = queue
        if turn.cleared or (which == "turn_complete" and reply.turn_complete.input_cleared):
            if which == "turn_complete":  # input_audio_buffer.clear dropped it: no item
                self.turns.pop(reply.turn_id, None)
            return
        if which == "speech_event":
            await self._speech_event(turn, reply.speech_event)
        elif which == "transcript":
            await self._transcript(turn, reply.transcript)
        elif which == "text_delta":
            await self._text(turn, reply.text_delta.text)
        elif which == "audio":
            await self._audio(turn, reply.audio)
        elif which == "barge_in":
            interrupted = self.turns.get(reply.barge_in.interrupted_turn_id)
            if interrupted and interrupted.reply and interrupted.reply.status == "in_progress":
                interrupted.reply.status, interrupted.reply.reason = "cancelled", "turn_detected"
                interrupted.reply.muted = True
        elif which == "turn_complete":
            await self._turn_complete(reply.turn_id, turn, reply.turn_complete)
        elif which == "error":
            turn.failed = reply.error.message
            await self.session.error(EventError(reply.error.message, "turn_failed",
                                                kind="server_error"))

    async def _speech_event(self, turn: Turn, event: speech_pb2.SpeechEvent) -> None:
        if self.manual:
            return  # turns are the client's commits
        at = self.base_ms + millis(event.offset)
        if event.type == EVENT.SPEECH_EVENT_TYPE_SPEECH_BEGIN:
            detection = self.session.config.turn_detection
            turn.start_ms = max(0, at - (detection.prefix_padding_ms if detection else 0))
            await self.session.send("input_audio_buffer.speech_started", item_id=turn.user_item,
                                    audio_start_ms=turn.start_ms)
        elif event.type == EVENT.SPEECH_EVENT_TYPE_SPEECH_END:
            await self.session.send("input_audio_buffer.speech_stopped", item_id=turn.user_item,
                                    audio_end_ms=at)
        elif event.type == EVENT.SPEECH_EVENT_TYPE_END_OF_UTTERANCE:
            turn.end_ms = at
            await self._committed(turn)

    async def _committed(self, turn: Turn) -> None:
        if turn.committed and turn.user_item in self.items:
            return
        turn.committed = True
        previous, self.last_item = self.last_item, turn.user_item
        self.items[turn.user_item] = user_item(turn.user_item)
        await self.session.send("input_audio_buffer.committed", item_id=turn.user_item,
                                previous_item_id=previous)
        await self.session.send("conversation.item.created", previous_item_id=previous,
                                item=self.items[turn.user_item])

    async def _transcript(self, turn: Turn, result: speech_pb2.StreamingRecognitionResult) -> None:
        if not result.alternatives:
            return
        text = result.alternatives[0].transcript.strip()
        if not result.is_final:
            if self.session.config.transcription_model and text.startswith(turn.sent) \
                    and len(text) > len(turn.sent):
                await self._transcription_delta(turn, text[len(turn.sent):])
            return
        await self._committed(turn)
        self.items[turn.user_item] = user_item(turn.user_item, text)
        if not self.session.config.transcription_model:
            return
        if text.startswith(turn.sent) and len(text) > len(turn.sent):
            await self._transcription_delta(turn, text[len(turn.sent):])
        seconds = max(0.0, (self.now_ms() - turn.start_ms) / 1000)
        await self.session.send("conversation.item.input_audio_transcription.completed",
                                item_id=turn.user_item, content_index=0, transcript=text,
                                usage={"type": "duration", "seconds": round(seconds, 3)})

    async def _transcription_delta(self, turn: Turn, delta: str) -> None:
        turn.sent += delta
        await self.session.send("conversation.item.input_audio_transcription.delta",
                                item_id=turn.user_item, content_index=0, delta=delta)

    # --- responses ------------------------------------------------------------------------

    def _audio_out(self) -> bool:
        return "audio" in self.session.config.modalities

    def _part(self, reply: Reply, done: bool = False) -> dict[str, Any]:
        text = reply.transcript if reply.transcript is not None else reply.text
        if self._audio_out():
            return {"type": "audio", "transcript": text if done else ""}
        return {"type": "text", "text": text if done else ""}

    async def _start_reply(self, turn: Turn) -> Reply:
        if turn.reply is not None:
            return turn.reply
        await self._committed(turn)
        reply = turn.reply = Reply(new_id("resp"), new_id("item"))
        self.replies[reply.item_id] = reply
        send, config = self.session.send, self.session.config
        item = assistant_item(reply.item_id, "in_progress", None)
        previous, self.last_item = self.last_item, reply.item_id
        self.items[reply.item_id] = item
        await send("response.created", response=response_object(
            reply.response_id, "in_progress", config, []))
        await send("response.output_item.added", response_id=reply.response_id,
                   output_index=0, item=item)
        await send("conversation.item.created", previous_item_id=previous, item=item)
        await send("response.content_part.added", response_id=reply.response_id,
                   item_id=reply.item_id, output_index=0, content_index=0,
                   part=self._part(reply))
        return reply

    def _ids(self, reply: Reply) -> dict[str, Any]:
        return {"response_id": reply.response_id, "item_id": reply.item_id,
                "output_index": 0, "content_index": 0}

    async def _text(self, turn: Turn, delta: str) -> None:
        reply = await self._start_reply(turn)
        reply.text += delta
        if reply.muted:
            return
        kind = "response.audio_transcript.delta" if self._audio_out() else "response.text.delta"
        await self.session.send(kind, delta=delta, **self._ids(reply))

    async def _audio(self, turn: Turn, audio: speech_pb2.SynthesizedAudio) -> None:
        reply = await self._start_reply(turn)
        rate = output_rate(self.session.config)
        start = reply.pcm_bytes * 1000 // (2 * rate)
        reply.pcm_bytes += len(audio.audio_content)
        end = reply.pcm_bytes * 1000 // (2 * rate)
        reply.spans.append((start, end, audio.text_start_offset, audio.text_end_offset))
        if reply.muted or not self._audio_out():
            return
        data = from_pcm16(audio.audio_content, self.session.config.output_audio_format)
        await self.session.send("response.audio.delta", delta=base64.b64encode(data).decode(),
                                **self._ids(reply))

    async def _turn_complete(self, turn_id: str, turn: Turn,
                             done: speech_pb2.TurnComplete) -> None:
        await self._committed(turn)
        reply = turn.reply
        if reply is None and turn.answer_asked and not turn.failed:
            await self.session.error(EventError(
                "no speech was recognized in the committed audio: nothing to answer",
                "no_speech", kind="invalid_request_error"))
        if reply is None or reply.status not in ("in_progress", "cancelled"):
            self.turns.pop(turn_id, None)
            return
        reply.message = done.assistant_message
        await self._store_truncation(reply)
        status, reason = reply.status, reply.reason
        if status == "in_progress":
            status = "failed" if turn.failed and not reply.text else \
                ("cancelled" if done.interrupted else "completed")
            reason = turn.failed if status == "failed" else "turn_detected"
        tokens = usage(done.usage.prompt_tokens, done.usage.completion_tokens,
                       input_audio_ms=self._heard_ms(turn),
                       output_audio_ms=millis(done.reply_audio_duration))
        await self._done(turn, status, tokens, reason)
        self.turns.pop(turn_id, None)

    async def _done(self, turn: Turn, status: str, tokens: dict[str, Any] | None,
                    reason: str | None) -> None:
        reply = turn.reply
        assert reply is not None
        reply.status, reply.muted = status, True
        send, ids = self.session.send, self._ids(reply)
        part = self._part(reply, done=True)
        if self._audio_out():
            await send("response.audio.done", **ids)
            await send("response.audio_transcript.done", transcript=part["transcript"], **ids)
        else:
            await send("response.text.done", text=part["text"], **ids)
        await send("response.content_part.done", part=part, **ids)
        item = assistant_item(reply.item_id, "completed" if status == "completed"
                              else "incomplete", part)
        self.items[reply.item_id] = item
        await send("response.output_item.done", response_id=reply.response_id,
                   output_index=0, item=item)
        await send("response.done", response=response_object(
            reply.response_id, status, self.session.config, [item], tokens, reason))

    def _heard_ms(self, turn: Turn) -> int:
        """The caller's audio of a turn: the committed audio (manual turns), else from its
        speech start (with the prefix padding) to its end of utterance."""
        if self.manual or turn.answer_asked:
            return turn.audio_ms
        return max(0, (turn.end_ms if turn.end_ms is not None else self.now_ms()) - turn.start_ms)

    async def _cancel(self, event_id: str | None) -> None:
        """Stops the responses in progress with Converse's CancelReply: generation and
        synthesis stop at Speech, which stores the answer as incomplete; the call, the
        utterance being spoken and the conversation go on. Each ends `cancelled`
        (client_cancelled) when its turn completes."""
        cancelled = [(turn_id, t) for turn_id, t in self.turns.items()
                     if t.reply and t.reply.status == "in_progress"]
        if not cancelled:
            raise EventError("there is no response in progress to cancel",
                             "response_cancel_not_active", None, event_id)
        queue = self.queue
        for turn_id, turn in cancelled:
            assert turn.reply is not None
            turn.reply.status, turn.reply.reason = "cancelled", "client_cancelled"
            turn.reply.muted = True
            # A reply on a call already half-closed (a settings change) can no longer be
            # reached: it is muted here, and its turn completes at Speech.
            if queue is not None and turn.queue is queue:
                queue.put_nowait(speech_pb2.ConverseRequest(
                    cancel_reply=speech_pb2.CancelReply(turn_id=turn_id)))

    async def _truncate(self, event: dict[str, Any]) -> None:
        event_id = event.get("event_id")
        item_id = event.get("item_id")
        reply = self.replies.get(item_id) if isinstance(item_id, str) else None
        if reply is None:
            raise EventError(f"no assistant item {item_id!r} to truncate", "item_not_found",
                             "item_id", event_id)
        end_ms = event.get("audio_end_ms")
        sent_ms = reply.pcm_bytes * 1000 // (2 * output_rate(self.session.config))
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or not 0 <= end_ms <= sent_ms:
            raise EventError(f"audio_end_ms must be an integer from 0 to {sent_ms} (the audio "
                             "sent for this item)", "invalid_value", "audio_end_ms", event_id)
        if event.get("content_index", 0) != 0:
            raise EventError("content_index must be 0", "invalid_value", "content_index",
                             event_id)
        reply.muted = True
        reply.transcript = reply.heard(end_ms)
        reply.keep = reply.heard_length(end_ms)
        item = self.items.get(reply.item_id)
        if item and item.get("content"):
            item["content"][0]["transcript"] = reply.transcript
        if reply.message:  # stored already: cut it now, else when its turn completes
            await self._store_truncation(reply, event_id)
        await self.session.send("conversation.item.truncated", item_id=reply.item_id,
                                content_index=0, audio_end_ms=end_ms)

    async def _store_truncation(self, reply: Reply, event_id: str | None = None) -> None:
        """The stored assistant message keeps only what was heard (OpenAI drops the
        truncated audio's transcript server-side): Conversation's TruncateMessage, called
        with the caller's identity like every other call of the session."""
        if reply.keep is None or not reply.message:
            return
        keep, reply.keep = reply.keep, None
        try:
            await self.conversations.TruncateMessage(
                conversation_pb2.TruncateMessageRequest(name=reply.message, content_length=keep),
                metadata=self.session.metadata, timeout=10)
        except grpc.aio.AioRpcError as exc:
            await self.session.error(EventError(
                f"the stored message could not be truncated: {exc.details()}",
                exc.code().name.lower(), "item_id", event_id, kind="server_error"))
