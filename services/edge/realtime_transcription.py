"""Transcription-only Realtime sessions (`?intent=transcription`) on Speech's StreamingRecognize.

With server_vad, appended audio streams straight to one StreamingRecognize stream whose
endpointing is the session's silence_duration_ms; Speech's speech events become
input_audio_buffer.speech_started/stopped/committed, its interim and final results
transcription deltas and completions, one conversation item per utterance. A commit or a
configuration change half-closes the stream (Speech finalizes the last utterance); clear
cancels it; the next audio opens a new one whose audio_offset keeps the session's time line.
A stream Speech ends on its own limits (idle, 300 s) is reopened the same way.

With turn_detection null, audio is buffered until commit, then recognized on a stream of its
own as one item.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from aimesh.speech.v1 import speech_pb2, speech_pb2_grpc
from google.protobuf import duration_pb2

from services.edge.realtime_events import (
    SILENCE_MS,
    EventError,
    Session,
    SessionConfig,
    audio_ms,
    new_id,
    user_item,
)

log = logging.getLogger("aimesh.edge.realtime")

CHUNK_BYTES = 32_768  # Speech's largest audio_content per message
_ENCODINGS = {"pcm16": (speech_pb2.AUDIO_ENCODING_LINEAR16, 24_000),
              "g711_ulaw": (speech_pb2.AUDIO_ENCODING_MULAW, 8_000),
              "g711_alaw": (speech_pb2.AUDIO_ENCODING_ALAW, 8_000)}
EVENT = speech_pb2.SpeechEventType


def chunks(audio: bytes) -> list[bytes]:
    return [audio[i:i + CHUNK_BYTES] for i in range(0, len(audio), CHUNK_BYTES)]


def duration(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def millis(value: duration_pb2.Duration) -> int:
    return value.seconds * 1000 + value.nanos // 1_000_000


def recognition_config(
    config: SessionConfig, offset_ms: int
) -> speech_pb2.StreamingRecognitionConfig:
    encoding, rate = _ENCODINGS[config.input_audio_format]
    silence = config.turn_detection.silence_duration_ms if config.turn_detection else SILENCE_MS[1]
    return speech_pb2.StreamingRecognitionConfig(
        config=speech_pb2.RecognitionConfig(encoding=encoding, sample_rate_hertz=rate,
                                            language_code=config.language),
        interim_results=True,
        endpointing=speech_pb2.EndpointingConfig(silence_duration=duration(silence)),
        audio_offset=duration(offset_ms))


def stream_error(exc: grpc.aio.AioRpcError, rpc: str) -> EventError | None:
    """The error event for a Speech stream's end, if the client must hear of it: not for our
    own cancel, nor for Speech's idle and length limits (the next audio opens a new stream)."""
    if exc.code() == grpc.StatusCode.CANCELLED:
        return None
    if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
        log.info("%s ended by Speech: %s", rpc, exc.details())
        return None
    kind = "invalid_request_error" if exc.code() in (
        grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION) else "server_error"
    return EventError(exc.details() or exc.code().name, exc.code().name.lower(), kind=kind)


@dataclass
class Utterance:
    """One user item: what has been said of it so far."""

    item_id: str
    start_ms: int = 0
    committed: bool = False
    sent: str = ""  # the transcript delivered in deltas
    finals: list[str] = field(default_factory=list)


class Stream:
    """One StreamingRecognize call and the task turning its replies into events."""

    def __init__(self, owner: Transcriber, offset_ms: int, manual_item: str | None) -> None:
        self.owner = owner
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.manual_item = manual_item
        self.utterances: dict[int, Utterance] = {}
        self.sent_bytes = 0
        config = recognition_config(owner.session.config, offset_ms)
        self.call = owner.stub.StreamingRecognize(self._requests(config),
                                                  metadata=owner.session.metadata)
        self.task = asyncio.create_task(self._run())

    async def _requests(self, config: speech_pb2.StreamingRecognitionConfig
                        ) -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
        yield speech_pb2.StreamingRecognizeRequest(streaming_config=config)
        while (audio := await self.queue.get()) is not None:
            yield speech_pb2.StreamingRecognizeRequest(audio_content=audio)

    def put(self, audio: bytes) -> None:
        self.sent_bytes += len(audio)
        for chunk in chunks(audio):
            self.queue.put_nowait(chunk)

    def finish(self) -> None:
        self.queue.put_nowait(None)

    async def _run(self) -> None:
        session = self.owner.session
        try:
            async for reply in self.call:
                await self._reply(reply)
        except grpc.aio.AioRpcError as exc:
            error = stream_error(exc, "StreamingRecognize")
            if error is not None:
                await session.error(error)
        finally:
            await self._flush()

    def utterance(self, index: int) -> Utterance:
        if index not in self.utterances:
            item = self.manual_item or new_id("item")
            self.utterances[index] = Utterance(item)
        return self.utterances[index]

    async def _reply(self, reply: speech_pb2.StreamingRecognizeResponse) -> None:
        if reply.speech_event_type and self.manual_item is None:
            await self._speech_event(reply)
        if reply.HasField("error"):
            u = self.utterance(reply.utterance_index)
            await self.owner.session.send(
                "conversation.item.input_audio_transcription.failed", item_id=u.item_id,
                content_index=0, error={"type": "server_error", "code": "transcription_failed",
                                        "message": reply.error.message, "param": None})
        for result in reply.results:
            if result.alternatives:
                await self._result(result, self.utterance(result.utterance_index))

    async def _speech_event(self, reply: speech_pb2.StreamingRecognizeResponse) -> None:
        session = self.owner.session
        u = self.utterance(reply.utterance_index)
        at = millis(reply.speech_event_offset)
        if reply.speech_event_type == EVENT.SPEECH_EVENT_TYPE_SPEECH_BEGIN:
            detection = session.config.turn_detection
            u.start_ms = max(0, at - (detection.prefix_padding_ms if detection else 0))
            await session.send("input_audio_buffer.speech_started", item_id=u.item_id,
                               audio_start_ms=u.start_ms)
        elif reply.speech_event_type == EVENT.SPEECH_EVENT_TYPE_SPEECH_END:
            await session.send("input_audio_buffer.speech_stopped", item_id=u.item_id,
                               audio_end_ms=at)
        elif reply.speech_event_type == EVENT.SPEECH_EVENT_TYPE_END_OF_UTTERANCE:
            await self.owner.committed(u)

    async def _result(self, result: speech_pb2.StreamingRecognitionResult, u: Utterance) -> None:
        text = result.alternatives[0].transcript.strip()
        if not result.is_final:
            # Deltas only append: an interim result that rewrites earlier words waits for the final.
            if self.manual_item is None and text.startswith(u.sent) and len(text) > len(u.sent):
                await self._delta(u, text[len(u.sent):])
            return
        u.finals.append(text)
        if self.manual_item is not None:
            return  # one item for the whole commit: completed when the stream ends
        whole = " ".join(t for t in u.finals if t)
        await self._complete(u, whole)
        del self.utterances[result.utterance_index]

    async def _delta(self, u: Utterance, delta: str) -> None:
        u.sent += delta
        await self.owner.session.send("conversation.item.input_audio_transcription.delta",
                                      item_id=u.item_id, content_index=0, delta=delta)

    async def _complete(self, u: Utterance, text: str) -> None:
        if not u.committed:
            await self.owner.committed(u)
        if text.startswith(u.sent) and len(text) > len(u.sent):
            await self._delta(u, text[len(u.sent):])
        await self.owner.session.send(
            "conversation.item.input_audio_transcription.completed", item_id=u.item_id,
            content_index=0, transcript=text,
            usage={"type": "duration", "seconds": round(self.owner.seconds_of(u), 3)})

    async def _flush(self) -> None:
        """Items Speech ended without a final result still get their completion."""
        if self.manual_item is not None:
            u = Utterance(self.manual_item)
            finals = [t for v in self.utterances.values() for t in v.finals if t]
            u.committed = True
            u.start_ms = self.owner.committed_from_ms
            await self._complete(u, " ".join(finals))
            return
        for u in list(self.utterances.values()):
            if u.committed or u.finals:
                await self._complete(u, " ".join(t for t in u.finals if t))
        self.utterances.clear()


class Transcriber:
    """The bridge of a transcription session (see the module docstring)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.stub = speech_pb2_grpc.SpeechServiceStub(session.channels.get("speech"))
        self.stream: Stream | None = None
        self.appended_bytes = 0  # all audio of the session, for its time line
        self.buffer = bytearray()  # manual mode: audio since the last commit
        self.committed_from_ms = 0
        self.last_item: str | None = None
        self.finishing: set[asyncio.Task[None]] = set()

    def now_ms(self) -> int:
        return audio_ms(self.appended_bytes, self.session.config.input_audio_format)

    def seconds_of(self, u: Utterance) -> float:
        return max(0.0, (self.now_ms() - u.start_ms) / 1000)

    async def committed(self, u: Utterance) -> None:
        u.committed = True
        previous, self.last_item = self.last_item, u.item_id
        await self.session.send("input_audio_buffer.committed", item_id=u.item_id,
                                previous_item_id=previous)
        await self.session.send("conversation.item.created", previous_item_id=previous,
                                item=user_item(u.item_id))

    async def append(self, audio: bytes) -> None:
        if self.session.config.turn_detection is None:
            self.buffer.extend(audio)
        else:
            if self.stream is None or self.stream.task.done():
                self.stream = Stream(self, self.now_ms(), None)
            self.stream.put(audio)
        self.appended_bytes += len(audio)

    async def commit(self, event_id: str | None) -> None:
        empty = EventError("the input audio buffer is empty", "input_audio_buffer_commit_empty",
                           None, event_id)
        if self.session.config.turn_detection is not None:
            if self.stream is None or not self.stream.sent_bytes:
                raise empty
            self._finish()
            return
        if len(self.buffer) < 2:
            raise empty
        item = new_id("item")
        self.committed_from_ms = self.now_ms() - audio_ms(len(self.buffer),
                                                          self.session.config.input_audio_format)
        await self.committed(Utterance(item))
        stream = Stream(self, self.committed_from_ms, item)
        stream.put(bytes(self.buffer))
        stream.finish()
        self.buffer.clear()
        self._track(stream)

    def _finish(self) -> None:
        if self.stream is not None:
            self.stream.finish()
            self._track(self.stream)
            self.stream = None

    def _track(self, stream: Stream) -> None:
        self.finishing.add(stream.task)
        stream.task.add_done_callback(self.finishing.discard)

    async def clear(self) -> None:
        self.buffer.clear()
        if self.stream is not None:
            self.stream.call.cancel()
            self.stream = None

    def check(self, config: SessionConfig, event_id: str | None) -> None:
        """Every configuration a transcription session can hold is served."""

    async def reconfigure(self) -> None:
        self._finish()

    async def handle(self, kind: str, event: dict[str, Any]) -> None:
        raise EventError(f"{kind} is not valid in a transcription session", "invalid_event_type",
                         "type", event.get("event_id"))

    def busy(self) -> bool:
        """Results still owed to the client (an utterance under way or a stream finishing)."""
        return bool(self.finishing) or bool(self.stream and self.stream.utterances)

    async def close(self) -> None:
        streams = [self.stream] if self.stream else []
        self.stream = None
        for stream in streams:
            stream.call.cancel()
        for task in list(self.finishing):
            task.cancel()
